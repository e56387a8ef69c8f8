"""Webdataset tar shards as DATA: the same features per key as the same images in a folder.

Shards are written with the ``webdataset`` package's own ``TarWriter``. A shard added
later computes only its rows, and a run killed with SIGKILL resumes exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from _shards import key_of, write_shards
from _workers import make_images, one_torch_thread, outcome, run_extract, run_options, start

from featurecache import extract, load_dataset, open_cache
from featurecache.app.cli import main
from featurecache.data import WebDataset, content_digest
from featurecache.engines._runner import ShardRunner
from featurecache.exceptions import InvalidArgumentError

ARGS = dict(model="resnet18", weights="none", layers=["layer2", "embedding"], image_size=32,
            dtype="float32")  # fmt: skip
LAYERS = ARGS["layers"]
SPLITS = {"train": "train-*.tar", "test": "test-*.tar"}


@pytest.fixture
def rows_computed(monkeypatch) -> list:
    """The rows each forward pass computes."""
    seen = []
    original = ShardRunner._forward

    def forward(self, module, images, rows, *args, **kwargs):
        seen.extend(np.asarray(rows).tolist())
        return original(self, module, images, rows, *args, **kwargs)

    monkeypatch.setattr(ShardRunner, "_forward", forward)
    return seen


def folder(root: Path, n_train: int = 6, n_test: int = 2) -> Path:
    make_images(root / "train", n_per_class=n_train)
    make_images(root / "test", n_per_class=n_test, seed=1)
    return root


def _extract(data, cache, decode="exact", **options):
    with one_torch_thread():
        return extract(
            data, cache, **ARGS, decode=decode, options=run_options(shard_size=4, **options)
        )


def _by_key(cache, layer, to_key=lambda i: i):
    reader = open_cache(cache)
    X, y, ids = reader.load("resnet18", layer)
    splits = dict(zip(reader.ids.tolist(), reader.splits.tolist(), strict=True))
    return {
        to_key(i): (x.tobytes(), reader.class_names[label], splits[i])
        for x, label, i in zip(X, y, ids.tolist(), strict=True)
    }


def test_shards_give_the_folders_features_labels_and_splits_per_key(tmp_path):
    data = folder(tmp_path / "data")
    write_shards(data, tmp_path / "shards")
    source = WebDataset(str(tmp_path / "shards" / "*.tar"), classes=("ant", "bee"),
                        split_from={s: str(tmp_path / "shards" / p) for s, p in SPLITS.items()})  # fmt: skip
    _extract(data, tmp_path / "folder.h5")
    _extract(source, tmp_path / "tar.h5")
    _extract(source, tmp_path / "tar-workers.h5", workers=2)
    for layer in LAYERS:
        want = _by_key(tmp_path / "folder.h5", layer, key_of)
        assert len(want) == 16
        assert _by_key(tmp_path / "tar.h5", layer) == want
        assert _by_key(tmp_path / "tar-workers.h5", layer) == want


def test_text_labels_and_splits_from_a_json_field_through_the_command_line(tmp_path, capsys):
    data = folder(tmp_path / "data", n_train=3, n_test=1)
    write_shards(data, tmp_path / "shards", label="json")
    _extract(data, tmp_path / "folder.h5")
    common = ["--model", "resnet18", "--weights", "none", "--layers", "embedding",
              "--image-size", "32", "--dtype", "float32", "--workers", "0", "--device", "cpu"]  # fmt: skip
    pattern = str(tmp_path / "shards" / "{train-{0..1},test-0}.tar")
    code = main(["extract", pattern, "--cache", str(tmp_path / "tar.h5"),
                 "--label-field", "json:label", "--split-from", "json:split", *common])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "data: 2 classes, 8 images (train 6, test 2); skipped: nothing" in out
    assert _by_key(tmp_path / "tar.h5", "embedding") == _by_key(
        tmp_path / "folder.h5", "embedding", key_of
    )


def test_the_digest_of_each_sample_is_that_of_its_image_bytes(tmp_path):
    data = folder(tmp_path / "data", n_train=2, n_test=1)
    write_shards(data, tmp_path / "shards")
    dataset = load_dataset(str(tmp_path / "shards" / "*.tar"))
    by_key = {key_of(i): Path(p).read_bytes() for i, p in zip(
        load_dataset(data).ids, load_dataset(data).paths, strict=True)}  # fmt: skip
    assert [content_digest(by_key[i]) for i in dataset.ids] == list(dataset.members.digests)
    assert all(len(d) == 16 for d in dataset.members.digests)


def test_a_fourth_shard_added_later_computes_only_its_rows(tmp_path, rows_computed):
    data = tmp_path / "data"
    make_images(data / "train", n_per_class=8)
    shards = write_shards(data, tmp_path / "shards", per_shard=4)
    assert len(shards) == 4
    held_back = shards[-1].rename(tmp_path / "later.tar")
    pattern = str(tmp_path / "shards" / "*.tar")
    _extract(pattern, tmp_path / "c.h5")
    assert len(rows_computed) == 12
    before = {p: p.read_bytes() for p in (tmp_path / "c.h5.d").rglob("shard-*") if p.is_file()}
    rows_computed.clear()
    shutil.move(held_back, shards[-1])
    grown = _extract(pattern, tmp_path / "c.h5")
    assert sorted(rows_computed) == list(range(12, 16)) and grown.rows_computed == 4
    assert all(p.read_bytes() == b for p, b in before.items())  # old shards untouched
    rows_computed.clear()
    _extract(pattern, tmp_path / "whole.h5")
    for layer in LAYERS:
        assert _by_key(tmp_path / "c.h5", layer) == _by_key(tmp_path / "whole.h5", layer)


@pytest.mark.slow
def test_sigkill_during_a_tar_shard_run_then_resume_is_exact(tmp_path):
    make_images(tmp_path / "data" / "train", n_per_class=8)
    write_shards(tmp_path / "data", tmp_path / "shards", per_shard=4)
    source = WebDataset(str(tmp_path / "shards" / "train-{0..3}.tar"))
    options = dict(layers=LAYERS, options=run_options(shard_size=2, batch_size=1))
    caches = {name: tmp_path / name / "c.h5" for name in ("reference", "killed")}
    for cache in caches.values():
        cache.parent.mkdir()
    child = start(run_extract, source, caches["reference"], options)
    child.join()
    assert child.exitcode == 0
    rng = np.random.default_rng(7)
    for kill in range(4):
        events = tmp_path / f"events-{kill}"
        events.mkdir()
        result = events / "result.json"
        child = start(run_extract, source, caches["killed"], options, result, pause=0.05,
                      events=events)  # fmt: skip
        deadline = time.monotonic() + 60
        while (
            not (events / "forward").exists() and child.is_alive() and time.monotonic() < deadline
        ):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.4))
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.join()
        if outcome(result) is not None:
            break  # it finished before this kill
    child = start(run_extract, source, caches["killed"], options)
    child.join()
    assert child.exitcode == 0
    reference, killed = open_cache(caches["reference"]), open_cache(caches["killed"])
    assert killed.ids.tolist() == reference.ids.tolist()
    for layer in LAYERS:
        got, want = killed.load("resnet18", layer), reference.load("resnet18", layer)
        assert got[2].tolist() == want[2].tolist() and got[0].tobytes() == want[0].tobytes()


def test_a_key_in_two_shards_is_refused_naming_both(tmp_path):
    make_images(tmp_path / "data" / "train", n_per_class=2)
    shards = write_shards(tmp_path / "data", tmp_path / "shards", per_shard=4)
    shutil.copy(shards[0], tmp_path / "shards" / "train-9.tar")
    with pytest.raises(InvalidArgumentError, match=r"the key 'train/ant/00' is in 'train-0.tar' and "
                       r"'train-9.tar'; webdataset keys must be unique across the shards"):  # fmt: skip
        load_dataset(str(tmp_path / "shards" / "*.tar"))


@pytest.mark.parametrize(
    ("make", "pattern", "message"),
    [
        (None, "{0..2}.tar", r"names '.*/1\.tar', which does not exist; check the pattern"),
        (None, "none-*.tar", r"matches no \.tar file; check the pattern"),
        ("garbage", "bad.tar", r"'bad\.tar' is not a readable tar file"),
        ("unknown", "x.tar", r"label 'wasp' is not one of the classes given \(ant, bee\)"),
    ],
)
def test_bad_shards_fail_in_one_line(tmp_path, make, pattern, message):
    make_images(tmp_path / "data" / "train", n_per_class=2)
    write_shards(tmp_path / "data", tmp_path, per_shard=8)
    (tmp_path / "train-0.tar").rename(tmp_path / "0.tar")
    if make == "garbage":
        (tmp_path / "bad.tar").write_bytes(b"not a tar file at all" * 40)
    if make == "unknown":
        with tarfile.open(tmp_path / "x.tar", "w") as tar:
            for name, data in (("a.png", (tmp_path / "0.tar").read_bytes()[:10]),
                               ("a.json", json.dumps({"label": "wasp"}).encode())):  # fmt: skip
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, __import__("io").BytesIO(data))
        source = WebDataset(str(tmp_path / pattern), label_field="json:label",
                            classes=("ant", "bee"))  # fmt: skip
    else:
        source = str(tmp_path / pattern)
    with pytest.raises(InvalidArgumentError, match=message) as raised:
        load_dataset(source)
    assert "\n" not in str(raised.value)


def _jpeg_folder(root: Path) -> Path:
    """Eight 160 px JPEGs in two class folders: large enough for the fast decode to shrink."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(8):
        (root / ("ant", "bee")[i % 2]).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((160, 150), Image.BICUBIC)
        image.save(root / ("ant", "bee")[i % 2] / f"{i:02d}.jpg", quality=90)
    return root


