"""Items 3 and 9: concurrent writers and readers of one cache, with and without locks.

Writers run in child processes, started together so that they race for the sample
table, the model folders and every index rebuild (a pause in each forward pass and
before each fsync keeps them overlapping). Nothing lost means: after the run every row
of every model is status 1, bit-identical to a run alone, and listed in the index.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time

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

from featurecache.app.cli import main
from featurecache.cache import _format as fmt
from featurecache.cache._writer import Store
from pipelines import open_cache

pytestmark = pytest.mark.slow

N_ROWS = 12
OPTIONS = {
    "resnet18": {"model": "resnet18", "layers": ["layer3", "embedding"]},
    "mobilenet_v3_small": {"model": "mobilenet_v3_small", "layers": ["features.3", "embedding"]},
}
for _arguments in OPTIONS.values():
    _arguments.update(options=run_options(shard_size=2, batch_size=2))
NO_LOCKING = {"FEATURECACHE_NO_LOCKING": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), n_per_class=N_ROWS // 2)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Each model extracted alone, one after the other."""
    cache = tmp_path_factory.mktemp("reference") / "c.h5"
    for arguments in OPTIONS.values():
        child = start(run_extract, data, cache, arguments)
        child.join()
        assert child.exitcode == 0
    return {model: read_layers(cache, model, o["layers"]) for model, o in OPTIONS.items()}


def _writers(data, cache, models, tmp_path, env=None, pause=0.02):
    """Start one writer per entry of ``models`` at once; return their processes and folders."""
    runs = []
    for i, model in enumerate(models):
        events = tmp_path / f"writer-{i}"
        events.mkdir()
        process = start(
            run_extract, data, cache, OPTIONS[model], events / "result.json",
            env=env, pause=pause, events=events,
        )  # fmt: skip
        runs.append((process, events))
    for process, _ in runs:
        process.join()
    return runs


def assert_complete(cache, reference, models) -> None:
    """Every row of every model is ok and equals the run alone; the index lists every shard."""
    for model in models:
        got = read_layers(cache, model, OPTIONS[model]["layers"])
        for layer, (X, status) in got.items():
            assert (status == 1).all(), (model, layer)
            assert X.tobytes() == reference[model][layer][0].tobytes(), (model, layer)
    assert Store(cache).index_is_current(), "a shard on disk is missing from the index"
    assert not temporaries(cache.parent)
    open_cache(cache).verify()


@pytest.mark.parametrize("env", [None, NO_LOCKING], ids=["locking", "no-locking"])
def test_writers_of_different_models_at_once_lose_nothing(data, reference, tmp_path, env):
    cache = tmp_path / "c.h5"
    # Commits cost little now: a long pause in each forward pass keeps both writers running
    # long after the slower one starts, so they overlap even on a loaded machine.
    runs = _writers(data, cache, list(OPTIONS), tmp_path, env=env, pause=0.6)
    for process, events in runs:
        assert process.exitcode == 0 and outcome(events / "result.json")["n_ok"] == N_ROWS
    started = [(e / "forward").stat().st_mtime for _, e in runs]
    finished = [(e / "result.json").stat().st_mtime for _, e in runs]
    assert started[0] < finished[1] and started[1] < finished[0], "the writers did not overlap"
    assert_complete(cache, reference, OPTIONS)


@pytest.mark.parametrize("env", [None, NO_LOCKING], ids=["locking", "no-locking"])
def test_writers_of_the_same_model_at_once_lose_nothing(data, reference, tmp_path, env):
    """With locks the second writer exits with CacheLockedError unless the first is already
    done; without locks both compute, and a shard computed twice is the same file."""
    cache = tmp_path / "c.h5"
    runs = _writers(data, cache, ["resnet18", "resnet18"], tmp_path, env=env)
    results = [outcome(events / "result.json") for _, events in runs]
    ok = [r for r in results if "n_ok" in r]
    locked = [r for r in results if r.get("error") == "CacheLockedError"]
    assert ok and len(ok) + len(locked) == 2, results
    assert env is None or not locked, "without locks nobody waits"
    assert_complete(cache, reference, ["resnet18"])


