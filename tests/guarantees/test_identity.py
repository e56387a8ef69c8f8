"""A sample's identity is its content: edits, swaps, re-splits and retries never leave wrong rows.

Each test compares the cache with a fresh extraction of the dataset as it is at that moment
(the oracle): every usable row (ok, not removed, not stale) must hold exactly the features
a new cache computes for the same file.
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
from _workers import one_torch_thread, run_options
from PIL import Image

from featurecache import extract, open_cache
from featurecache.app.cli import main
from featurecache.cache import STATE_STALE, Store, content_digest, upgrade
from featurecache.data import _datasets as _data
from featurecache.exceptions import CacheReadOnlyError, InvalidArgumentError

ARGS = dict(model="resnet18", weights="none", layers=["embedding"], image_size=32,
            dtype="float32")  # fmt: skip
CLI = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--device", "cpu",
       "--dtype", "float32", "--workers", "0", "--no-progress", "--layers", "embedding"]  # fmt: skip


def _bmp(path, seed: int, size=(36, 36)) -> None:
    """A BMP of random pixels: its size in bytes depends only on ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")


def _folder(root, classes=("cat", "dog"), n=4, splits=("train", "test")):
    for k, name in enumerate(classes):
        for split in splits:
            for i in range(n if split == "train" else 1):
                _bmp(root / split / name / f"{i:04d}.bmp", seed=1000 * k + 10 * i + len(split))
    return root


def _extract(data, cache, **changes):
    with one_torch_thread():
        return extract(
            data, cache, **{**ARGS, **changes}, options=run_options(shard_size=4, batch_size=1)
        )


def _usable(cache, model="resnet18", layer="embedding") -> dict[str, bytes]:
    X, _, ids = open_cache(cache).load(model, layer)
    return {i: x.tobytes() for i, x in zip(ids.tolist(), X, strict=True)}


def _fresh(data, tmp_path, **changes) -> dict[str, bytes]:
    """The oracle: the dataset as it is now, extracted into a new cache (batches of one
    image in both: the same kernels, bit for bit)."""
    cache = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}.h5"
    _extract(data, cache, **changes)
    return _usable(cache)


def _same_stat_times(path, like) -> None:
    stat = os.stat(like)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_content_digest_hashes_bytes_and_pixels():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert len(content_digest(b"x")) == 16
    assert content_digest(a) == content_digest(a.copy(order="F"))  # contiguous bytes
    assert content_digest(a) != content_digest(a.reshape(4, 3))  # shape counts
    assert content_digest(a) != content_digest(a.astype(np.int8))  # dtype counts
    assert content_digest(memoryview(b"abc")) == content_digest(b"abc")


def test_edit_in_place_and_swap_between_class_folders_equal_a_fresh_extraction(tmp_path):
    """Example 1: an image edited in place (same size and mtime) and two same-named files
    swapped between class folders; later, a layer added to the same cache."""
    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    edited = data / "train" / "cat" / "0002.bmp"
    before = os.stat(edited)
    _bmp(edited, seed=999)  # other pixels, same byte size
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    cat, dog = data / "train" / "cat" / "0001.bmp", data / "train" / "dog" / "0001.bmp"
    shutil.move(cat, tmp_path / "swap.bmp")
    shutil.move(dog, cat)
    shutil.move(tmp_path / "swap.bmp", dog)

    result = _extract(data, cache)

    assert _usable(cache) == _fresh(data, tmp_path)
    assert result.rows_computed == 1  # the edited image; the swapped pair moved rows
    assert result.changes == "1 changed content, 2 moved samples"
    reader = open_cache(cache)
    assert int((reader.state == STATE_STALE).sum()) == 1
    assert reader.entry("resnet18", "embedding").n_stale == 1
    _extract(data, cache, layers=["layer2"])  # a layer added later: the same images
    X, _, ids = open_cache(cache).load("resnet18", "layer2")
    fresh = tmp_path / "fresh-layer2.h5"
    _extract(data, fresh, layers=["layer2"])
    Y, _, fresh_ids = open_cache(fresh).load("resnet18", "layer2")
    order = np.argsort(ids)
    assert ids[order].tolist() == sorted(fresh_ids.tolist())
    assert X[order].tobytes() == Y[np.argsort(fresh_ids)].tobytes()