def _jpeg_shards(folder: Path, out: Path) -> str:
    out.mkdir()
    dataset = load_dataset(folder)
    with wds.TarWriter(str(out / "0.tar")) as sink:
        for i, path in zip(dataset.ids, dataset.paths, strict=True):
            sink.write({"__key__": key_of(i), "jpg": Path(path).read_bytes(), "cls": i[:3]})
    return str(out / "0.tar")


def test_the_fast_decode_of_tar_members_equals_that_of_the_files(tmp_path):
    folder = _jpeg_folder(tmp_path / "data")
    shards = _jpeg_shards(folder, tmp_path / "shards")
    _extract(folder, tmp_path / "folder.h5", decode="fast")
    _extract(shards, tmp_path / "tar.h5", decode="fast")
    _extract(shards, tmp_path / "tar-exact.h5")
    want = _by_key(tmp_path / "folder.h5", "embedding", key_of)
    got = _by_key(tmp_path / "tar.h5", "embedding")
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
    exact = _by_key(tmp_path / "tar-exact.h5", "embedding")
    assert all(exact[k][0] != got[k][0] for k in got)  # the fast decode did shrink them


def test_the_loader_hands_tar_jpegs_to_the_gpu_decoder_as_their_bytes(tmp_path):
    from featurecache import load_backbone
    from featurecache.engines._runner import data_loader

    folder = _jpeg_folder(tmp_path / "data")
    dataset = load_dataset(_jpeg_shards(folder, tmp_path / "shards"))
    preprocess = load_backbone("resnet18", "none", image_size=32).preprocess
    (rows, images, ok, _, positions, encoded, _) = next(
        iter(data_loader(dataset, preprocess, "gpu", 8, 0))
    )
    assert images is None and ok.all() and positions.tolist() == list(range(8))
    by_key = {key_of(i): Path(p).read_bytes() for i, p in zip(
        load_dataset(folder).ids, load_dataset(folder).paths, strict=True)}  # fmt: skip
    assert [bytes(e.numpy()) for e in encoded] == [by_key[dataset.ids[r]] for r in rows]


