"""Datasets that grow and change: only new samples are computed, nothing old is touched."""

from __future__ import annotations

import logging
import shutil

import h5py
import numpy as np
import pytest
from _workers import make_images, one_torch_thread, read_layers, run_options

import pipelines
from featurecache import extract, open_cache
from featurecache.app.cli import main
from featurecache.cache import STATE_REMOVED
from featurecache.cache import _format as fmt
from featurecache.engines._runner import ShardRunner
from featurecache.exceptions import DatasetChangedError

ARGS = dict(
    model="resnet18", weights="none", layers=["layer2", "embedding"], image_size=32,
    dtype="float32",
)  # fmt: skip
LAYERS = ARGS["layers"]


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


def _dataset(root, n_train=8, n_test=3, seed=0):
    make_images(root / "train", n_per_class=n_train, seed=seed)
    make_images(root / "test", n_per_class=n_test, seed=seed + 1)
    return root


def _extract(data, cache, **changes):
    with one_torch_thread():
        return extract(data, cache, **{**ARGS, **changes}, options=run_options(shard_size=8))


def _by_id(cache, layer):
    X, _, ids = open_cache(cache).load("resnet18", layer)
    return dict(zip(ids.tolist(), X, strict=True))


def test_ten_added_and_three_removed_compute_only_the_ten(tmp_path, rows_computed, capsys):
    data = _dataset(tmp_path / "data")
    cache = tmp_path / "c.h5"
    first = _extract(data, cache)
    assert first.n_ok == 22
    before = {layer: _by_id(cache, layer) for layer in LAYERS}
    removed = sorted((data / "train" / "ant").glob("*.png"))[:3]
    for path in removed:
        path.unlink()
    make_images(data / "extra", n_per_class=5, seed=9)  # 10 new images, moved into train/
    for path in sorted((data / "extra").rglob("*.png")):
        path.rename(data / "train" / path.parent.name / f"new-{path.name}")
    shutil.rmtree(data / "extra")
    rows_computed.clear()

    second = _extract(data, cache)

    assert len(rows_computed) == 10 and min(rows_computed) == 22  # appended rows only
    assert second.rows_computed == 10
    reader = open_cache(cache)
    gone = {p.relative_to(data).as_posix() for p in removed}
    assert int(reader.removed.sum()) == 3 and set(reader.ids[reader.removed]) == gone
    for layer in LAYERS:
        after = _by_id(cache, layer)
        assert not gone & set(after), "a reader returned a removed sample"
        assert len(after) == 22 - 3 + 10
        for sample_id, x in before[layer].items():
            if sample_id not in gone:
                assert after[sample_id].tobytes() == x.tobytes(), sample_id
    entry = reader.entry("resnet18", "embedding")
    assert (entry.n_ok, entry.n_pending, entry.n_removed) == (29, 0, 3)
    assert main(["ls", str(cache)]) == 0
    assert "3 removed" in capsys.readouterr().out.splitlines()[0]
    plain = read_layers(cache, "resnet18", LAYERS)  # plain h5py: aligned and full length
    with h5py.File(cache, "r") as f:
        assert len(f[fmt.sample_path("ids")]) == len(plain["embedding"][0]) == 32
        assert (f[fmt.sample_path("state")][:] == STATE_REMOVED).sum() == 3


