"""Item 4: running out of disk is a clean, actionable error; the cache stays as it was.

A full disk is simulated with ``RLIMIT_FSIZE`` in the child process (SIGXFSZ ignored),
so every write past the limit fails with EFBIG as a full disk fails with ENOSPC. The
limit is placed so that the first file of the run that does not fit is the sample table
(a new cache), a shard file, or the index. Each time: ``OutOfSpaceError`` with its
message (exit code 1 and one line from the CLI), no temporary file left, every file of
the cache from before the run byte-identical, and nothing lost: a re-run without the
limit resumes and completes.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from _workers import (
    make_images,
    outcome,
    read_layers,
    run_cli,
    run_extract,
    run_options,
    snapshot,
    start,
    temporaries,
)

from featurecache.cache import _format as fmt
from pipelines import open_cache

pytestmark = pytest.mark.slow

BASE = {"layers": ["layer1"], "options": run_options(shard_size=4, batch_size=4)}
MORE = {**BASE, "layers": ["layer4"]}
HINT = (
    "nothing of it was committed and the cache is as it was. Free space (or raise the file "
    "size limit) and re-run the same command to resume, or put the cache on a larger disk."
)


def _run(data, cache, arguments, result, fsize=None) -> dict:
    child = start(run_extract, data, cache, arguments, result, fsize=fsize)
    child.join()
    return {"exitcode": child.exitcode, **(outcome(result) or {})}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A cache with layer1 of 8 images (2 shards), and the same cache with layer4 added."""
    root = tmp_path_factory.mktemp("disk")
    data = make_images(root / "data", n_per_class=4)
    cache = root / "base" / "c.h5"
    cache.parent.mkdir()
    assert _run(data, cache, BASE, root / "base.json")["exitcode"] == 0
    full = root / "full" / "c.h5"
    shutil.copytree(cache.parent, full.parent)
    assert _run(data, full, MORE, root / "full.json")["exitcode"] == 0
    return data, cache, full


def _copy(cache, tmp_path):
    shutil.copytree(cache.parent, tmp_path / "cache")
    return tmp_path / "cache" / "c.h5"


def test_full_disk_while_writing_a_shard_from_the_cli(base, tmp_path):
    data, base_cache, full = base
    cache = _copy(base_cache, tmp_path)
    before = snapshot(cache.parent)
    argv = [
        "extract", str(data), "--cache", str(cache), "--model", "resnet18", "--weights", "none",
        "--layers", "layer4", "--image-size", "32", "--dtype", "float32", "--device", "cpu",
        "--workers", "0", "--shard-size", "4", "--batch-size", "4", "--no-progress",
    ]  # fmt: skip
    child = start(run_cli, argv, tmp_path / "cli.json", fsize=4096)
    child.join()
    result = outcome(tmp_path / "cli.json")
    assert child.exitcode == result["code"] == 1
    assert result["stderr"].count("\n") == 1, result["stderr"]
    assert result["stderr"].startswith(
        f"featurecache: error: out of disk space while writing '{cache.parent}/c.h5.d/resnet18/"
    )
    assert "/shard-000000.h5'; " + HINT in result["stderr"]

    assert snapshot(cache.parent) == before and not temporaries(tmp_path)
    cached = open_cache(cache)
    assert [e.layer for e in cached.entries] == ["layer1"]
    cached.verify()

    assert _run(data, cache, MORE, tmp_path / "again.json")["n_ok"] == 8  # nothing lost
    assert_same_features(cache, full, ["layer1", "layer4"])


def test_full_disk_while_writing_the_index_keeps_the_old_index(base, tmp_path):
    """The shards fit under the limit, their segment and the index (written at the end of
    the run) do not: both shards are committed (their lines appended to the model's log)
    and stay uncompacted, the old index stays in place, readers see every committed row
    through the folder, and the re-run writes the index without computing anything."""
    data, base_cache, full = base
    segment = max(p.stat().st_size for p in full.parent.glob("c.h5.d/*/p-*/segment-*.h5"))
    limit = min(segment, full.stat().st_size) - 1  # a shard file is smaller than both
    cache = _copy(base_cache, tmp_path)
    before = snapshot(cache.parent)
    log = cache.parent / "c.h5.d" / "resnet18" / "commits.jsonl"
    logged = log.read_bytes()
    before_runs = (cache.parent / "c.h5.d" / "resnet18" / "runs.jsonl").read_text().count("\n")

    result = _run(data, cache, MORE, tmp_path / "r.json", fsize=limit)
    assert result["exitcode"] == 1 and result["error"] == "OutOfSpaceError"
    assert result["message"] == f"out of disk space while writing '{cache}'; " + HINT
    after = snapshot(cache.parent)
    new = sorted(set(after) - set(before))
    grown = log.read_bytes()  # the log only grew, by the two committed shards' lines
    assert grown.startswith(logged) and grown[len(logged) :].count(b"\n") == 2
    # The log grew, the record of the model's layers gained layer4 (it has commits now), and
    # the run log its line (written before the index, so that the index carries it).
    grew = ("commits.jsonl", "layers.json", "runs.jsonl")
    runs = cache.parent / "c.h5.d" / "resnet18" / "runs.jsonl"
    assert runs.read_text().count("\n") == 1 + before_runs
    unchanged = {k: after[k] for k in before if not k.endswith(grew)}
    assert unchanged == {k: v for k, v in before.items() if not k.endswith(grew)}
    layers = json.loads(fmt.layers_file(cache, "resnet18").read_text())
    assert sorted(layers) == ["layer1", "layer4"]
    assert not temporaries(tmp_path)
    assert [name.rsplit("/", 1)[1] for name in new] == ["shard-000000.h5", "shard-000001.h5"]
    assert [e.layer for e in open_cache(cache).entries] == ["layer1", "layer4"]
    with h5py.File(cache, "r") as f:  # plain h5py: the old index, as it was
        assert fmt.features_path("resnet18", "layer4") not in f

    result = _run(data, cache, MORE, tmp_path / "again.json")
    assert (result["shards_written"], result["n_ok"]) == (0, 8)  # nothing computed again
    assert_same_features(cache, full, ["layer1", "layer4"])


def test_full_disk_on_a_new_cache_leaves_no_file(base, tmp_path):
    data, _, full = base
    cache = tmp_path / "new" / "c.h5"
    cache.parent.mkdir()
    result = _run(data, cache, BASE, tmp_path / "r.json", fsize=2048)
    assert result["exitcode"] == 1 and result["error"] == "OutOfSpaceError"
    assert result["message"] == (
        f"out of disk space while writing '{cache.parent}/c.h5.d/samples.h5'; " + HINT
    )
    assert snapshot(cache.parent, skip_locks=False) == {}  # no file at all, temporary or not
    assert _run(data, cache, BASE, tmp_path / "again.json")["n_ok"] == 8
    assert_same_features(cache, full, ["layer1"])


def assert_same_features(cache, reference, layers) -> None:
    got, expected = (
        read_layers(cache, "resnet18", layers),
        read_layers(reference, "resnet18", layers),
    )
    for layer in layers:
        assert np.array_equal(got[layer][1], expected[layer][1]), layer
        assert got[layer][0].tobytes() == expected[layer][0].tobytes(), layer