def test_a_new_file_of_the_deleted_ones_name_size_and_mtime_is_computed(tmp_path):
    """Example 2: ``cat/0003.bmp`` deleted, a different ``dog/0003.bmp``... of the same size
    and mtime added (files unpacked from one archive)."""
    data = _folder(tmp_path / "data", n=4)
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    gone = data / "train" / "cat" / "0003.bmp"
    stat = os.stat(gone)
    gone.unlink()
    new = data / "train" / "dog" / "extra" / "0003.bmp"
    _bmp(new, seed=4242)
    os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    result = _extract(data, cache)

    assert result.rows_computed == 1
    assert _usable(cache) == _fresh(data, tmp_path)
    assert "train/cat/0003.bmp" not in _usable(cache)


def test_a_file_moved_keeps_its_row_only_when_its_content_matches(tmp_path):
    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    before = _usable(cache)
    (data / "train" / "dog" / "moved").mkdir()
    shutil.move(data / "train" / "cat" / "0000.bmp", data / "train" / "dog" / "moved" / "0000.bmp")

    result = _extract(data, cache)

    assert result.rows_computed == 0 and result.changes == "1 moved samples"
    assert _usable(cache)["train/dog/moved/0000.bmp"] == before["train/cat/0000.bmp"]


def _splits(cache) -> dict[str, str]:
    reader = open_cache(cache)
    live = ~reader.removed
    return dict(zip(reader.ids[live].tolist(), reader.splits[live].tolist(), strict=True))


def test_a_stored_random_split_is_kept_refused_when_changed_and_grows_deterministically(tmp_path):
    """Example 3: another seed is refused; a model extracted without a split keeps it;
    new samples get splits from their id and the stored seed, old rows never move."""
    data = _folder(tmp_path / "data", n=6, splits=("train",))
    flat = tmp_path / "flat"
    shutil.copytree(data / "train", flat)
    cache = tmp_path / "c.h5"
    _extract(flat, cache, split="random:0.25")
    stored = _splits(cache)
    assert sorted(set(stored.values())) == ["test", "train"]

    with pytest.raises(
        InvalidArgumentError, match=r"random:0.25 with seed 0\).*random:0.25 with seed 3"
    ):
        _extract(flat, cache, split="random:0.25", seed=3, name="other")
    with pytest.raises(InvalidArgumentError, match=r"random:0.25 with seed 0\).*random:0.5"):
        _extract(flat, cache, split="random:0.5", name="other")
    assert _splits(cache) == stored

    _extract(flat, cache, name="second")  # no split asked: the stored one stays
    assert _splits(cache) == stored
    for k in range(8):  # the dataset grows
        _bmp(flat / ("cat", "dog")[k % 2] / f"new-{k}.bmp", seed=7000 + k)
    _extract(flat, cache)
    grown = _splits(cache)
    assert {i: grown[i] for i in stored} == stored
    new = [i for i in grown if i not in stored]
    assert len(new) == 8
    assert [grown[i] for i in new] == Store(cache).read_samples().split.assign(new).tolist()

    _extract(flat, cache, split="random:0.5", resplit=True, name="third")  # asked for: replaced
    assert _splits(cache) != stored


def test_given_splits_follow_the_data(tmp_path):
    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    shutil.move(data / "train" / "cat" / "0003.bmp", data / "test" / "cat" / "0003.bmp")
    result = _extract(data, cache)
    assert result.rows_computed == 0
    assert _splits(cache)["test/cat/0003.bmp"] == "test"
    with pytest.raises(InvalidArgumentError, match=r"own splits"):
        _extract(data, cache, split="random:0.2")


def test_one_file_under_two_spellings_in_a_manifest_is_refused(tmp_path):
    """Example 5: ``D/train/x.png``, ``D/../D/train/x.png`` and an absolute path are one file."""
    data = _folder(tmp_path / "D", n=2)
    manifest = tmp_path / "m.csv"
    x = "D/train/cat/0000.bmp"
    rows = ["path,label,split", f"{x},cat,train", "D/train/dog/0000.bmp,dog,train",
            "D/train/cat/0001.bmp, cat ,train", "D/train/dog/0001.bmp,dog ,train"]  # fmt: skip
    for other in ("D/../D/train/cat/0000.bmp", str(data / "train" / "cat" / "0000.bmp")):
        manifest.write_text("\n".join([*rows, f"{other},cat,test"]) + "\n")
        with pytest.raises(
            InvalidArgumentError,
            match=rf"lists the file '{x}' more than once \(also as '{re.escape(other)}'\)",
        ):
            _extract(manifest, tmp_path / "c.h5")
    manifest.write_text("\n".join(rows) + "\n")
    _extract(manifest, tmp_path / "c.h5")
    assert open_cache(tmp_path / "c.h5").class_names == ["cat", "dog"]  # labels stripped


