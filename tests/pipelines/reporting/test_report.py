"""`pipelines.report`: files, embedded figures, recommendation."""

from __future__ import annotations

import base64
import dataclasses
import re

import pandas as pd
import pytest
from _synthetic import LAYERS, write_cache

import pipelines
from featurecache.exceptions import InvalidArgumentError
from pipelines.reporting import _decisions
from pipelines.reporting._decisions import earlier_layer, earlier_layer_verdict, recommendation
from pipelines.reporting._report import earlier_layer_outcome

GRID = {"logreg": {"C": [0.01, 1.0]}, "linsvm": {"C": [0.01, 0.1]}}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    # a weak embedding, so that the informative earlier layer wins outright, not on a tie
    layers = (*LAYERS[:2], ("embedding", 12, 0.4))
    cache = write_cache(
        root / "c.h5", models=("a", "b"), layers=layers, n_per_class={"train": 30, "test": 15}
    )
    pipelines.fit(cache, root / "results", heads=["logreg", "linsvm"], grid=GRID, cv=3)
    out = pipelines.report(root / "results", root / "reports" / "demo")
    return root / "results", out


def test_report_files_exist_and_html_is_self_contained(fitted):
    _, out = fitted
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == 5  # heatmap, depth, heads, confusion, PCA map of the best layer
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("heatmap", "depth", "heads", "confusion"):
        assert f"](figures/{name}.png)" in markdown
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    for section in (
        "Recommendation",
        "Protocol",
        "Data",
        "Model × layer",
        "Accuracy versus layer depth",
        "Heads compared",
        "Best combination",
        "chosen hyper-parameters",
        "Fit times",
        "Provenance of the features",
    ):
        assert section in markdown and section in html
    assert "scored once on the test split. Nothing was selected on test" in markdown
    assert "| class | train | test |" in markdown  # samples per split and class
    assert "| class_0 | 30 | 15 |" in markdown
    assert "most confused pair" in markdown
    assert "weights_sha256" in markdown


def test_recommendation_names_the_best_combination_by_cv(fitted):
    results, out = fitted
    table = pd.read_csv(results / "results.csv")
    best = pipelines.best(table)
    markdown = (out / "report.md").read_text()
    sentence = markdown.split("## Recommendation\n\n", 1)[1].split("\n", 1)[0]
    assert (
        f"backbone **{best['model']}**, layer **{best['layer']}** and head **{best['head']}**"
        in (sentence)
    )
    assert best["layer"] == "informative"
    assert "An earlier layer beat the penultimate one: `informative` scored" in sentence
    assert "CV spread" in sentence


def _frame(rows):
    table = pd.DataFrame(rows)
    table["params_text"] = "C=1"
    return table


def test_recommendation_wording_for_each_case():
    base = {"model": "m", "head": "logreg", "test_accuracy": 0.9, "cv_std": 0.01, "n_features": 8}
    earlier = {**base, "layer": "layer3", "cv_mean": 0.95}
    embedding = {**base, "layer": "embedding", "cv_mean": 0.90}
    text = recommendation(_frame([earlier, embedding]), _frame([earlier]).iloc[0])
    assert "scored 0.050 higher" in text and "5.0× the CV spread" in text and "likely real" in text
    close = {**embedding, "cv_mean": 0.945}
    text = recommendation(_frame([earlier, close]), _frame([earlier]).iloc[0])
    assert "not a reliable difference" in text and "beat" not in text  # words agree
    tied = {**embedding, "cv_mean": 0.95, "cv_std": 0.02}
    text = recommendation(_frame([earlier, tied]), _frame([earlier]).iloc[0])
    assert "tied with the penultimate one" in text and "beat" not in text
    assert "differ by 0.000" in text
    best = {**embedding, "cv_mean": 0.97}
    text = recommendation(_frame([earlier, best]), _frame([best]).iloc[0])
    assert "No earlier layer beat the penultimate layer `embedding`" in text
    text = recommendation(_frame([earlier]), _frame([earlier]).iloc[0])
    assert "No layer named `embedding`" in text
    no_test = {**earlier, "test_accuracy": float("nan")}
    assert "no test split: CV only" in recommendation(_frame([no_test]), _frame([no_test]).iloc[0])


def test_report_without_test_split_says_so(tmp_path):
    cache = write_cache(tmp_path / "c.h5", n_per_class={"train": 20})
    pipelines.fit(cache, tmp_path / "r", heads=["logreg"], grid=GRID, cv=3, layers=["informative"])
    out = pipelines.report(tmp_path / "r", tmp_path / "rep")
    markdown = (out / "report.md").read_text()
    assert "this cache has no test split" in markdown
    assert "no test split: CV only" in markdown
    assert "confusion" not in re.findall(r'alt="(\w+)"', (out / "report.html").read_text())


def test_report_of_a_non_results_folder(tmp_path):
    with pytest.raises(InvalidArgumentError, match="'results' parameter of report .* no run.json"):
        pipelines.report(tmp_path, tmp_path / "out")


def test_earlier_layer_verdict_agrees_with_the_recommendation():
    base = {"model": "m", "head": "logreg", "test_accuracy": 0.9, "cv_std": 0.01, "n_features": 8}
    earlier = {**base, "layer": "layer3", "cv_mean": 0.95}
    cases = {0.90: "yes", 0.945: "not reliably", 0.95: "tie", 0.9498: "tie"}
    for embedding_mean, expected in cases.items():
        embedding = {**base, "layer": "embedding", "cv_mean": embedding_mean}
        table = _frame([earlier, embedding])
        assert earlier_layer_verdict(table, _frame([earlier]).iloc[0]) == expected
    table = _frame([earlier, {**base, "layer": "embedding", "cv_mean": 0.99}])
    assert earlier_layer_verdict(table, table.iloc[1]) == "no"


def test_the_earlier_layer_verdict_is_decided_once_and_read_everywhere(fitted, monkeypatch):
    results, _ = fitted
    calls = []
    real_gap_verdict = _decisions.gap_verdict
    monkeypatch.setattr(
        _decisions, "gap_verdict", lambda *args: calls.append(args) or real_gap_verdict(*args)
    )
    base = {"model": "m", "head": "logreg", "test_accuracy": 0.9, "cv_std": 0.01, "n_features": 8}
    table = _frame([{**base, "layer": "layer3", "cv_mean": 0.95},
                    {**base, "layer": "embedding", "cv_mean": 0.90}])  # fmt: skip
    decision = earlier_layer(table, table.iloc[0])
    assert (decision.verdict, len(calls)) == ("yes", 1)
    assert "beat the penultimate one" in decision.sentence() and len(calls) == 1  # read, not redone

    # A decision the data would not give: the sentence and the word must both follow it.
    decided = []

    def forged(table, chosen):
        decided.append(earlier_layer(table, chosen))
        return dataclasses.replace(decided[-1], outcome="tie", judgement="no difference")

    monkeypatch.setattr(_decisions, "earlier_layer", forged)
    _, sentence = pipelines.best_combination(results)
    assert "An earlier layer tied with the penultimate one: `informative`" in sentence
    assert earlier_layer_outcome(results) == "tie"
    assert [d.verdict for d in decided] == ["yes", "yes"]  # one decision per call
