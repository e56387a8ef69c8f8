"""Issue 12, item 4: a partial cache is stated honestly, never fitted on silently.

An extraction is killed with SIGKILL twice: first while only the first class's rows are
done (every row of the second class pending), then further on, when both classes have rows
done. ``fit`` refuses each partial cache with the pending rows per split, counted here
independently through the public reader; with ``--allow-partial`` it refuses the first
(a class without training rows, named) and fits the second, and the report states the
ok, pending, failed and removed rows exactly.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from _synthetic import write_cache
from _workers import make_images, run_extract, run_options, start

from featurecache.app.cli import main
from featurecache.cache import _format as fmt
from featurecache.core._validation import AdviceError
from featurecache.exceptions import FeatureCacheError, InvalidArgumentError
from pipelines import fit, open_cache, report

pytestmark = pytest.mark.slow

N_PER_CLASS = 20
N = 2 * N_PER_CLASS
OPTIONS = dict(
    layers=["layer2", "embedding"],
    split="random:0.3",
    options=run_options(shard_size=2, batch_size=1),
)
FIT = ["--heads", "logreg", "--cv", "2", "--jobs", "1"]


def _n_ok(cache) -> int:
    with contextlib.suppress(FeatureCacheError, OSError, KeyError, ValueError):
        entries = [e for e in open_cache(cache).entries if e.layer == "embedding"]
        return entries[0].n_ok if entries else 0
    return 0


def _extract_until(data, cache, events, low: int) -> None:
    """Run an extraction in a child and SIGKILL it once ``low`` rows or more are done."""
    events.mkdir()
    child = start(run_extract, data, cache, OPTIONS, pause=0.1, events=events)
    deadline = time.monotonic() + 120
    while _n_ok(cache) < low and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGKILL)
    child.join()


def _copy(cache, to):
    """Copy the killed cache as it is: its index may not exist yet (it is written at the
    end of a run and at most every few seconds during it); readers take the folder."""
    shutil.copytree(cache.parent, to)
    return to / cache.name


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """Two copies of one killed extraction: ``early`` (only 'ant' rows done) and ``late``."""
    root = tmp_path_factory.mktemp("partial")
    data = make_images(root / "data", n_per_class=N_PER_CLASS)
    cache = root / "killed" / "c.h5"
    cache.parent.mkdir()
    _extract_until(data, cache, root / "events-1", low=6)
    early = _copy(cache, root / "early")
    _extract_until(data, cache, root / "events-2", low=N_PER_CLASS + 8)
    late = _copy(cache, root / "late")
    return {"early": early, "late": late}


def _pending_by_split(cache) -> tuple[int, dict[str, int]]:
    """Rows not done, counted from the reader's ok rows (not from fit's own counting)."""
    reader = open_cache(cache)
    _, rows = reader.load_rows("resnet18", "embedding")
    pending = ~np.isin(np.arange(reader.n_samples), rows)
    return int(pending.sum()), {
        split: int(np.sum(pending & (reader.splits == split))) for split in ("train", "test")
    }


@pytest.mark.parametrize("stage", ["early", "late"])
def test_fit_refuses_pending_rows_with_their_count_per_split(partial, tmp_path, capsys, stage):
    cache = partial[stage]
    n_pending, by_split = _pending_by_split(cache)
    assert 0 < n_pending < N, "the kill should land in the middle of the extraction"
    out = tmp_path / "results"
    code = main(["fit", str(cache), "--out", str(out), *FIT])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    counts = ", ".join(f"{split} {n}" for split, n in by_split.items() if n)
    assert (
        f"has pending rows, not extracted yet (an extraction still running or stopped): "
        f"resnet18 (layers layer2, embedding): {n_pending} of {N} rows ({counts})." in err
    ), err
    assert err.rstrip().endswith(
        "Finish the extraction (re-run the same `featurecache extract` command), or pass "
        "--allow-partial to fit on the rows done (the report states the counts)."
    ), err
    assert not out.exists()
    with pytest.raises(AdviceError, match=r"or pass allow_partial=True to fit on the rows"):
        fit(cache, out, heads=["logreg"], cv=2, n_jobs=1)
    assert not out.exists()


def test_pending_rows_that_leave_a_class_without_training_rows_name_it(partial, tmp_path, capsys):
    cache = partial["early"]
    reader = open_cache(cache)
    _, rows = reader.load_rows("resnet18", "embedding")
    assert set(reader.labels[rows].tolist()) == {0}, "only 'ant' rows should be done"
    n_train_bee = int(np.sum((reader.splits == "train") & (reader.labels == 1)))
    out = tmp_path / "results"
    code = main(["fit", str(cache), "--out", str(out), "--allow-partial", *FIT])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(
        rf"class 'bee' has no usable train rows in resnet18/layer2 of cache '.*c\.h5': its "
        rf"{n_train_bee} train rows are {n_train_bee} pending; a head cannot learn it\. Finish "
        r"the extraction \(re-run the same `featurecache extract` command\) first\.",
        err,
    ), err
    assert not out.exists()


def test_allow_partial_fits_and_the_report_states_every_count(partial, tmp_path, capsys):
    cache = partial["late"]
    n_pending, by_split = _pending_by_split(cache)
    out = tmp_path / "results"
    assert main(["fit", str(cache), "--out", str(out), "--allow-partial", *FIT]) == 0
    reader = open_cache(cache)
    _, rows = reader.load_rows("resnet18", "embedding")
    table = pd.read_csv(out / "results.csv")
    n_train_ok = int(np.sum(reader.splits[rows] == "train"))
    assert set(table["n_train"]) == {n_train_ok} and set(table["n_test"]) == {
        len(rows) - n_train_ok
    }
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    counts = ", ".join(f"{split} {n}" for split, n in by_split.items() if n)
    assert (
        f"resnet18 (layers layer2, embedding): {N - n_pending} of {N} rows ok, {n_pending} "
        f"pending ({counts}), 0 failed, 0 removed." in text
    ), text
    assert "**The cache was partial when fit ran**" in text
    capsys.readouterr()


def test_a_complete_cache_says_so(tmp_path):
    cache = write_cache(tmp_path / "c.h5", n_per_class={"train": 6, "test": 3})
    fit(cache, tmp_path / "r", layers=["informative"], heads=["logreg"], cv=2, n_jobs=1)
    text = (report(tmp_path / "r", tmp_path / "report") / "report.md").read_text()
    assert (
        "Rows: every sample was extracted for every model and layer fitted (27 ok of 27); "
        "0 failed, 0 pending, 0 removed." in text
    )


def _one_train_row_of_class_2(path) -> None:
    """Relabel every train row of class_2 but one as class_1."""
    with h5py.File(path, "r+") as f:
        labels = f[fmt.sample_path("labels")][:]
        codes = f[fmt.sample_path("splits")]
        splits = np.asarray(codes.attrs["names"]).astype(str)[codes[:]]
        rows = np.flatnonzero((splits == "train") & (labels == 2))
        labels[rows[1:]] = 1
        f[fmt.sample_path("labels")][:] = labels


def test_a_class_of_one_training_image_is_named_with_options_that_lead_somewhere(tmp_path):
    cache = write_cache(tmp_path / "c.h5", n_per_class={"train": 6, "test": 3})
    _one_train_row_of_class_2(cache)
    with pytest.raises(InvalidArgumentError) as error:
        fit(cache, tmp_path / "r", layers=["informative"], heads=["logreg"], cv=2, n_jobs=1)
    message = str(error.value)
    assert message.startswith("class 'class_2' has 1 usable train row in toy/informative")
    assert "fewer than 2 folds is impossible" in message
    assert (
        "add training images of 'class_2', leave the class out, or give the data a val" in message
    )
    assert "lower" not in message and "cv=" not in message
    assert not (tmp_path / "r").exists()


def test_too_many_folds_suggests_the_most_that_work(tmp_path, capsys):
    cache = write_cache(tmp_path / "c.h5", n_per_class={"train": 3, "test": 2})
    with pytest.raises(AdviceError, match=r"cv=5 needs at least 5 train rows per class; class "
                                          r"'class_0' has 3 usable train rows .* Use cv=3 "):  # fmt: skip
        fit(cache, tmp_path / "r", heads=["logreg"], cv=5, n_jobs=1)
    argv = ["fit", str(cache), "--out", str(tmp_path / "r"), "--cv", "5"]
    assert main(argv) == 2
    assert "--cv 5 needs at least 5 train rows" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
