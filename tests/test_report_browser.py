"""report.html in a real browser: every image loads, no script or console errors."""

from __future__ import annotations

import pytest
from _browser import browser, render
from _synthetic import write_cache

import pipelines

pytestmark = pytest.mark.skipif(
    browser() is None,
    reason="no headless Chromium on this machine (Debian: apt-get install chromium; "
    "`make test` installs it where it can)",
)


def test_report_html_renders_in_chromium(tmp_path):
    cache = write_cache(tmp_path / "c.h5", models=("a", "b"), n_per_class={"train": 20, "test": 10})
    grid = {"logreg": {"C": [0.1]}, "ridge": {"alpha": [0.1, 10.0]}}
    pipelines.fit(cache, tmp_path / "results", heads=["logreg", "ridge"], grid=grid, cv=3)
    out = pipelines.report(tmp_path / "results", tmp_path / "report")
    seen = render(out / "report.html", tmp_path)
    assert seen["errors"] == []
    assert len(seen["images"]) >= 4
    broken = [i for i in seen["images"] if not i["complete"] or i["width"] == 0]
    assert broken == []
