"""Item 1 (and 9): SIGKILL at random moments never loses or corrupts a committed row.

The extractor runs in a child process and is killed with SIGKILL again and again over
one extraction, at moments drawn from a seeded RNG: at random times during start-up and
computation, and at random times inside the windows where a shard file or the index is
being written (a pause before each fsync widens those windows; the index is written at
the end of a run). After every kill the cache is opened with the public reader, which
takes the cache's folder and commit logs: every row it reports done equals an
uninterrupted run bit for bit, the layers of one pass are done together, no row reported
done before is lost, and every committed shard matches its SHA-256. A final resume
equals the uninterrupted run exactly, through plain h5py on the rebuilt index too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import h5py
import numpy as np
import pytest
from _workers import (
    make_images,
    outcome,
    read_layers,
    run_extract,
    run_options,
    start,
    temporaries,
)

from featurecache.cache import _format as fmt
from featurecache.cache._writer import Store
from pipelines import open_cache

pytestmark = pytest.mark.slow

MODEL = "resnet18"
LAYERS = ["layer2", "embedding"]
OPTIONS = dict(layers=LAYERS, options=run_options(shard_size=2, batch_size=1))
N_ROWS = 48  # 24 shards of 2 rows
PAUSE = 0.05  # seconds before each fsync and in each forward pass of a child that gets killed


def _wait_for(condition, process, timeout: float = 60.0) -> None:
    """Poll ``condition`` every 2 ms until it holds; fail if the child exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if not process.is_alive():
            raise AssertionError(f"the child exited ({process.exitcode}) before the kill point")
        time.sleep(0.002)
    raise AssertionError(f"the child did not reach the kill point within {timeout:.0f}s")


def _committed(cache, reference: dict, before: np.ndarray) -> np.ndarray:
    """Check what a reader sees now; return the rows reported done."""
    if not fmt.samples_file(cache).exists():
        assert not before.any(), "the sample table disappeared after rows were reported done"
        return before
    reader = open_cache(cache)  # the folder is the truth, whatever state the index is in
    by_layer = {}
    for layer in LAYERS:
        if MODEL not in reader.models or layer not in reader.layers(MODEL):
            by_layer[layer] = np.zeros(N_ROWS, dtype=bool)
            continue
        X, rows = reader.load_rows(MODEL, layer)
        assert X.tobytes() == reference[layer][0][rows].tobytes(), f"{layer}: not bit-identical"
        by_layer[layer] = np.isin(np.arange(N_ROWS), rows)
    done = by_layer[LAYERS[0]]
    for layer, rows_done in by_layer.items():
        assert np.array_equal(rows_done, done), f"{layer}: layers of one pass commit together"
    assert not (before & ~done).any(), "a row reported done before the kill was lost"
    reader.verify()  # every committed shard matches the SHA-256 its log line records
    return done


