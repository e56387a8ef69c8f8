"""The cache reader on caches written with plain h5py (tests/_synthetic.py)."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from _synthetic import samples_digest, write_cache

import featurecache.cache._legacy as legacy_module
import featurecache.cache._reader as cache_module
import pipelines
from featurecache.cache import _format as fmt
from featurecache.exceptions import CacheCorruptError, InvalidArgumentError, UnknownNameError


@pytest.fixture(params=[False, True], ids=["plain", "sharded"])
def cache_path(request, tmp_path):
    return write_cache(
        tmp_path / "cache.h5", shards=request.param, models=("a", "b"), failed_rows=[3, 7]
    )


def _plain_read(path, model, layer):
    with h5py.File(path, "r") as f:
        X = f[fmt.features_path(model, layer)][:]
        ok = f[fmt.status_path(model, layer)][:] == 1
        y = f[fmt.sample_path("labels")][:]
        ids = f[fmt.sample_path("ids")].asstr()[:]
        codes = f[fmt.sample_path("splits")]  # int8 codes into the split-name table
        splits = np.asarray(codes.attrs["names"]).astype(str)[codes[:]]
    return X, y, ids, splits, ok


def test_entries_describe_every_matrix(cache_path):
    cache = pipelines.open_cache(cache_path)
    assert cache.models == ["a", "b"]
    assert cache.layers("a") == ["noise", "informative", "embedding"]  # by depth, not by name
    entries = {(e.model, e.layer): e for e in cache.entries}
    assert len(entries) == 6
    entry = entries["a", "informative"]
    assert (entry.n_features, entry.dtype, entry.n_ok, entry.n_failed, entry.n_pending) == (
        16,
        "float32",
        88,
        2,
        0,
    )
    assert entry.depth == 0.5
    assert entry.provenance["layer"] == "informative"
    assert entry.provenance["backbone"] == "a"
    assert isinstance(entry.provenance["raw_shape"], list)
    assert cache.class_names == ["class_0", "class_1", "class_2"]
    assert cache.failures("a") == [("s00003", "unreadable image"), ("s00007", "unreadable image")]


def test_load_matches_plain_h5py_and_drops_failed_rows(cache_path):
    cache = pipelines.open_cache(cache_path)
    X, y, ids = cache.load("a", "informative", split="train")
    X_ref, y_ref, ids_ref, splits, ok = _plain_read(cache_path, "a", "informative")
    keep = ok & (splits == "train")
    np.testing.assert_array_equal(X, X_ref[keep])
    np.testing.assert_array_equal(y, y_ref[keep])
    np.testing.assert_array_equal(ids, ids_ref[keep])
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert not {"s00003", "s00007"} & set(ids.tolist())
    X_all, _, ids_all = cache.load("a", "informative", split=["train", "test"])
    assert len(ids_all) == 88 and np.isfinite(X_all).all()


def test_float16_is_upcast(tmp_path):
    path = write_cache(tmp_path / "half.h5", dtype="float16", shards=True)
    X, _, _ = pipelines.open_cache(path).load("toy", "embedding")
    assert X.dtype == np.float32
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(
            X, f[fmt.features_path("toy", "embedding")][:].astype(np.float32)
        )


def test_chunked_read_of_an_index_of_arrays_equals_one_read(tmp_path, monkeypatch):
    """An index of plain datasets (version 1, no folder) is read a step at a time."""
    path = tmp_path / "arrays.h5"
    shutil.copy2(Path(__file__).parents[1] / "fixtures" / "v1" / "arrays.h5", path)
    whole = pipelines.open_cache(path).load("toy", "informative", split="test")
    monkeypatch.setattr(legacy_module, "_CHUNK_BYTES", 3 * 16 * 4)  # 3 rows per step
    chunked = pipelines.open_cache(path).load("toy", "informative", split="test")
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hand_written_cache_without_status_or_digest(tmp_path):
    path = write_cache(tmp_path / "cache.h5", status=False)
    with h5py.File(path, "r+") as f:
        del f.attrs["samples_digest"]
        del f.attrs["format"]
    cache = pipelines.open_cache(path)
    assert cache.entries[0].n_ok == 90
    assert cache.samples_digest == samples_digest(cache.ids, cache.labels, cache.splits)
    assert cache.failures("toy") == []


def test_no_locking_env(tmp_path, monkeypatch):
    path = write_cache(tmp_path / "cache.h5", shards=True)
    monkeypatch.setenv("FEATURECACHE_NO_LOCKING", "1")
    calls = []
    original = h5py.File

    def spy(*args, **kwargs):
        calls.append(kwargs.get("locking"))
        return original(*args, **kwargs)

    monkeypatch.setattr(cache_module.h5py, "File", spy)
    pipelines.open_cache(path).load("toy", "noise")
    assert calls and all(c is False for c in calls)


def test_unknown_names_suggest_and_point_to_ls(cache_path):
    cache = pipelines.open_cache(cache_path)
    with pytest.raises(
        UnknownNameError, match=r"model 'aa' .* Did you mean 'a'\?.*featurecache ls"
    ):
        cache.load("aa", "noise")
    with pytest.raises(UnknownNameError, match=r"layer 'informativ' .*Did you mean 'informative'"):
        cache.load("a", "informativ")
    with pytest.raises(UnknownNameError, match=r"split 'tset' .*Did you mean 'test'"):
        cache.load("a", "noise", split="tset")
    with pytest.raises(UnknownNameError, match="model 'c'"):
        cache.failures("c")


def test_bad_cache_paths(tmp_path):
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        pipelines.open_cache(tmp_path)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        pipelines.open_cache(tmp_path / "missing.h5")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InvalidArgumentError, match="is not HDF5"):
        pipelines.open_cache(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InvalidArgumentError, match="must be a featurecache file"):
        pipelines.open_cache(other)


def _first_shard(path, model="toy"):
    return sorted(glob.glob(f"{path}.d/{model}/*/shard-000001.h5"))[0]


def test_checksum_mismatch_names_the_shard_and_the_fix(tmp_path):
    path = write_cache(tmp_path / "cache.h5", shards=True)
    shard = _first_shard(path)
    with h5py.File(shard, "r+") as f:
        f[fmt.shard_features_path("informative")][0, 0] += (
            1.0  # fletcher32 is rewritten; only SHA-256 catches it
        )
    cache = pipelines.open_cache(path)
    message = rf"shard file '{shard}' .*SHA-256.*delete '{shard}' and re-run the same `featurecache extract`"
    with pytest.raises(CacheCorruptError, match=message):
        cache.load("toy", "informative")
    with pytest.raises(CacheCorruptError, match="SHA-256"):
        cache.verify()
    cache.load("toy", "noise")  # other layers of the same shard are intact


def test_unreadable_shard_is_corrupt_not_wrong_numbers(tmp_path):
    path = write_cache(tmp_path / "cache.h5", shards=True)
    shard = _first_shard(path)
    with open(shard, "r+b") as f:
        f.truncate(512)
    with pytest.raises(CacheCorruptError, match=r"shard-000001\.h5.*cannot be read"):
        pipelines.open_cache(path).load("toy", "noise")


def test_verify_passes_on_intact_caches(cache_path):
    pipelines.open_cache(cache_path).verify()
    pipelines.open_cache(cache_path).verify("b")


def test_ids_and_splits_outside_ascii_read_back_exactly(tmp_path):
    """ASCII ids take a fast path; any other text (UTF-8 bytes) is decoded, never mangled."""
    path = write_cache(tmp_path / "cache.h5")
    with h5py.File(path, "r+") as f:
        n = len(f[fmt.sample_path("ids")])
        ids = np.array([f"été/ü-{i}.png" if i % 2 else f"plain-{i}" for i in range(n)], object)
        del f[fmt.sample_path("ids")]
        f.create_dataset(fmt.sample_path("ids"), data=np.array([i.encode() for i in ids]))
    cache = pipelines.open_cache(path)
    assert cache.ids.tolist() == ids.tolist()
    assert set(cache.splits.tolist()) == {"train", "test"}
