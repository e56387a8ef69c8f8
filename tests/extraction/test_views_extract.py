"""Extract and augment (issue 14): views at extraction, bit for bit and seeded per view."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time

import h5py
import numpy as np
import pytest
import torch
from _workers import make_images, one_torch_thread, run_options
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from featurecache import extract, open_cache
from featurecache.app.cli import main
from featurecache.cache import ViewSets
from featurecache.cache import _format as fmt
from featurecache.core._validation import ParameterError
from featurecache.core._views import parse_augment, parse_tta
from featurecache.data._datasets import load_dataset
from featurecache.engines._runner import data_loader
from featurecache.exceptions import ConfigMismatchError
from featurecache.models._augment import ViewMaker, view_seed
from featurecache.models._preprocess import load_image
from featurecache.models._registry import load_backbone

ARGS = dict(model="resnet18", weights="none", image_size=32, dtype="float32")
LAYERS = ["layer2", "embedding"]
AUGMENT = "jitter:0.3,flip,rrc:0.4-1"
VIEWS = dict(views=3, augment=AUGMENT, tta="flip,crops:0.75")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two classes of random PNGs in train/ (5 each, one broken file) and test/ (2 each)."""
    root = tmp_path_factory.mktemp("data")
    make_images(root / "train", n_per_class=5)
    make_images(root / "test", n_per_class=2, seed=1)
    (root / "train" / "bee" / "broken.png").write_bytes(b"not an image")
    return root


def _extract(data, cache, run=None, **changes):
    with one_torch_thread():
        return extract(
            data, cache, **{**ARGS, "layers": LAYERS, **changes},
            options=run_options(**{"shard_size": 4, "batch_size": 3, **(run or {})}),
        )  # fmt: skip


@pytest.fixture(scope="module")
def caches(data, tmp_path_factory):
    """A plain cache and a views cache of the same model, data and settings."""
    folder = tmp_path_factory.mktemp("caches")
    _extract(data, folder / "plain.h5")
    _extract(data, folder / "views.h5", **VIEWS)
    return folder / "plain.h5", folder / "views.h5"


def _views(cache, layer, kind="augment"):
    return open_cache(cache).load_views("resnet18", layer, kind)


def test_view_0_equals_a_plain_extraction_bit_for_bit(caches):
    plain, views = (open_cache(path) for path in caches)
    assert views.views("resnet18") == ViewSets(
        k=3, augment="rrc:0.4-1,flip,jitter:0.3", tta_k=12, tta="crops:0.75,flip", seed=0
    )
    assert plain.views("resnet18") is None
    for layer in LAYERS:
        P, rows = plain.load_rows("resnet18", layer)
        got, got_rows = views.load_rows("resnet18", layer)  # the plain view of a views cache
        assert got.tobytes() == P.tobytes() and got_rows.tolist() == rows.tolist()
        by_row = dict(zip(rows.tolist(), P, strict=True))
        for kind, n_views in (("augment", 3), ("tta", 12)):
            X, view_rows = views.load_views("resnet18", layer, kind)
            assert X.shape[1] == n_views
            assert X[:, 0].tobytes() == np.stack([by_row[r] for r in view_rows.tolist()]).tobytes()
            for v in range(1, n_views):  # the other views are other numbers
                assert not np.allclose(X[:, v], X[:, 0])


def test_train_rows_get_views_test_rows_only_tta_and_failures_are_per_view(caches):
    cache = open_cache(caches[1])
    broken = int(np.flatnonzero([i.endswith("broken.png") for i in cache.ids])[0])
    train = np.flatnonzero(cache.splits == "train")
    _, rows = cache.load_views("resnet18", "embedding")
    assert rows.tolist() == [r for r in train.tolist() if r != broken]
    _, tta_rows = cache.load_views("resnet18", "embedding", kind="tta")
    assert tta_rows.tolist() == [r for r in range(cache.n_samples) if r != broken]
    with h5py.File(caches[1], "r") as f:  # the index, as plain h5py reads it
        status = f[fmt.view_status_path("augment", "resnet18", "embedding")][:]
        tta = f[fmt.view_status_path("tta", "resnet18", "embedding")][:]
    assert (status[broken] == fmt.STATUS_FAILED).all() and (tta[broken] == fmt.STATUS_FAILED).all()
    assert (status[cache.splits == "test"] == fmt.STATUS_PENDING).all()