def test_shards_without_labels_say_which_field_was_read(tmp_path, capsys):
    folder = _jpeg_folder(tmp_path / "data")
    shards = _jpeg_shards(folder, tmp_path / "shards")
    assert main(["extract", shards, "--cache", str(tmp_path / "c.h5"), "--label-field", "txt"]) == 2
    assert capsys.readouterr().err == (
        f"featurecache: error: webdataset:{shards}: no sample has a label in the field 'txt'; "
        "name the field that holds them with --label-field FIELD.\n"
    )


def test_a_batch_of_consecutive_members_is_one_read(tmp_path, monkeypatch):
    from featurecache.data import _members

    make_images(tmp_path / "data" / "train", n_per_class=6)
    write_shards(tmp_path / "data", tmp_path / "shards", per_shard=6)
    dataset = load_dataset(str(tmp_path / "shards" / "*.tar"))
    reads = []
    original = _members.read_range
    monkeypatch.setattr(_members, "read_range", lambda *a: reads.append(a[1:]) or original(*a))
    batch = dataset.members.read_batch([7, 6, 8, 9, 2, 3])  # shard 1, then shard 0
    assert len(reads) == 2  # one range per shard
    assert batch == [dataset.members.read(r) for r in (7, 6, 8, 9, 2, 3)]
    assert [content_digest(b) for b in batch] == list(dataset.members.digests[[7, 6, 8, 9, 2, 3]])


