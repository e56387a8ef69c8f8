"""`report` on a results folder older than its cache warns, on stderr and in the report
(issue 19, example 6)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import pytest
from _synthetic import write_cache
from _workers import SETTINGS, make_images, one_torch_thread

import pipelines
from featurecache.app.cli import main
from featurecache.cache import _format as fmt

GRID = {"logreg": {"C": [0.1, 1.0]}}
LAYERS = [("a", 8, 2.0), ("b", 8, 1.0)]
TITLE = "## Warning: these results no longer match the cache"


def _fit(cache, out):
    return pipelines.fit(cache, out, heads=["logreg"], grid=GRID, cv=2, n_jobs=1)


def _replace(cache, **kwargs):
    """A new cache at the same path (what a user gets by extracting into it again)."""
    cache.unlink()
    shutil.rmtree(fmt.data_dir(cache), ignore_errors=True)
    return write_cache(cache, **{"layers": LAYERS, **kwargs})


def _report(results, out, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipelines.reporting._report"):
        pipelines.report(results, out)
    return (out / "report.md").read_text(), [r.getMessage() for r in caplog.records]


@pytest.fixture
def fitted(tmp_path):
    cache = write_cache(tmp_path / "c.h5", layers=LAYERS)
    _fit(cache, tmp_path / "results")
    return cache, tmp_path / "results"


def test_matching_results_say_nothing(fitted, tmp_path, caplog):
    _, results = fitted
    markdown, lines = _report(results, tmp_path / "report", caplog)
    assert "no longer matches" not in markdown and lines == []


def test_features_changed_under_the_same_samples(fitted, tmp_path, caplog):
    cache, results = fitted
    _replace(cache, layers=[("a", 8, 2.5), ("b", 8, 1.0)])  # same samples, other numbers in a
    markdown, lines = _report(results, tmp_path / "report", caplog)
    assert lines == [
        f"results folder {str(results)!r} no longer matches cache {str(cache.resolve())!r}: "
        "the features of toy/a changed since they were fitted. This report shows the results "
        f"as fitted; run `featurecache fit {cache.resolve()} --out {results}` to refit what "
        "changed, then report again."
    ]
    assert f"{TITLE}\n\n" in markdown and "the features of toy/a changed" in markdown


def test_a_grown_cache_is_named_with_its_counts(fitted, tmp_path, caplog):
    cache, results = fitted
    _replace(cache, n_per_class={"train": 24, "test": 10})
    markdown, lines = _report(results, tmp_path / "report", caplog)
    assert len(lines) == 1 and lines[0] in markdown
    assert "the sample table changed (samples digest " in lines[0]
    assert "the rows of toy/a changed (ok 90 → 102)" in lines[0]
    assert markdown.index(TITLE) < markdown.index("## Recommendation")


@pytest.mark.slow
def test_report_after_the_cache_grew_warns_on_stderr_and_in_the_report(tmp_path):
    """The example as a user meets it: extract, fit, extract more images, report."""
    from featurecache import extract

    data, cache = tmp_path / "data", tmp_path / "c.h5"
    for split, n in (("train", 6), ("test", 3)):
        make_images(data / split, n_per_class=n)
    settings = {**SETTINGS, "layers": ["embedding"]}
    with one_torch_thread():
        extract(data, cache, **settings)
    assert main(["fit", str(cache), "--out", str(tmp_path / "r"), "--heads", "logreg",
                 "--cv", "2", "--jobs", "1"]) == 0  # fmt: skip
    # Other pixels for the 6 train images of each class, and 4 new ones: 12 rows go stale.
    make_images(data / "train", n_per_class=10, seed=5)
    with one_torch_thread():
        extract(data, cache, **settings)
    done = subprocess.run(
        [sys.executable, "-m", "featurecache", "report", str(tmp_path / "r"), "--out",
         str(tmp_path / "report")], capture_output=True, text=True, check=True,
    )  # fmt: skip
    err = done.stderr.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("WARNING pipelines.reporting._report: results folder ")
    assert "the rows of resnet18/embedding changed (ok 18 → 26, stale 0 → 12)" in err[0]
    assert "the features of resnet18/embedding changed since they were fitted" in err[0]
    message = err[0].removeprefix("WARNING pipelines.reporting._report: ")
    assert message in (tmp_path / "report" / "report.md").read_text()
