"""The store: shard files, the derived index, plain-h5py reading, locks and errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from featurecache.cache import FeatureConfig, Store
from featurecache.cache import _format as fmt
from featurecache.data._datasets import Dataset
from featurecache.exceptions import (
    CacheLockedError,
    ConfigMismatchError,
    DatasetChangedError,
    InvalidArgumentError,
)

CONFIG = FeatureConfig(
    backbone="toy",
    weights="none",
    weights_sha256="ab" * 32,
    preprocessing={"crop_size": 8},
    pooling="avg",
    dtype="float32",
    compute_dtype="float32",
)
ATTRS = {"depth": 0.5, "depth_index": 1, "raw_shape": np.array([3, 4, 4])}


def _dataset(n=10):
    images = np.zeros((n, 4, 4), np.uint8)
    return Dataset.from_arrays(
        images, np.arange(n) % 2, ["train"] * (n - 3) + ["test"] * 3, ["a", "b"]
    )


def _write(store, shard, start, n, value, layers=("l1",), failed=(), publish=True):
    status = np.ones(n, np.int8)
    reasons = [""] * n
    for row in failed:
        status[row - start] = 2
        reasons[row - start] = "broken image"
    features = {layer: np.full((n, 3), value, np.float32) for layer in layers}
    meta = store.write_shard(
        "toy", shard, start, status, reasons, features, dict.fromkeys(layers, ATTRS), CONFIG
    )
    if publish:
        store.publish("toy", [meta])
    return meta


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "cache.h5")
    store.create_samples(_dataset(), shard_size=4)
    store.register_model("toy", CONFIG)
    return store


def test_index_maps_shards_and_reads_with_plain_h5py_from_any_cwd(store, tmp_path, monkeypatch):
    _write(store, 0, 0, 4, 1.0)
    _write(store, 2, 8, 2, 3.0, failed=[9])
    store.rebuild_index()
    monkeypatch.chdir("/")
    with h5py.File(tmp_path / "cache.h5", "r") as f:
        X = f[fmt.features_path("toy", "l1")][:]
        status = f[fmt.status_path("toy", "l1")][:]
        assert f[fmt.sample_path("ids")].asstr()[:].tolist() == [str(i) for i in range(10)]
        assert f.attrs["shard_size"] == 4 and f.attrs["format"] == "featurecache"
        assert json.loads(f[fmt.features_path("toy")].attrs["config"])["backbone"] == "toy"
        assert f[fmt.features_path("toy", "l1")].attrs["depth"] == 0.5
        assert f[fmt.failures_path("toy", "row")][:].tolist() == [9]
        assert f[fmt.failures_path("toy", "reason")].asstr()[:].tolist() == ["broken image"]
        assert f[fmt.shards_path("toy", "file")].shape == (2,)
    np.testing.assert_array_equal(X[:4], 1.0)
    assert np.isnan(X[4:8]).all()  # shard 1 not yet computed
    np.testing.assert_array_equal(X[8:], 3.0)
    assert status.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 1, 2]


def test_new_layers_go_to_a_new_pass_and_done_layers_merges(store):
    _write(store, 0, 0, 4, 1.0, layers=("l1",))
    _write(store, 0, 0, 4, 2.0, layers=("l2", "l3"))
    assert store.done_layers("toy") == {0: {"l1", "l2", "l3"}}
    paths = {p.parent.name for p in store.model_dir("toy").glob("p-*/shard-*.h5")}
    assert len(paths) == 2


def test_index_is_current_detects_unlisted_shard(store):
    _write(store, 0, 0, 4, 1.0)
    store.rebuild_index()
    assert store.index_is_current()
    _write(store, 1, 4, 4, 1.0, publish=False)  # written, but the writer died before logging it
    assert store.index_is_current() and store.done_layers("toy") == {0: {"l1"}}
    with store.lock_model("toy"):  # the next writer logs it: finished work is not lost
        assert store.done_layers("toy") == {0: {"l1"}, 1: {"l1"}}
    assert not store.index_is_current()
    store.rebuild_index()
    assert store.index_is_current()


def test_a_log_line_cut_short_is_not_committed_and_the_next_writer_repairs_it(store):
    _write(store, 0, 0, 4, 1.0)
    meta = _write(store, 1, 4, 4, 2.0, publish=False)
    log = store.model_dir("toy") / "commits.jsonl"
    whole = log.read_bytes()
    log.write_bytes(whole + meta.to_line().encode()[:40])  # a crash in the middle of the append
    assert store.done_layers("toy") == {0: {"l1"}}  # readers pass over the cut line
    with store.lock_model("toy"):
        pass
    lines = log.read_text().splitlines()
    assert log.read_text().endswith("\n") and len(lines) == 2
    assert store.done_layers("toy") == {0: {"l1"}, 1: {"l1"}}


def test_commit_cost_does_not_read_earlier_shards(store, monkeypatch):
    for shard in range(3):
        _write(store, shard, 4 * shard, 4 if shard < 2 else 2, 1.0)
    opened = []
    original = store._open
    monkeypatch.setattr(
        store, "_open", lambda path, mode="r": opened.append(path) or original(path, mode)
    )
    assert sorted(store.done_layers("toy")) == [0, 1, 2]
    assert opened == []  # the plan comes from the log alone


def test_config_mismatch_names_the_difference(store):
    with pytest.raises(
        ConfigMismatchError,
        match=r"\(pooling: cached avg, requested max\); pass another model name \(name=, or --name\)",
    ):
        store.register_model("toy", dataclasses.replace(CONFIG, pooling="max"))
    store.register_model("toy", dataclasses.replace(CONFIG))  # the same configuration is fine


def test_changed_dataset_counts_new_and_missing(store):
    images = np.zeros((11, 4, 4), np.uint8)
    bigger = Dataset.from_arrays(images, np.arange(11) % 2, ["train"] * 11, ["a", "b"])
    with pytest.raises(DatasetChangedError, match=r"has 1 new, 3 relabelled or re-split samples"):
        store.check_dataset(bigger)
    relabelled = _dataset()
    relabelled = Dataset.from_arrays(
        relabelled.arrays, 1 - relabelled.labels, relabelled.splits, ["a", "b"]
    )
    with pytest.raises(DatasetChangedError, match=r"has 10 relabelled or re-split samples"):
        store.check_dataset(relabelled)


def test_cache_path_errors(tmp_path):
    with pytest.raises(
        InvalidArgumentError, match=r"a file path like features.h5, not a directory"
    ):
        Store(tmp_path).check_path()
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(
        InvalidArgumentError, match=r"must be a new path or an existing featurecache cache"
    ):
        Store(other).check_path()
    with pytest.raises(InvalidArgumentError, match=r"must be a path in an existing folder"):
        Store(tmp_path / "no" / "c.h5").check_path()


def test_stale_temporaries_of_dead_processes_are_removed(store):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    import socket

    stale = store.model_dir("toy") / f"shard-000000.h5.tmp-{socket.gethostname()}-{pid}-deadbeef"
    alive = (
        store.model_dir("toy")
        / f"shard-000001.h5.tmp-{socket.gethostname()}-{os.getpid()}-cafe0000"
    )
    stale.write_bytes(b"partial")
    alive.write_bytes(b"in flight")
    store.rebuild_index()
    assert not stale.exists()
    assert alive.exists()


def test_second_writer_of_the_same_model_gets_a_clear_error(store):
    with store.lock_model("toy"):
        with pytest.raises(
            CacheLockedError,
            match=r"is writing model 'toy' into .*; wait for it to finish, or write under another model name \(name=, or --name\)",
        ):
            with Store(store.path).lock_model("toy"):
                pass
    with Store(store.path).lock_model("toy"):
        pass  # released


def test_without_locking_nothing_is_locked(store):
    unlocked = Store(store.path, locking=False)
    with store.lock_model("toy"), unlocked.lock_model("toy"):
        pass
    _write(unlocked, 0, 0, 4, 1.0)
    unlocked.rebuild_index()
    assert unlocked.index_is_current()


def test_locking_switch_reads_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURECACHE_NO_LOCKING", "1")
    assert Store(tmp_path / "c.h5").locking is False
    monkeypatch.delenv("FEATURECACHE_NO_LOCKING")
    assert Store(tmp_path / "c.h5").locking is True