def test_a_view_that_cannot_be_made_fails_alone(data, caches, tmp_path, monkeypatch):
    make = ViewMaker.make
    victim = "train/ant/01.png"

    def failing(self, image, sample_id, kind, view):
        if sample_id == victim and kind == "augment" and view == 2:
            raise RuntimeError("no view")
        return make(self, image, sample_id, kind, view)

    monkeypatch.setattr(ViewMaker, "make", failing)
    _extract(data, tmp_path / "c.h5", **VIEWS)
    cache = open_cache(tmp_path / "c.h5")
    row = int(np.flatnonzero(cache.ids == victim)[0])
    with h5py.File(tmp_path / "c.h5", "r") as f:
        status = f[fmt.view_status_path("augment", "resnet18", "embedding")][row]
    assert status.tolist() == [fmt.STATUS_OK, fmt.STATUS_OK, fmt.STATUS_FAILED]
    want, want_rows = _views(caches[1], "embedding")
    got, got_rows = _views(tmp_path / "c.h5", "embedding")
    assert got_rows.tolist() == [r for r in want_rows.tolist() if r != row]
    assert got.tobytes() == want[want_rows != row].tobytes()
    assert _views(tmp_path / "c.h5", "embedding", "tta")[1].tolist() == (
        _views(caches[1], "embedding", "tta")[1].tolist()
    )  # its test-time views and its plain view stand


def test_views_are_the_same_for_any_batch_size_and_loader_workers(data, caches, tmp_path):
    _extract(data, tmp_path / "c.h5", run={"batch_size": 7, "shard_size": 8, "workers": 2},
             **VIEWS)  # fmt: skip
    for layer in LAYERS:
        for kind in ("augment", "tta"):
            want, want_rows = _views(caches[1], layer, kind)
            got, got_rows = _views(tmp_path / "c.h5", layer, kind)
            assert got_rows.tolist() == want_rows.tolist()
            # The same pixels; another batch size only reorders the kernels' float sums.
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The same batches, made by two loader processes: bit for bit.
    _extract(data, tmp_path / "d.h5", run={"workers": 2}, **VIEWS)
    for layer in LAYERS:
        got, want = _views(tmp_path / "d.h5", layer), _views(caches[1], layer)
        assert got[0].tobytes() == want[0].tobytes()