def test_second_writer_of_a_locked_model_exits_with_one_line_and_writes_nothing(
    data, reference, tmp_path
):
    """Deterministic: the test holds the model's writer lock while the CLI runs."""
    cache = tmp_path / "c.h5"
    half = {**OPTIONS["resnet18"], "layers": ["layer3"]}  # a cache to protect: one layer done
    child = start(run_extract, data, cache, half)
    child.join()
    argv = [
        "extract", str(data), "--cache", str(cache), "--model", "resnet18", "--weights", "none",
        "--layers", "layer3,embedding", "--image-size", "32", "--dtype", "float32",
        "--device", "cpu", "--workers", "0", "--batch-size", "2", "--no-progress",
    ]  # fmt: skip
    with Store(cache).lock_model("resnet18"):
        before = snapshot(tmp_path)
        child = start(run_cli, argv, tmp_path / "cli.json")
        child.join()
        result = outcome(tmp_path / "cli.json")
        assert snapshot(tmp_path) == {**before, "cli.json": snapshot(tmp_path)["cli.json"]}
    assert child.exitcode == result["code"] == 1
    assert result["stderr"] == (
        f"featurecache: error: another process (pid {os.getpid()} on {socket.gethostname()}) "
        f"is writing model 'resnet18' into '{cache}'; wait for it to finish, or write under "
        "another model name (name=, or --name).\n"
    )
    assert not temporaries(tmp_path)
    child = start(run_cli, argv, tmp_path / "again.json")  # the lock is free again
    child.join()
    assert child.exitcode == 0, outcome(tmp_path / "again.json")
    assert_complete(cache, reference, ["resnet18"])


def test_readers_during_a_write_see_only_committed_rows(data, reference, tmp_path, capsys):
    """Plain h5py (once the index is written, at the end of the run), ``pipelines.open_cache``
    and ``featurecache ls`` (through the folder, from the moment the sample table exists) read
    the cache in a loop while a writer commits shard after shard."""
    cache = tmp_path / "c.h5"
    layers = OPTIONS["resnet18"]["layers"]
    expected = reference["resnet18"]
    writer = _start_writer(data, cache, tmp_path)
    seen: set[int] = set()
    listed = 0  # rows the index listed: it lags the logs, but never goes back
    while True:
        alive = writer.is_alive()
        if fmt.samples_file(cache).exists():
            in_index, counts = _read_everything(cache, expected, layers, capsys)
            assert min(counts) >= max(seen, default=0), "a row reported done went missing"
            assert min(in_index, default=listed) >= listed, "the index lost a listed row"
            assert max(in_index, default=0) <= min(counts), "the index lists an uncommitted row"
            listed = max(in_index, default=listed)
            seen.update(counts)
        if not alive:
            break
        time.sleep(0.005)
    writer.join()
    assert writer.exitcode == 0
    assert max(seen) == N_ROWS and len({n for n in seen if 0 < n < N_ROWS}) >= 2, seen
    assert_complete(cache, reference, ["resnet18"])


def _start_writer(data, cache, tmp_path):
    events = tmp_path / "writer"
    events.mkdir()
    return start(
        run_extract, data, cache, OPTIONS["resnet18"], events / "result.json",
        pause=0.05, events=events,
    )  # fmt: skip


