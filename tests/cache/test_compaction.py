"""Compaction: shard files packed into segments read the same, and survive a kill anywhere."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from _synthetic import write_cache

import featurecache.cache._compact as compact_module
import featurecache.cache._folder as folder_module
from featurecache.cache import Store, open_cache
from featurecache.cache import _format as fmt
from featurecache.cache._log import read_log
from featurecache.exceptions import CacheCorruptError

FAILED = (3, 20, 57)


def _cache(path, **kwargs):
    """A folder cache of 180 rows in 45 shards of 4 rows, with failures and both views."""
    return write_cache(
        path, shards=True, logged=True, shard_size=4, failed_rows=FAILED, views=2, tta=3,
        n_per_class={"train": 40, "test": 20}, **kwargs,
    )  # fmt: skip


def _reads(path) -> dict:
    """Everything a reader returns of the cache: rows, views, failures, row-range digests."""
    cache = open_cache(path)
    found = {"failures": cache.failures("toy")}
    for layer in cache.layers("toy"):
        found[layer] = cache.load_rows("toy", layer)
        found[layer, "digests"] = cache.row_digests("toy", layer)
        for kind in ("augment", "tta"):
            found[layer, kind] = cache.load_views("toy", layer, kind)
    return found


def _assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, tuple):
            for a, b in zip(got[key], value, strict=True):
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key
        else:
            assert got[key] == value, key


def _files(path) -> list[str]:
    return sorted(p.name for p in fmt.model_dir(path, "toy").rglob("*.h5*"))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_reads_equal_before_and_after_compaction(tmp_path, dtype):
    path = _cache(tmp_path / "c.h5", dtype=dtype)
    before = _reads(path)
    assert len(_files(path)) == 45
    assert Store(path).compact("toy") == 1
    assert _files(path) == ["segment-000000-000044.h5"]
    _assert_same(_reads(path), before)
    assert Store(path).compact("toy") == 0  # nothing left to pack: idempotent
    open_cache(path).verify()
    with h5py.File(path, "r") as f:  # plain h5py reads the segment through the index
        X, rows = before["embedding"]
        np.testing.assert_array_equal(f[fmt.features_path("toy", "embedding")][:][rows], X)
        assert (f[fmt.status_path("toy", "embedding")][:][list(FAILED)] == 2).all()


def test_segments_stay_under_their_size_and_later_shards_join_the_last_one(tmp_path, monkeypatch):
    path = _cache(tmp_path / "c.h5")
    before = _reads(path)
    size = max(p.stat().st_size for p in fmt.model_dir(path, "toy").rglob("shard-*.h5"))
    monkeypatch.setattr(compact_module, "SEGMENT_BYTES", 10 * size)
    assert Store(path).compact("toy") == 5
    assert _files(path)[:2] == ["segment-000000-000009.h5", "segment-000010-000019.h5"]
    _assert_same(_reads(path), before)


def test_the_first_read_checks_one_digest_per_segment(tmp_path, monkeypatch):
    path = _cache(tmp_path / "c.h5")
    Store(path).compact("toy")
    checked = []
    original = folder_module.bytes_digest
    monkeypatch.setattr(
        folder_module, "bytes_digest", lambda *a: checked.append(a[1]) or original(*a)
    )
    folder_module._VERIFIED.clear()
    cache = open_cache(path)
    cache.load_rows("toy", "embedding")
    assert checked == ["xxh3_128"]  # one segment, one digest (not 45)
    cache.load_rows("toy", "embedding")
    assert checked == ["xxh3_128"]  # then never again in this process


def test_a_damaged_segment_names_itself_and_the_fix(tmp_path):
    path = _cache(tmp_path / "c.h5")
    Store(path).compact("toy")
    (segment,) = fmt.model_dir(path, "toy").rglob("segment-*.h5")
    with h5py.File(segment, "r+") as f:  # valid HDF5 checksums: only the digest sees it
        f[fmt.shard_features_path("embedding")][5, 0] += 1.0
    with pytest.raises(
        CacheCorruptError,
        match=rf"shard file '{segment}' of toy/embedding is corrupt: the SHA-256 of layer "
        rf"'embedding' is \w+…, the commit log records \w+…; delete '{segment}' and re-run",
    ):
        open_cache(path).verify()


def test_a_reader_listing_shards_as_they_are_compacted_reads_the_segment(tmp_path, monkeypatch):
    """The reader listed the shard files; compaction deletes them before it reads: the
    reader finds one gone, reads the log again, and takes the segment."""
    path = _cache(tmp_path / "c.h5")
    expected = _reads(path)
    cache = open_cache(path)
    original, calls = folder_module.read_layer, []

    def compacting_first(shards, *args, **kwargs):
        calls.append(len(shards))
        if len(calls) == 1:
            Store(path).compact("toy")
        return original(shards, *args, **kwargs)

    monkeypatch.setattr(folder_module, "read_layer", compacting_first)
    X, rows = cache.load_rows("toy", "embedding")
    assert calls == [45, 1]
    assert X.tobytes() == expected["embedding"][0].tobytes()
    assert rows.tolist() == expected["embedding"][1].tolist()


@pytest.mark.parametrize("step", ["write", "log", "delete"])
def test_a_crash_at_each_step_reads_the_same_and_the_next_writer_finishes(
    tmp_path, monkeypatch, step
):
    """Crash before the segment is logged, after it is logged, and halfway through deleting
    the files it replaces: readers read the same numbers, the next writer cleans up."""
    path = _cache(tmp_path / "c.h5")
    expected = _reads(path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    if step == "write":
        monkeypatch.setattr(compact_module, "append_log", crash)
    elif step == "log":
        monkeypatch.setattr(compact_module, "remove_replaced", lambda _, files: files and crash())
    else:
        original = compact_module.remove_replaced
        monkeypatch.setattr(
            compact_module,
            "remove_replaced",
            lambda base, files: files and (original(base, files[:20]) or crash()),
        )
    with pytest.raises(KeyboardInterrupt):
        Store(path).compact("toy")
    files = _files(path)
    assert "segment-000000-000044.h5" in files
    assert len(files) == {"write": 46, "log": 46, "delete": 26}[step]
    _assert_same(_reads(path), expected)
    monkeypatch.undo()
    Store(path).compact("toy")
    assert _files(path) == ["segment-000000-000044.h5"]
    _assert_same(_reads(path), expected)


_CHILD = """
import sys
import featurecache.cache._compact as c
from featurecache.cache import Store
c.SEGMENT_BYTES = int(sys.argv[2])
print("ready", flush=True)
Store(sys.argv[1]).compact("toy")
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_of_compaction_then_resume(tmp_path):
    """A compacting process killed at a random moment: the cache reads as the uncompacted one
    did, and a resumed compaction completes and cleans up. Eight independent kills, spread
    over the time a compaction takes on this machine."""
    pristine = _cache(tmp_path / "pristine" / "c.h5")
    expected = _reads(pristine)
    size = max(p.stat().st_size for p in fmt.model_dir(pristine, "toy").rglob("shard-*.h5"))
    n_shards = len(_files(pristine))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def compact(path, kill_after=None):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(3 * size)], stdout=subprocess.PIPE,
            env=env, text=True,
        )  # fmt: skip
        assert child.stdout.readline().strip() == "ready"
        began = time.monotonic()
        if kill_after is not None:
            time.sleep(kill_after)
            child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        return time.monotonic() - began

    def copy(name):
        shutil.copytree(pristine.parent, tmp_path / name)
        return tmp_path / name / pristine.name

    duration = compact(copy("timed"))
    rng = np.random.default_rng(0)
    states = set()
    for k in range(8):
        path = copy(f"killed-{k}")
        compact(path, kill_after=float(rng.uniform(0.0, duration)))
        files = _files(path)
        states.add((sum(n.startswith("shard-") for n in files), any(".tmp-" in n for n in files)))
        _assert_same(_reads(path), expected)
        compact(path)  # the resume
        files = _files(path)
        listed = [os.path.basename(m.file) for m in read_log(fmt.commit_log(path, "toy"))]
        assert files == sorted(listed) and len(files) < 20, files  # no litter, no replaced file
        _assert_same(_reads(path), expected)
    mid = [(shards, tmp) for shards, tmp in states if tmp or 0 < shards < n_shards]
    assert mid, f"no kill fell inside a compaction: {sorted(states)}"