def _oracle_augment(image, sample_id, view, seed=0):
    """The named torchvision v2 transforms, seeded by the documented derivation."""
    height, width = F.get_size(image)
    torch.manual_seed(view_seed(sample_id, view, seed))
    return v2.Compose([
        v2.RandomResizedCrop((height, width), scale=(0.4, 1.0), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
    ])(image)  # fmt: skip


def _oracle_tta(image):
    height, width = F.get_size(image)
    size = [round(0.75 * height), round(0.75 * width)]
    crops = [F.resize(c, [height, width], antialias=True) for c in F.five_crop(image, size)]
    return [x for base in [image, *crops] for x in (base, F.horizontal_flip(base))]


def test_a_views_pixels_are_the_named_torchvision_transforms_with_the_documented_seed(data, caches):
    dataset = load_dataset(data)
    backbone = load_backbone("resnet18", "none", image_size=32)
    maker = ViewMaker(open_cache(caches[1]).views("resnet18"), "bilinear")
    rows = [r for r, i in enumerate(dataset.ids) if i.startswith("train/") and "broken" not in i]
    loader = data_loader(dataset, backbone.preprocess, "exact", [rows[:4]], 0, views=maker)
    batch_rows, _, ok, _, _, _, (x, slots, failed) = next(iter(loader))
    assert ok.all() and not len(failed)
    expected = {}
    for row in batch_rows.tolist():
        image = load_image(data / dataset.ids[row])
        for view in (1, 2):
            pixels = _oracle_augment(image, str(dataset.ids[row]), view)
            expected[row, 0, view] = backbone.preprocess(pixels)
        for view, pixels in enumerate(_oracle_tta(image)[1:], start=1):
            expected[row, 1, view] = backbone.preprocess(pixels)
    made = {(int(batch_rows[i]), int(k), int(v)): x[n] for n, (i, k, v) in enumerate(slots)}
    assert made.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(made[key], tensor), key
    # ...and the cached features of one view are the backbone's on those pixels.
    row = batch_rows[0]
    X, view_rows = _views(caches[1], "embedding")
    module = backbone.module.eval()
    with torch.inference_mode():
        want = module(torch.stack([expected[int(row), 0, v] for v in (1, 2)])).numpy()
    np.testing.assert_allclose(X[view_rows.tolist().index(row), 1:], want, rtol=1e-4, atol=1e-5)


def test_sigkill_then_resume_gives_the_same_views(data, caches, tmp_path):
    from _workers import outcome, run_extract, start

    cache = tmp_path / "c.h5"
    arguments = dict(layers=LAYERS, options=run_options(shard_size=4, batch_size=3), **VIEWS)
    rng = np.random.default_rng(7)
    interrupted = []
    for kill in range(3):
        events = tmp_path / f"events-{kill}"
        events.mkdir()
        result = events / "result.json"
        child = start(run_extract, data, cache, arguments, result, pause=0.05, events=events)
        deadline = time.monotonic() + 60
        while (
            not (events / "forward").exists() and child.is_alive() and time.monotonic() < deadline
        ):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.05, 0.6))
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.join()
        interrupted.append(outcome(result) is None)
        if not interrupted[-1]:
            break
    assert interrupted[0]  # at least 16 forward passes of 0.05 s: the first kill lands mid-run
    child = start(run_extract, data, cache, arguments)
    child.join()
    assert child.exitcode == 0
    for layer in LAYERS:
        for kind in ("augment", "tta"):
            got, want = _views(cache, layer, kind), _views(caches[1], layer, kind)
            assert got[1].tolist() == want[1].tolist() and got[0].tobytes() == want[0].tobytes()


def test_another_augment_or_k_under_the_same_name_is_refused_naming_the_difference(
    data, caches, forward_calls
):
    path = caches[1]
    start = f"model 'resnet18' in {str(path)!r} was extracted with another configuration ("
    end = (
        "); pass another model name (name=, or --name) to store this one beside it, or use a "
        "new cache."
    )
    cases = {
        "views.augment: cached rrc:0.4-1,flip,jitter:0.3, requested flip": dict(
            VIEWS, augment="flip"
        ),
        "views.k: cached 3, requested 4": dict(VIEWS, views=4),
        "views.tta: cached crops:0.75,flip, requested flip; views.tta_k: cached 12, requested 2": (
            dict(VIEWS, tta="flip")
        ),
    }
    for difference, changes in cases.items():
        with pytest.raises(ConfigMismatchError, match=f"^{re.escape(start + difference + end)}$"):
            _extract(data, path, **changes)
    with pytest.raises(
        ConfigMismatchError, match=re.escape("views.k: cached 3, requested (unset)")
    ):
        _extract(data, path)  # a plain extraction under the views model's name
    assert not forward_calls
    hit = _extract(data, path, run={"batch_size": 5}, views=3, augment="rrc:0.4-1.0,jitter:.3,flip",
                   tta="crops:0.75,flip")  # fmt: skip
    assert hit.hit and not forward_calls  # another spelling of the same spec is the same key


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("flip", "flip"),
        ("flip:0.5", "flip"),
        ("rrc", "rrc:0.08-1"),
        ("jitter:0.2, flip ,rrc:0.35-1.0", "rrc:0.35-1,flip,jitter:0.2"),
        ("flip:1", "flip:1"),
    ],
)
def test_augment_specs_are_canonical(spec, canonical):
    assert parse_augment(spec).canonical == canonical


def test_tta_specs_count_their_views():
    assert (parse_tta("flip").n_views, parse_tta("flip").canonical) == (2, "flip")
    assert parse_tta("crops:0.875").n_views == 6
    assert parse_tta("flip,crops:0.875").canonical == "crops:0.875,flip"
    assert parse_tta("flip,crops:0.875").n_views == 12