@pytest.mark.parametrize(
    ("env", "n_kills"),
    [({}, 12), ({"FEATURECACHE_NO_LOCKING": "1"}, 6)],
    ids=["locking", "no-locking"],
)
def test_sigkill_at_random_moments_keeps_every_reported_row(tmp_path, env, n_kills):
    data = make_images(tmp_path / "data", n_per_class=N_ROWS // 2)
    reference_cache = tmp_path / "reference" / "c.h5"
    reference_cache.parent.mkdir()
    child = start(run_extract, data, reference_cache, OPTIONS, env=env)
    child.join()
    assert child.exitcode == 0
    reference = read_layers(reference_cache, MODEL, LAYERS)

    folder = tmp_path / "killed"
    folder.mkdir()
    cache = folder / "c.h5"
    rng = np.random.default_rng(1234)
    done = np.zeros(N_ROWS, dtype=bool)
    left_temporary = left_unlisted = partial = 0
    patterns = {"shard": "c.h5.d/*/p-*/shard-*.tmp-*", "index": "c.h5.tmp-*"}
    # "any": any moment of computing (forward passes, shard writes, index rebuilds);
    # "shard": while a shard file is written but not yet renamed into place;
    # "index": while the index is rebuilt at the end of the run (every shard is committed,
    # the index not yet replaced): the last kill.
    modes = ["start"] + [("any", "shard")[i % 2] for i in range(n_kills - 2)] + ["index"]
    for i, mode in enumerate(modes):
        events = tmp_path / f"events-{i}"
        events.mkdir()
        result = events / "result.json"
        child = start(
            run_extract, data, cache, OPTIONS, result, env=env, pause=PAUSE, events=events
        )
        mine = f"-{child.pid}-"  # temporaries are named host-pid-random
        if mode == "start":  # start-up: sample table, configuration, the first shards
            time.sleep(rng.uniform(0.2, 1.5))
        else:
            _wait_for(lambda e=events: (e / "forward").exists(), child)
            time.sleep(rng.uniform(0.0, 0.6))
        if mode in patterns:
            pattern = patterns[mode]
            _wait_for(lambda p=pattern, m=mine: any(m in t.name for t in folder.glob(p)), child)
            time.sleep(rng.uniform(0.0, 0.02))
        with contextlib.suppress(ProcessLookupError):  # checked below: it must not finish
            os.kill(child.pid, signal.SIGKILL)
        child.join()
        child.close()
        assert outcome(result) is None, f"kill {i} ({mode}): the extraction finished first"
        left_temporary += any(mine in t.name for t in temporaries(folder))
        done = _committed(cache, reference, done)
        left_unlisted += done.any() and not Store(cache).index_is_current()
        partial += 0 < done.sum() < N_ROWS

    assert len(modes) == n_kills
    assert partial >= 1, "the kills should land in the middle of the extraction"
    assert left_temporary >= 1, "no kill landed while a file was being written"
    assert left_unlisted >= 1, "no kill left committed shards that the index does not list"

    child = start(run_extract, data, cache, OPTIONS, tmp_path / "resume.json", env=env)
    child.join()
    assert child.exitcode == 0 and outcome(tmp_path / "resume.json")["n_ok"] == N_ROWS
    final = read_layers(cache, MODEL, LAYERS)
    for layer in LAYERS:
        assert final[layer][0].tobytes() == reference[layer][0].tobytes(), layer
        assert (final[layer][1] == 1).all()
    assert not temporaries(folder), "the resumed run removes what the killed ones left"
    assert Store(cache).index_is_current()
    with h5py.File(cache, "r") as f:
        listed = set(f[fmt.shards_path(MODEL, "file")].asstr()[:])
    on_disk = {str(p.relative_to(folder)) for p in folder.glob("c.h5.d/*/p-*/*.h5")}
    assert listed == on_disk
    names = sorted(p.rsplit("/", 1)[1] for p in on_disk)
    if not env:  # the run's end compacted every shard into one segment
        assert names == [f"segment-000000-{N_ROWS // 2 - 1:06d}.h5"]
    else:  # without locks another writer may be reading them: the shards stay
        assert names and all(name.startswith("shard-") for name in names)


def test_ls_after_a_kill_before_the_first_commit_shows_every_sample_pending(tmp_path, capsys):
    """Killed inside its first forward pass: no shard committed, no index written. The
    cache is visible from its first second: ``ls`` lists the samples, and for every layer
    0 ok and all of them pending."""
    from featurecache.app.cli import main

    data = make_images(tmp_path / "data", n_per_class=N_ROWS // 2)
    cache = tmp_path / "c.h5"
    events = tmp_path / "events"
    events.mkdir()
    child = start(run_extract, data, cache, OPTIONS, stall=True, events=events)
    _wait_for(lambda: (events / "forward").exists(), child)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not cache.exists(), "the index is written at the first commit at the earliest"
    assert not list(fmt.data_dir(cache).glob(f"*/{fmt.SHARD_GLOB}"))

    capsys.readouterr()
    assert main(["ls", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{cache}: {N_ROWS} samples ((none) {N_ROWS}), 2 classes\n"), out
    rows = [
        line.split() for line in out.splitlines() if line.split()[:1] in (["layer2"], ["embedding"])
    ]
    assert rows == [
        [layer, str(n), "float32", "0", "0", str(N_ROWS)]
        for layer, n in (("layer2", 128), ("embedding", 512))
    ], out

    assert main(["ls", str(cache), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["n_samples"] == N_ROWS
    assert {(e["layer"], e["n_ok"], e["n_pending"]) for e in listed["entries"]} == {
        ("layer2", 0, N_ROWS),
        ("embedding", 0, N_ROWS),
    }