def test_a_window_of_a_segment_reads_its_chunks_and_the_segment_is_verified_whole(
    tmp_path, monkeypatch
):
    """A streamed window reads the chunks around its rows, not the whole segment; the first
    read still checks the segment's digest over every chunk, so damage anywhere is seen."""
    path = write_cache(
        tmp_path / "c.h5", layers=[("wide", 64, 0.5)], n_per_class={"train": 4000, "test": 1000}
    )
    (meta,) = read_log(fmt.commit_log(path, "toy"))
    assert len(meta.chunks["wide"]) >= 3, "a segment of several chunks"
    X_all, rows_all = open_cache(path).load_rows("toy", "wide")
    window = np.zeros(open_cache(path).n_samples, bool)
    window[5000:5100] = True

    read = []
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, at: read.append(at) or preadv(fd, bufs, at))
    monkeypatch.setattr(folder_module, "_VERIFIED", {})
    X, rows = open_cache(path).load_rows("toy", "wide", window)
    assert np.array_equal(rows, rows_all[np.isin(rows_all, np.flatnonzero(window))])
    assert np.array_equal(X, X_all[np.isin(rows_all, rows)])
    assert 0 < len(read) < len(meta.chunks["wide"]), "only the window's chunks were read"

    # One byte changed in the last chunk, far from the window: the first read refuses.
    offset, size, _ = meta.chunks["wide"][-1]
    segment = path.parent / meta.file
    with open(segment, "r+b") as handle:
        handle.seek(offset + 8)
        byte = handle.read(1)
        handle.seek(offset + 8)
        handle.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(folder_module, "_VERIFIED", {})
    with pytest.raises(CacheCorruptError, match="is corrupt: the digest of layer 'wide'"):
        open_cache(path).load_rows("toy", "wide", window)
