"""The demo end to end on a reduced setting: real Lite0 weights, one layer, one head."""

from __future__ import annotations

import re

import pytest

from featurecache.cli import main


@pytest.mark.slow
def test_reduced_demo_writes_a_report_and_prints_the_summary(tmp_path, capsys):
    cache, out = tmp_path / "demo.h5", tmp_path / "report"
    argv = [
        "demo", "--limit", "100", "--layers", "blocks.4,embedding", "--heads", "logreg",
        "--image-size", "64", "--cache", str(cache), "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(
        r"best: backbone efficientnet_lite0, layer (blocks\.4|embedding), head logreg -> test accuracy 0\.\d{4}",
        printed,
    )
    assert re.search(r"earlier layer beat the penultimate one: (yes|no)", printed)
    assert f"report: {out / 'report.html'}" in printed
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "efficientnet_lite0" in (out / "report.md").read_text()
    # a second run is a cache hit: no forward pass, and the finished fits are reused
    assert main(argv) == 0
    assert "cache hit, no forward pass" in capsys.readouterr().out
