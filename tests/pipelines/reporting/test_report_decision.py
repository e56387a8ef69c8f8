"""The report's decision sections: backbones compared by depth, the gallery, curves, cost."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from _synthetic import LAYOUT, write_cache
from _synthetic import write_folder_cache as _folder_cache

import pipelines


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("decision")
    cache = _folder_cache(root)
    grid = {"logreg": {"C": [0.01, 1.0]}, "ridge": {"alpha": [0.1, 10.0, 1000.0]}}
    pipelines.fit(cache, root / "results", heads=["logreg", "ridge"], grid=grid, cv=3,
                  shots="1,4,all", draws=2)  # fmt: skip
    out = pipelines.report(root / "results", root / "report")
    return root / "results", out


def _section(markdown: str, title: str) -> str:
    return markdown.split(title, 1)[1].split("\n## ", 1)[0]


def test_backbones_with_different_layer_names_are_compared_by_depth(report):
    results, out = report
    markdown = (out / "report.md").read_text()
    assert "](figures/depth_aligned.png)" in markdown and "heatmap.png" not in markdown
    assert (out / "figures" / "depth_aligned.png").stat().st_size > 1000
    table = pd.read_csv(results / "results.csv")
    section = _section(markdown, "## Model × layer")
    for model in LAYOUT:
        winner = pipelines.best(table[table["model"] == model])
        depth = dict((n, d) for n, d, _ in LAYOUT[model])[winner["layer"]]
        assert f"| {model} | {winner['layer']} | {depth:.2f} | {winner['head']} |" in section


def test_same_layer_names_keep_the_heatmap(tmp_path):
    cache = write_cache(tmp_path / "c.h5", models=("a", "b"))
    pipelines.fit(cache, tmp_path / "r", heads=["ridge"], cv=3)
    markdown = (pipelines.report(tmp_path / "r", tmp_path / "rep") / "report.md").read_text()
    assert "figures/heatmap.png" in markdown and "depth_aligned" not in markdown


def test_gallery_shows_images_that_really_are_misclassified(report):
    results, out = report
    markdown = (out / "report.md").read_text()
    section = _section(markdown, "### Most confidently wrong test images")
    assert "](figures/gallery.png)" in section
    shown = re.findall(r"^\| (c\d/img\d+\.png) \| (\S+) \| (\S+) \| ([0-9.]+) \|$", section, re.M)
    assert shown
    table = pd.read_csv(results / "results.csv")
    chosen = pipelines.best(table)
    predictions = pd.read_csv(results / chosen["predictions_file"]).set_index("id")
    for sample_id, true_class, predicted, confidence in shown:
        row = predictions.loc[sample_id]
        assert row["y_true"] != row["y_pred"]
        assert (row["true_class"], row["pred_class"]) == (true_class, predicted)
        assert float(confidence) == pytest.approx(row["confidence"], abs=5e-4)
    wrong = predictions[predictions["y_true"] != predictions["y_pred"]]
    top = wrong["confidence"].sort_values(ascending=False, kind="stable").head(len(shown))
    assert [float(c) for *_, c in shown] == pytest.approx(top.tolist(), abs=5e-4)


def test_report_has_curves_map_per_class_and_cost(report):
    _, out = report
    markdown = (out / "report.md").read_text()
    for name in ("learning_curve", "map_pca", "gallery"):
        assert f"](figures/{name}.png)" in markdown
    assert "## Learning curves" in markdown and "## Cost" in markdown
    assert "### Per-class accuracy" in markdown
    cost = _section(markdown, "## Cost")
    assert "predict s / 1,000" in cost and "not recorded" in cost
    html = (out / "report.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(
        re.findall(r"\]\(figures/\w+\.png\)", markdown)
    )


def test_a_grid_end_warning_reaches_the_report(tmp_path):
    cache = write_cache(tmp_path / "c.h5", models=("a",))
    grid = {"ridge": {"alpha": [1.0, 30.0, 1000.0]}}  # CV rises to the grid's end
    pipelines.fit(cache, tmp_path / "r", heads=["ridge"], grid=grid, cv=3, layers=["embedding"])
    markdown = (pipelines.report(tmp_path / "r", tmp_path / "rep") / "report.md").read_text()
    section = _section(markdown, "## Warnings")
    assert "| a | embedding | ridge | alpha=1000 is the highest value of the grid" in section


def test_a_cheaper_combination_within_the_spread_is_named():
    from pipelines.reporting._decisions import cheaper_text

    def row(layer, cv, width, fit, predict):
        return {"model": "m", "layer": layer, "head": "logreg", "cv_mean": cv, "cv_std": 0.02,
                "n_features": width, "fit_seconds": fit, "predict_seconds_per_1000": predict}  # fmt: skip

    best = row("embedding", 0.90, 1280, 10.0, 0.5)
    table = pd.DataFrame([best, row("blocks.9", 0.89, 320, 4.0, 0.2),
                          row("blocks.5", 0.85, 80, 1.0, 0.1),  # outside the spread
                          row("blocks.12", 0.895, 320, 12.0, 0.2)])  # fits slower  # fmt: skip
    text = cheaper_text(table, pd.Series(best))
    assert "**m / blocks.9 / logreg**" in text and "320 features" in text
    alone = pd.DataFrame([best, row("blocks.5", 0.85, 80, 1.0, 0.1)])
    assert "the recommendation stands" in cheaper_text(alone, pd.Series(best))