def test_files_moved_between_class_folders_are_relabelled_without_recomputing(
    tmp_path, rows_computed, caplog
):
    data = _dataset(tmp_path / "data")
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    results = tmp_path / "results"
    pipelines.fit(cache, results, heads=["logreg"], grid={"logreg": {"C": [1.0]}}, cv=2)
    before = _by_id(cache, "embedding")
    moved = sorted((data / "train" / "ant").glob("*.png"))[:2]
    (data / "train" / "bee" / "moved").mkdir()
    for path in moved:  # same name, size and mtime; bee/ has files of the same names
        shutil.move(path, data / "train" / "bee" / "moved" / path.name)
    rows_computed.clear()

    again = _extract(data, cache)

    assert rows_computed == [] and again.rows_computed == 0
    reader = open_cache(cache)
    for path in moved:
        new_id = f"train/bee/moved/{path.name}"
        row = reader.ids.tolist().index(new_id)
        assert reader.class_names[reader.labels[row]] == "bee"
        old_id = path.relative_to(data).as_posix()
        assert _by_id(cache, "embedding")[new_id].tobytes() == before[old_id].tobytes()
    assert not reader.removed.any()
    with caplog.at_level(logging.WARNING, logger="pipelines.results._results"):
        table = pipelines.fit(cache, results, heads=["logreg"], grid={"logreg": {"C": [1.0]}}, cv=2)
    assert any("changed since" in r.getMessage() and "fitted again" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert len(table) == 2
    run = pipelines.results._results.ResultsFolder(results).read_run()
    assert run["samples_digest"] == reader.samples_digest


def test_frozen_samples_keeps_the_strict_refusal(tmp_path, rows_computed):
    data = _dataset(tmp_path / "data", n_train=3, n_test=1)
    cache = tmp_path / "c.h5"
    _extract(data, cache)
    make_images(data / "train", n_per_class=4, seed=7)  # 3 rewritten, 1 more per class
    before = {p: p.read_bytes() for p in tmp_path.glob("c.h5.d/**/*") if p.is_file()}
    rows_computed.clear()
    with pytest.raises(
        DatasetChangedError,
        match=r"has 6 changed content, 2 new samples compared with the cache .*frozen",
    ):
        _extract(data, cache, frozen_samples=True)
    assert rows_computed == []
    assert {p: p.read_bytes() for p in tmp_path.glob("c.h5.d/**/*") if p.is_file()} == before


def test_sigkill_while_appending_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Kill a growing extraction at random moments; the resumed cache equals a clean one."""
    import contextlib
    import os
    import signal
    import time

    from _workers import outcome, run_extract, start

    options = dict(layers=LAYERS, options=run_options(shard_size=2, batch_size=1))
    data = _dataset(tmp_path / "data", n_train=4, n_test=1)
    grown = tmp_path / "grown"
    caches = {}
    for name in ("reference", "killed"):
        caches[name] = tmp_path / name / "c.h5"
        caches[name].parent.mkdir()
        child = start(run_extract, data, caches[name], options)
        child.join()
        assert child.exitcode == 0
    shutil.copytree(data, grown)
    make_images(grown / "train" / "more", n_per_class=6, seed=5)  # 12 new images...
    for path in sorted((grown / "train" / "more").rglob("*.png")):
        path.rename(grown / "train" / path.parent.name / f"more-{path.name}")
    shutil.rmtree(grown / "train" / "more")
    originals = [
        p for p in sorted((grown / "train" / "bee").glob("*.png")) if "more-" not in p.name
    ]
    for path in originals[:2]:
        path.unlink()  # ...and 2 removed
    child = start(run_extract, grown, caches["reference"], options)
    child.join()
    assert child.exitcode == 0 and outcome_rows(caches["reference"]) == 20

    rng = np.random.default_rng(3)
    for kill in range(4):
        events = tmp_path / f"events-{kill}"
        events.mkdir()
        result = events / "result.json"
        child = start(run_extract, grown, caches["killed"], options, result, pause=0.05,
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
            break  # it finished before this kill: nothing left to interrupt
    child = start(run_extract, grown, caches["killed"], options)
    child.join()
    assert child.exitcode == 0
    reference, killed = open_cache(caches["reference"]), open_cache(caches["killed"])
    assert killed.ids.tolist() == reference.ids.tolist()
    assert killed.removed.tolist() == reference.removed.tolist()
    for layer in LAYERS:
        got, want = killed.load("resnet18", layer), reference.load("resnet18", layer)
        assert got[2].tolist() == want[2].tolist() and got[0].tobytes() == want[0].tobytes()
    plain = read_layers(caches["killed"], "resnet18", LAYERS)  # the index after the resume
    assert plain["embedding"][0].shape[0] == len(reference.ids)


def outcome_rows(cache) -> int:
    return int((~open_cache(cache).removed).sum())