GRAMMAR = (
    "a comma-separated list of rrc[:LO-HI], flip[:P], jitter:S (e.g. "
    "'flip,rrc:0.35-1,jitter:0.2'; see docs/views.md)"
)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(views=3, augment="flop"), f"The 'augment' parameter of extract must be {GRAMMAR}. "
         "Got 'flop' instead. Unknown item 'flop'; the items are rrc, flip, jitter. Did you mean "
         "'flip'?"),
        (dict(views=3, augment="rrc:0.5"), f"The 'augment' parameter of extract must be {GRAMMAR}."
         " Got 'rrc:0.5' instead. rrc takes a scale range LO-HI, e.g. rrc:0.35-1; got '0.5'."),
        (dict(views=3, augment="flip,flip"), f"The 'augment' parameter of extract must be "
         f"{GRAMMAR}. Got 'flip,flip' instead. flip is named twice."),
        (dict(views=3, augment="jitter:2"), f"The 'augment' parameter of extract must be {GRAMMAR}."
         " Got 'jitter:2' instead. jitter takes a number from 0 to 1; got '2'."),
        (dict(views=3), "The 'augment' parameter of extract must be a spec when views is given. "
         "Got None instead. Pass e.g. augment='flip,rrc:0.35-1' (see docs/views.md)."),
        (dict(augment="flip"), "The 'views' parameter of extract must be an int from 2 to 64 when "
         "augment is given. Got 0 instead. Pass views=K, the number of views per training row "
         "(view 0 included)."),
        (dict(views=1, augment="flip"), "The 'views' parameter of extract must be 0 or an int "
         "from 2 to 64. Got 1 instead. View 0 is the plain view: views=1 adds nothing; pass "
         "views=2 or more with augment."),
        (dict(views=True, augment="flip"), "The 'views' parameter of extract must be an int in "
         "the range [0, 64]. Got True instead."),
        (dict(tta="crops"), "The 'tta' parameter of extract must be a comma-separated list of "
         "crops:F, flip (e.g. 'crops:0.875,flip'; see docs/views.md). Got 'crops' instead. crops "
         "needs its size F, e.g. crops:0.875."),
    ],
)  # fmt: skip
def test_bad_view_arguments_are_refused_before_any_work(data, tmp_path, changes, message):
    with pytest.raises(ParameterError, match=f"^{re.escape(message)}$"):
        _extract(data, tmp_path / "c.h5", **changes)
    assert not (tmp_path / "c.h5").exists()


def test_the_command_line_extracts_views_and_names_its_flags(data, tmp_path, capsys):
    cache = tmp_path / "c.h5"
    argv = ["extract", str(data), "--cache", str(cache), "--model", "resnet18", "--weights",
            "none", "--image-size", "32", "--dtype", "float32", "--layers", "embedding",
            "--workers", "0", "--no-progress"]  # fmt: skip
    assert main([*argv, "--views", "3", "--augment", "flop"]) == 2
    err = capsys.readouterr().err
    assert f"--augment must be {GRAMMAR}. Got 'flop' instead. Unknown item 'flop'" in err
    assert main([*argv, "--augment", "flip"]) == 2
    assert "Pass --views K, the number of views per training row" in capsys.readouterr().err
    assert main([*argv, "--views", "2", "--augment", "flip", "--tta", "flip"]) == 0
    out = capsys.readouterr().out
    assert "views: 2 per train and val row (flip); test-time views: 2 per row (flip)\n" in out
    assert open_cache(cache).views("resnet18") == ViewSets(2, "flip", 2, "flip", 0)
    assert main(["ls", str(cache)]) == 0
    assert "\n  views: 2 per train and val row (flip); test-time views: 2 per row (flip)\n" in (
        capsys.readouterr().out
    )
    assert main(["ls", str(cache), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["views"]
    assert listed == {"resnet18": {"k": 2, "augment": "flip", "tta_k": 2, "tta": "flip", "seed": 0}}
    X, _ = open_cache(cache).load_views("resnet18", "embedding")
    assert X.shape[1:] == (2, 512)