def test_a_shard_index_spares_the_scan_of_unchanged_shards(tmp_path, monkeypatch):
    make_images(tmp_path / "data" / "train", n_per_class=6)
    shards = write_shards(tmp_path / "data", tmp_path / "shards", per_shard=4)
    source = WebDataset(str(tmp_path / "shards" / "*.tar"), index_dir=tmp_path / "index")
    first = load_dataset(source)
    assert len(list((tmp_path / "index").glob("*.json"))) == 3
    opened = []
    original = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(1) or original(*a, **k))
    again = load_dataset(source)
    assert opened == []  # every shard came from the index
    assert (
        again.ids.tolist() == first.ids.tolist() and again.labels.tolist() == first.labels.tolist()
    )
    assert list(again.members.digests) == list(first.members.digests)
    assert again.members.read_batch([0, 1]) == first.members.read_batch([0, 1])
    stat = shards[1].stat()
    os.utime(shards[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: scanned again
    assert load_dataset(source).ids.tolist() == first.ids.tolist() and len(opened) == 1


def test_source_flags_on_a_folder_are_refused_naming_them(tmp_path, capsys):
    data = make_images(tmp_path / "data", n_per_class=2)
    argv = ["extract", str(data), "--cache", str(tmp_path / "c.h5"), "--shard-index", "x"]
    assert main([*argv, "--classes", "a,b"]) == 2
    assert capsys.readouterr().err == (
        "featurecache: error: --classes, --shard-index describe .tar shards or .parquet files; "
        f"DATA {str(data)!r} is neither: leave them out, or name shards (e.g. "
        "'train-{000000..000009}.tar').\n"
    )


def _rewrite_member(shard: Path, name: str, data: bytes) -> None:
    """Write ``shard`` again with member ``name`` holding ``data`` (the others unchanged)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, content in members:
            content = data if member.name == name else content
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))


def test_a_member_rewritten_between_scan_and_decode_fails_its_row_then_is_computed(
    tmp_path, monkeypatch
):
    from featurecache.extraction import _extract as extract_module

    make_images(tmp_path / "data" / "train", n_per_class=4)
    shards = write_shards(tmp_path / "data", tmp_path / "shards", per_shard=4)
    pattern = str(tmp_path / "shards" / "*.tar")
    _extract(pattern, tmp_path / "reference.h5")
    with tarfile.open(shards[0]) as tar:
        last = [m.name for m in tar.getmembers() if m.name.endswith(".png")][-1]
    key = last.rsplit(".", 1)[0]
    make_images(tmp_path / "other", n_per_class=1, classes=("ant",), seed=99)
    other = (tmp_path / "other" / "ant" / "00.png").read_bytes()
    aligned = extract_module._aligned

    def and_then_rewritten(dataset, store):
        found = aligned(dataset, store)
        _rewrite_member(shards[0], last, other)  # after the scan planned its digest
        return found

    monkeypatch.setattr(extract_module, "_aligned", and_then_rewritten)
    result = _extract(pattern, tmp_path / "c.h5")
    assert (result.rows_computed, result.n_failed) == (8, 1)
    assert open_cache(tmp_path / "c.h5").failures("resnet18") == [
        (key, "InvalidArgumentError: the shard member changed during extraction; re-run extract")
    ]
    for layer in LAYERS:  # the untouched rows hold what a run without the change stores
        want = _by_key(tmp_path / "reference.h5", layer)
        del want[key]
        assert _by_key(tmp_path / "c.h5", layer) == want
    monkeypatch.setattr(extract_module, "_aligned", aligned)
    again = _extract(pattern, tmp_path / "c.h5")
    assert (again.rows_computed, again.n_failed) == (1, 0)
    _extract(pattern, tmp_path / "fresh.h5")
    for layer in LAYERS:  # the new content's features (computed alone: another batch size)
        got, want = _by_key(tmp_path / "c.h5", layer), _by_key(tmp_path / "fresh.h5", layer)
        (x, *rest), (x_want, *rest_want) = got.pop(key), want.pop(key)
        assert got == want and rest == rest_want
        np.testing.assert_allclose(
            np.frombuffer(x, np.float32), np.frombuffer(x_want, np.float32), rtol=1e-4, atol=1e-5
        )