def _read_everything(cache, expected, layers, capsys) -> list[int]:
    """Read the cache three ways, check every row shown; return the ok counts of the index
    (plain h5py, which lags the logs) and of the readers (the folder), in read order."""
    in_index, counts = [], []
    if cache.exists():  # the index, for plain h5py: written every few seconds and at the end
        with contextlib.suppress(KeyError):  # an index written before the model's first commit
            for layer, (X, status) in read_layers(cache, "resnet18", layers).items():
                done = status == 1
                assert set(np.unique(status).tolist()) <= {0, 1}
                assert X[done].tobytes() == expected[layer][0][done].tobytes(), layer
                assert np.isnan(X[~done]).all(), layer
                in_index.append(int(done.sum()))
    cached = open_cache(cache)
    row_of = {sample_id: row for row, sample_id in enumerate(cached.ids)}
    committed = cached.layers("resnet18") if "resnet18" in cached.models else []
    for layer in layers:
        if layer not in committed:
            counts.append(0)
            continue
        X, _, ids = cached.load("resnet18", layer)
        rows = [row_of[i] for i in ids]
        assert X.tobytes() == expected[layer][0][rows].tobytes(), layer
        counts.append(len(ids))
    assert main(["ls", str(cache)]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    listed = {row[0]: row for row in table if row and row[0] in layers}
    for layer in layers:
        n_ok, n_failed, n_pending = (
            (int(v) for v in listed[layer][3:6]) if layer in listed else (0, 0, N_ROWS)
        )
        assert n_failed == 0 and n_ok + n_pending == N_ROWS
        counts.append(n_ok)
    assert counts == sorted(counts), "a later read saw fewer rows than an earlier one"
    return in_index, counts


def test_without_locking_no_lock_is_ever_taken(data, reference, tmp_path):
    """Item 9 on a simulated file system without locks: every ``fcntl`` lock call fails with
    ENOLCK in the child, and this process holds exclusive locks on every file of the cache,
    so HDF5's own locking would fail too. With ``FEATURECACHE_NO_LOCKING=1`` extraction and
    ``featurecache ls`` still work; without it the error says what to do."""
    cache = tmp_path / "c.h5"
    child = start(run_extract, data, cache, {**OPTIONS["resnet18"], "layers": ["layer3"]})
    child.join()
    outcomes = {"nfs": _extract_outcome(data, cache, tmp_path / "nfs.json", deny_locks=True)}
    files = [cache, *sorted(tmp_path.glob("c.h5.d/**/*.h5"))]
    with contextlib.ExitStack() as stack:
        for path in files:
            fcntl.flock(stack.enter_context(open(path, "rb")), fcntl.LOCK_EX)
        outcomes["locked"] = _extract_outcome(data, cache, tmp_path / "locked.json")
        outcomes["unlocked"] = _extract_outcome(
            data, cache, tmp_path / "unlocked.json", env=NO_LOCKING, deny_locks=True
        )
        child = start(run_cli, ["ls", str(cache)], tmp_path / "ls.json", env=NO_LOCKING,
                      deny_locks=True)  # fmt: skip
        child.join()
    hint = (
        "on such file systems (NFS without locks, some FUSE mounts) turn locking off (locking=False, "
        "--no-locking, or FEATURECACHE_NO_LOCKING=1), and run one writer per model."
    )
    assert outcomes["nfs"] == {
        "error": "CacheLockedError",
        "message": f"the file system of '{cache}.d/resnet18/.writer.lock' refuses file locks "
        f"(No locks available): {hint}",
    }
    assert outcomes["locked"]["error"] == "CacheLockedError"
    assert outcomes["locked"]["message"].startswith(f"cannot lock '{cache}' (")
    assert outcomes["locked"]["message"].endswith(
        "another program holds it open for writing, or the file system refuses locks: " + hint
    )
    assert outcomes["unlocked"]["n_ok"] == N_ROWS
    ls = outcome(tmp_path / "ls.json")
    assert ls["code"] == 0 and f"{N_ROWS}" in ls["stdout"], ls
    assert_complete(cache, reference, ["resnet18"])


def _extract_outcome(data, cache, result, env=None, deny_locks=False) -> dict:
    child = start(run_extract, data, cache, OPTIONS["resnet18"], result, env=env,
                  deny_locks=deny_locks)  # fmt: skip
    child.join()
    return outcome(result)
