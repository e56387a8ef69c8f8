"""report.html in a real browser: every image loads, no script or console errors."""

from __future__ import annotations

import pytest
from _browser import browser, render
from _synthetic import write_folder_cache

import pipelines

pytestmark = pytest.mark.skipif(
    browser() is None,
    reason="no headless Chromium on this machine (Debian: apt-get install chromium; "
    "`make test` installs it where it can)",
)


def test_report_html_renders_in_chromium(tmp_path):
    """The richest report: depth-aligned backbones, learning curves, map and gallery."""
    cache = write_folder_cache(tmp_path)
    grid = {"logreg": {"C": [0.1]}, "ridge": {"alpha": [0.1, 10.0]}}
    pipelines.fit(cache, tmp_path / "results", heads=["logreg", "ridge"], grid=grid, cv=3,
                  shots="1,4,all", draws=2)  # fmt: skip
    out = pipelines.report(tmp_path / "results", tmp_path / "report")
    seen = render(out / "report.html", tmp_path)
    assert seen["errors"] == []
    assert len(seen["images"]) >= 7  # depth x2, heads, confusion, map, gallery, curve
    broken = [i for i in seen["images"] if not i["complete"] or i["width"] == 0]
    assert broken == []
