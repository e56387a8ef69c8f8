"""Stage 1 end to end: oracle comparisons against a plain forward pass, hits, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch
import torchvision
from _workers import one_torch_thread
from PIL import Image
from torchvision.transforms.v2 import functional as F

from featurecache import RunOptions, extract, open_cache
from featurecache.cache import _format as fmt
from featurecache.exceptions import (
    ConfigMismatchError,
    DatasetChangedError,
    InvalidArgumentError,
    UnknownNameError,
)

SIZE = 32
RESIZE = round(SIZE * 256 / 224)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RESNET_LAYERS = ["layer1", "layer2", "layer3", "layer4", "embedding"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two classes of 6 random RGB images of different sizes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee"):
        (root / cls).mkdir()
        for i in range(6):
            h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.png"
            )
    return root


def _weights_file(tmp_path_factory, name):
    path = tmp_path_factory.mktemp("weights") / f"{name}.pth"
    torch.manual_seed(1)
    model = getattr(torchvision.models, name)(weights=None)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    return _weights_file(tmp_path_factory, "resnet18")


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    return _weights_file(tmp_path_factory, "mobilenet_v3_small")


def _oracle(name, weights_file, paths, layers, pooling):
    """A plain torchvision forward pass with the documented preprocessing."""
    model = getattr(torchvision.models, name)(weights=None)
    model.load_state_dict(torch.load(weights_file))
    # The final Linear is replaced: `embedding` is exactly what the ImageNet classifier reads.
    if name == "resnet18":
        model.fc = torch.nn.Identity()
    else:
        model.classifier[3] = torch.nn.Identity()
    model.eval()
    outputs = {}
    hooks = [
        model.get_submodule(layer).register_forward_hook(
            lambda m, i, o, layer=layer: outputs.__setitem__(layer, o.clone())
        )
        for layer in layers
        if layer != "embedding"
    ]
    batch = []
    for path in paths:
        x = F.pil_to_tensor(Image.open(path).convert("RGB"))
        x = F.resize(x, [RESIZE], antialias=True)
        x = F.center_crop(x, [SIZE, SIZE])
        batch.append(F.normalize(x.float() / 255, MEAN, STD))
    with torch.no_grad():
        outputs["embedding"] = model(torch.stack(batch))
    for hook in hooks:
        hook.remove()

    def pool(t):
        if t.ndim == 2:
            return t
        return {
            "avg": lambda: t.mean((2, 3)),
            "max": lambda: t.amax((2, 3)),
            "avgmax": lambda: torch.cat([t.mean((2, 3)), t.amax((2, 3))], 1),
            "flatten": lambda: t.flatten(1),
        }[pooling]()

    return {layer: pool(outputs[layer]).numpy() for layer in layers}


def _assert_close(actual, expected, layer):
    assert actual.shape == expected.shape, layer
    scale = float(np.abs(expected).max())
    assert scale > 0, layer
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=layer)


def _read(cache, model, layer):
    with h5py.File(cache, "r") as f:
        return (
            f[fmt.features_path(model, layer)][:],
            f[fmt.status_path(model, layer)][:],
            f[fmt.sample_path("ids")].asstr()[:],
        )


def test_resnet18_every_layer_equals_a_plain_forward(images, resnet_file, tmp_path):
    cache = tmp_path / "c.h5"
    result = extract(
        images, cache, model="resnet18", weights=str(resnet_file), layers=RESNET_LAYERS,
        image_size=SIZE, dtype="float32", decode="exact",
        options=RunOptions(batch_size=5, shard_size=4, workers=0),
    )  # fmt: skip
    assert result.n_ok == 12 and result.n_failed == 0 and result.shards_written == 3
    ids = _read(cache, "resnet18", "layer1")[2]
    expected = _oracle("resnet18", resnet_file, [images / i for i in ids], RESNET_LAYERS, "avg")
    for layer in RESNET_LAYERS:
        X, status, _ = _read(cache, "resnet18", layer)
        assert (status == 1).all()
        _assert_close(X, expected[layer], layer)
    with h5py.File(cache, "r") as f:
        attrs = f[fmt.features_path("resnet18", "layer3")].attrs
        assert (
            attrs["backbone"] == "resnet18"
            and attrs["pooling"] == "avg"
            and attrs["layer"] == "layer3"
        )
        assert attrs["weights"] == f"file:{resnet_file}" and len(attrs["weights_sha256"]) == 64
        assert attrs["depth"] < f[fmt.features_path("resnet18", "embedding")].attrs["depth"] == 1.0


def test_exact_decoding_of_jpegs_equals_a_plain_forward(tmp_path, resnet_file):
    """Large and small JPEGs, 4:2:0 and progressive: the decoder used never shows."""
    rng = np.random.default_rng(3)
    for cls, options in (("ant", {}), ("bee", {"progressive": True})):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i, side in enumerate((48, 300, 700)):
            pixels = rng.integers(0, 256, (side, side + 20 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / cls / f"{i}.jpg", **options)
    cache = tmp_path / "c.h5"
    extract(
        tmp_path / "data", cache, model="resnet18", weights=str(resnet_file), layers=["layer2"],
        image_size=SIZE, dtype="float32", decode="exact", split="none",
        options=RunOptions(batch_size=4, workers=0),
    )  # fmt: skip
    X, _, ids = _read(cache, "resnet18", "layer2")
    expected = _oracle(
        "resnet18", resnet_file, [tmp_path / "data" / i for i in ids], ["layer2"], "avg"
    )
    _assert_close(X, expected["layer2"], "layer2")


@pytest.mark.parametrize("pooling", ["max", "avgmax", "flatten"])
def test_mobilenet_pooling_variants_equal_a_plain_forward(
    images, mobilenet_file, tmp_path, pooling
):
    layers = ["features.3", "features.8", "embedding"]
    cache = tmp_path / "c.h5"
    extract(
        images, cache, model="mobilenet_v3_small", weights=str(mobilenet_file), layers=layers,
        image_size=SIZE, pool=pooling, dtype="float32", decode="exact",
        options=RunOptions(batch_size=8, workers=0),
    )  # fmt: skip
    ids = _read(cache, "mobilenet_v3_small", "embedding")[2]
    expected = _oracle(
        "mobilenet_v3_small", mobilenet_file, [images / i for i in ids], layers, pooling
    )
    for layer in layers:
        X = _read(cache, "mobilenet_v3_small", layer)[0]
        _assert_close(X, expected[layer], layer)


def _small(images, cache, *, run: dict | None = None, **kw):
    """A small extraction; ``run`` changes the execution settings (:class:`RunOptions`)."""
    features = dict(model="resnet18", weights="none", image_size=SIZE, dtype="float32")
    options = RunOptions(**{"workers": 0, "shard_size": 4, **(run or {})})
    return extract(images, cache, **{**features, **kw}, options=options)


def test_a_run_packs_its_shards_into_segments_only_under_the_writer_lock(images, tmp_path):
    # Without locks another writer of the model may be reading the shard files packing
    # deletes: they stay as they are, and read the same.
    kinds = {}
    for locking in (True, False):
        cache = tmp_path / f"locking-{locking}" / "c.h5"
        cache.parent.mkdir()
        _small(images, cache, layers=["layer1"], run={"locking": locking})
        files = {p.name.split("-")[0] for p in cache.with_name("c.h5.d").rglob("*-*.h5")}
        kinds[locking] = (files, _read(cache, "resnet18", "layer1")[0])
    assert kinds[True][0] == {"segment"} and kinds[False][0] == {"shard"}
    np.testing.assert_array_equal(kinds[True][1], kinds[False][1])


def test_rerun_is_a_hit_without_forward_and_rewrites_nothing(images, tmp_path, forward_calls):
    cache = tmp_path / "c.h5"
    _small(images, cache, layers=["layer1", "embedding"])
    assert forward_calls
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    forward_calls.clear()
    result = _small(images, cache, layers=["embedding", "layer1"], run={"batch_size": 3})
    assert result.hit and not forward_calls and result.computed == ()
    after = {
        p: p.stat().st_mtime_ns
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    }
    assert after == {p: t for p, t in before.items() if not p.name.endswith(".lock")}


def test_new_layer_computes_only_that_layer(images, tmp_path):
    cache = tmp_path / "c.h5"
    _small(images, cache, layers=["layer1"])
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "c.h5.d").rglob("shard-*.h5")}
    result = _small(images, cache, layers=["layer1", "layer2"])
    assert result.computed == ("layer2",)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    with h5py.File(cache, "r") as f:
        assert sorted(f[fmt.features_path("resnet18")].keys()) == ["layer1", "layer2"]
        assert (f[fmt.status_path("resnet18", "layer2")][:] == 1).all()


def test_config_mismatch_fails_and_writes_nothing(images, tmp_path):
    cache = tmp_path / "c.h5"
    _small(images, cache, layers=["layer1"])
    listing = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigMismatchError, match=r"pooling: cached avg, requested max"):
        _small(images, cache, layers=["layer1"], pool="max")
    with pytest.raises(ConfigMismatchError, match=r"weights_sha256: cached"):
        _small(images, cache, layers=["layer1"], seed=3)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == listing
    _small(
        images, cache, layers=["layer1"], pool="max", name="resnet18-max"
    )  # under another name it is fine


def test_resize_mode_is_part_of_the_key_and_squash_equals_a_plain_forward(images, tmp_path):
    from featurecache.models import load_backbone

    cache = tmp_path / "c.h5"
    _small(images, cache, layers=["embedding"])
    crop = open_cache(cache).entry("resnet18", "embedding").provenance
    assert "resize" not in json.loads(crop["preprocessing"])  # older caches keep their key
    with pytest.raises(
        ConfigMismatchError, match=r"preprocessing.resize: cached \(unset\), requested squash"
    ):
        _small(images, cache, layers=["embedding"], resize="squash")
    _small(images, cache, layers=["embedding"], resize="squash", name="squashed")
    squashed = open_cache(cache)
    assert (
        json.loads(squashed.entry("squashed", "embedding").provenance["preprocessing"])["resize"]
        == "squash"
    )
    X, status, ids = _read(cache, "squashed", "embedding")
    model = load_backbone("resnet18", "none", image_size=SIZE).module
    batch = []
    for sample in ids:
        x = F.pil_to_tensor(Image.open(images / sample).convert("RGB"))
        batch.append(
            F.normalize(F.resize(x, [SIZE, SIZE], antialias=True).float() / 255, MEAN, STD)
        )
    with torch.no_grad():
        expected = model(torch.stack(batch)).numpy()
    _assert_close(X, expected, "embedding")
    with pytest.raises(
        InvalidArgumentError, match=r"^The 'resize' parameter of extract must be one of 'crop'"
    ):
        _small(images, cache, layers=["embedding"], resize="stretch")


def test_changed_dataset_is_refused(images, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(images, data)
    cache = tmp_path / "c.h5"
    _small(data, cache, layers=["layer1"])
    (data / "ant" / "0.png").unlink()
    shutil.copy(images / "ant" / "0.png", data / "bee" / "new.png")
    shutil.copy(images / "ant" / "1.png", data / "bee" / "new2.png")
    with pytest.raises(
        DatasetChangedError,
        # ant/0.png's content is found again as bee/new.png: a move, matched by content
        match=r"has 1 moved, 1 new samples compared with the cache .*, and the sample table "
        r"is frozen",
    ):
        _small(data, cache, layers=["layer1"], frozen_samples=True)


def test_unknown_model_and_layer_suggest_close_names(images, tmp_path):
    with pytest.raises(UnknownNameError, match=r"resnet18"):
        _small(images, tmp_path / "c.h5", model="resnet81")
    with pytest.raises(UnknownNameError, match=r"Unknown layer 'layer5'.*Did you mean .*'layer\d'"):
        _small(images, tmp_path / "c.h5", layers=["layer5"])
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.d").exists()


def test_bad_settings_are_one_line_errors(images, tmp_path):
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The 'batch_size' parameter of RunOptions must be an int >= 1. Got 0 instead.$",
    ):
        _small(images, tmp_path / "c.h5", run={"batch_size": 0})
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The 'batch_size' parameter of RunOptions must be an int >= 1. Got True instead.$",
    ):
        extract(images, tmp_path / "c.h5", options=RunOptions(batch_size=True))
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The 'options' parameter of extract must be None or a RunOptions. Got \{'batch",
    ):
        extract(images, tmp_path / "c.h5", options={"batch_size": 8})
    with pytest.raises(
        InvalidArgumentError,
        match=r"The 'pool' parameter of extract must be one of avg, avgmax, flatten, max",
    ):
        _small(images, tmp_path / "c.h5", pool="cls", layers=["layer1"])
    with pytest.raises(InvalidArgumentError, match=r"not a directory"):
        _small(images, tmp_path)


def test_corrupt_image_is_a_failed_row_with_its_reason(images, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(images, data)
    (data / "bee" / "broken.png").write_text("not an image")
    (data / "ant" / "empty.jpg").write_bytes(b"")
    cache = tmp_path / "c.h5"
    result = _small(data, cache, layers=["layer4", "embedding"])
    assert (result.n_ok, result.n_failed) == (12, 2)
    with h5py.File(cache, "r") as f:
        ids = f[fmt.sample_path("ids")].asstr()[:]
        status = f[fmt.status_path("resnet18", "embedding")][:]
        failed = dict(
            zip(
                ids[f[fmt.failures_path("resnet18", "row")][:]],
                f[fmt.failures_path("resnet18", "reason")].asstr()[:],
                strict=True,
            )
        )
        X = f[fmt.features_path("resnet18", "embedding")][:]
    assert set(failed) == {"bee/broken.png", "ant/empty.jpg"}
    assert (
        "cannot identify image" in failed["bee/broken.png"] and "empty" in failed["ant/empty.jpg"]
    )
    assert np.isnan(X[status == 2]).all() and np.isfinite(X[status == 1]).all()


KILLABLE = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)  # the same kernels as the reference, computed single-threaded
    from featurecache import RunOptions, extract
    from featurecache.engines._runner import ShardRunner
    original = ShardRunner._forward
    def slow(self, *a, **k):
        time.sleep(0.15)
        return original(self, *a, **k)
    ShardRunner._forward = slow
    extract(sys.argv[1], sys.argv[2], model="resnet18", weights="none", layers=["layer2", "embedding"],
            image_size=32, dtype="float32", options=RunOptions(workers=0, shard_size=2, batch_size=1))
    """
)