def test_a_failed_file_completed_later_is_retried(tmp_path, capsys):
    """Example 7: a 0-byte file fails; once written, the next run computes it."""
    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    empty = data / "train" / "dog" / "0002.bmp"
    content = empty.read_bytes()
    empty.write_bytes(b"")
    first = _extract(data, cache)
    assert (first.n_ok, first.n_failed) == (9, 1)
    empty.write_bytes(content)

    again = _extract(data, cache)

    assert (again.n_ok, again.n_failed, again.rows_computed) == (10, 0, 1)
    assert _usable(cache) == _fresh(data, tmp_path)
    assert main(["ls", str(cache)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert ": 10 samples (" in header and "), 1 stale, 2 classes" in header


def test_retry_failed_computes_failed_rows_again(tmp_path, monkeypatch):
    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    flaky = {"on": True}

    load = _data.Dataset.load_image

    def failing(self, index):
        if flaky["on"] and str(self.ids[index]).endswith("cat/0001.bmp"):
            raise OSError("the disk hiccuped")
        return load(self, index)

    monkeypatch.setattr(_data.Dataset, "load_image", failing)
    first = _extract(data, cache, decode="exact")
    assert first.n_failed == 1
    flaky["on"] = False
    assert _extract(data, cache).rows_computed == 0  # same content: not retried by itself
    again = _extract(data, cache, retry_failed=True)
    assert (again.rows_computed, again.n_failed, again.changes) == (
        1,
        0,
        "1 failed retried samples",
    )
    assert _usable(cache) == _fresh(data, tmp_path)


def test_a_command_whose_every_row_failed_exits_non_zero(tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        (data / name / "0.bmp").write_bytes(b"")
    code = main(["extract", str(data), "--cache", str(tmp_path / "c.h5"), *CLI])
    captured = capsys.readouterr()
    assert code == 1
    assert "rows: 0 ok, 2 failed" in captured.out
    assert "every row failed (2)" in captured.err


def test_verify_hashes_every_file_and_the_stat_filter_skips_unchanged_ones(tmp_path, monkeypatch):
    from featurecache.cache import _samples

    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    hashed = []
    original = _samples.file_digest
    monkeypatch.setattr(_samples, "file_digest", lambda p: hashed.append(p) or original(p))
    monkeypatch.setattr(_samples, "RACY_NS", 0)  # files written a moment ago are not racy here
    _extract(data, cache)
    assert hashed == []
    _extract(data, cache, verify=True)
    assert len(hashed) == 10


def _to_version_1(cache) -> None:
    """Rewrite a cache's sample table in the version-1 layout: strings, no digests."""
    import h5py

    from featurecache.cache import _format as fmt

    path = fmt.samples_file(cache)
    table = Store(cache).read_samples()
    with h5py.File(path, "r+") as f:
        del f["samples"]
        strings = h5py.string_dtype()
        f.create_dataset(fmt.sample_path("ids"), data=table.ids.astype(object), dtype=strings)
        f.create_dataset(fmt.sample_path("labels"), data=table.labels)
        f.create_dataset(fmt.sample_path("splits"), data=table.splits.astype(object), dtype=strings)
        f["samples"].attrs["class_names"] = np.array(table.class_names, dtype=object)
        f["samples"].attrs["root"] = table.source
        f.attrs["format_version"] = 1


def test_a_version_1_table_is_read_upgraded_then_hashed_by_the_first_writing_run(tmp_path):
    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    before = _usable(cache)
    _to_version_1(cache)
    assert _usable(cache) == before  # read through the adapter
    with pytest.raises(CacheReadOnlyError, match="run `featurecache upgrade "):
        _extract(data, cache)  # version 1 is read, never written
    assert upgrade(cache) and _usable(cache) == before  # digests not known yet

    again = _extract(data, cache)  # trusts the stored features, records the digests

    assert again.rows_computed == 0 and _usable(cache) == before
    table = Store(cache).read_samples()
    assert table.digests.any(axis=1).all() and table.split.kind == "given"
    _bmp(data / "train" / "cat" / "0000.bmp", seed=31337)  # from now on, content counts
    assert _extract(data, cache).rows_computed == 1
    assert _usable(cache) == _fresh(data, tmp_path)


def test_an_index_copied_without_its_folder_says_to_keep_them_together(tmp_path, capsys):
    data = _folder(tmp_path / "data", n=1)
    _extract(data, tmp_path / "c.h5")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tmp_path / "c.h5", tmp_path / "elsewhere" / "c.h5")
    assert main(["ls", str(tmp_path / "elsewhere" / "c.h5")]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.endswith("keep c.h5 and c.h5.d together (copy or move both).")


def test_a_file_changed_during_extraction_fails_its_row_and_the_next_run_computes_it(
    tmp_path, monkeypatch
):
    from featurecache.extraction import _extract as extract_module

    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    target = data / "train" / "dog" / "0003.bmp"
    _bmp(target, seed=555)  # a change the next run sees and plans...
    aligned = extract_module._aligned

    def and_then_changed(dataset, store):
        found = aligned(dataset, store)
        _bmp(target, seed=556)  # ...then another one after the comparison, before decoding
        return found

    monkeypatch.setattr(extract_module, "_aligned", and_then_changed)
    result = _extract(data, cache, decode="exact")
    assert (result.rows_computed, result.n_failed) == (1, 1)
    assert open_cache(cache).failures("resnet18") == [
        (
            "train/dog/0003.bmp",
            "InvalidArgumentError: the file changed during extraction; re-run extract",
        )
    ]
    monkeypatch.setattr(extract_module, "_aligned", aligned)
    again = _extract(data, cache)
    assert (again.rows_computed, again.n_failed) == (1, 0)
    assert _usable(cache) == _fresh(data, tmp_path)


def test_extract_ls_and_run_json_count_the_same_rows(tmp_path, capsys):
    import json

    import pipelines

    data = _folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    _bmp(data / "train" / "cat" / "0001.bmp", seed=777)  # one stale row, one new
    (data / "train" / "dog" / "0003.bmp").unlink()  # one removed
    result = _extract(data, cache)
    counts = open_cache(cache).counts("resnet18", "embedding")
    assert counts["all"] == {"ok": 9, "failed": 0, "pending": 0, "removed": 1, "stale": 1}
    assert counts["train"] == {"ok": 7, "failed": 0, "pending": 0, "removed": 1, "stale": 1}
    assert result.counts == counts
    assert main(["ls", str(cache), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed["n_samples"], listed["n_removed"], listed["n_stale"]) == (9, 1, 1)
    assert listed["entries"][0]["counts"] == counts
    results = tmp_path / "results"
    pipelines.fit(cache, results, heads=["logreg"], grid={"logreg": {"C": [1.0]}}, cv=2)
    combo = pipelines.results._results.ResultsFolder(results).read_run()["rows"]["combinations"][0]
    assert {k: combo[k] for k in counts["all"]} == counts["all"]
    assert combo["splits"] == {k: v for k, v in counts.items() if k != "all"}


def test_the_command_line_says_what_changed_and_refuses_another_split(tmp_path, capsys):
    data = _folder(tmp_path / "data", n=3, splits=("train",))
    flat, cache = data / "train", str(tmp_path / "c.h5")
    assert main(["extract", str(flat), "--cache", cache, *CLI, "--split", "random:0.5"]) == 0
    _bmp(flat / "cat" / "0000.bmp", seed=4321)
    capsys.readouterr()
    assert main(["extract", str(flat), "--cache", cache, *CLI, "--verify", "--retry-failed"]) == 0
    out = capsys.readouterr().out
    assert "samples: 1 changed content samples since the last run" in out
    assert "rows: 6 ok, 0 failed, 1 stale (" in out
    code = main(["extract", str(flat), "--cache", cache, *CLI, "--split", "random:0.5",
                 "--seed", "7", "--name", "other"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "random:0.5 with seed 0" in err and "random:0.5 with seed 7" in err
    assert "--resplit" in err