RUN_2_1 = {"shard_size": 2, "batch_size": 1}  # the child's settings


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(images, tmp_path):
    reference = tmp_path / "ref.h5"
    with one_torch_thread():  # bit-for-bit equality needs the kernels the child runs
        _small(images, reference, layers=["layer2", "embedding"], run=RUN_2_1)
    cache = tmp_path / "killed.h5"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, str(images), str(cache)])
    deadline = time.monotonic() + 60
    while (
        len(list((tmp_path / "killed.h5.d").rglob("shard-*.h5"))) < 2
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # The cache opens through its folder, and committed rows equal the reference.
    partial, _, ids = open_cache(cache).load("resnet18", "embedding")
    assert 0 < len(ids) < 12
    expected, _, expected_ids = _read(reference, "resnet18", "embedding")
    np.testing.assert_array_equal(partial, expected[np.isin(expected_ids, ids)])
    with one_torch_thread():
        result = _small(images, cache, layers=["layer2", "embedding"], run=RUN_2_1)
    assert 0 < result.shards_written < 6
    for layer in ("layer2", "embedding"):
        np.testing.assert_array_equal(
            _read(cache, "resnet18", layer)[0], _read(reference, "resnet18", layer)[0]
        )
    assert not [p for p in tmp_path.rglob("*.tmp-*")]
