"""`pipelines.results._results`: the one ranking (`best`) and everyone who names a winner agrees on it."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
from _synthetic import write_cache

import pipelines
from featurecache.app._demo import best_found
from featurecache.app.cli import main
from featurecache.exceptions import InvalidArgumentError
from pipelines.results._results import ResultsFolder, best, best_per, rank


def _row(model="m", layer="layer1", head="logreg", cv_mean=0.9, cv_std=0.01, n_features=16):
    return dict(model=model, layer=layer, head=head, cv_mean=cv_mean, cv_std=cv_std,
                n_features=n_features)  # fmt: skip


def _winner(rows) -> tuple[str, str, str]:
    """The winner of ``rows``, checked to be the same in every row order."""
    table = pd.DataFrame(rows)
    found = {tuple(best(table.iloc[order])[["model", "layer", "head"]]) for order in
             (list(range(len(rows))), list(reversed(range(len(rows)))))}  # fmt: skip
    assert len(found) == 1, found
    return found.pop()


def test_highest_cv_mean_wins_whatever_the_rest():
    rows = [
        _row(layer="a", cv_mean=0.90, cv_std=0.0, n_features=1),
        _row(layer="b", cv_mean=0.91, cv_std=0.2, n_features=900),
    ]
    assert _winner(rows) == ("m", "b", "logreg")


def test_equal_mean_lower_std_wins():
    rows = [
        _row(layer="a", cv_std=0.02, n_features=8),
        _row(layer="b", cv_std=0.01, n_features=512),
    ]
    assert _winner(rows) == ("m", "b", "logreg")


def test_equal_mean_and_std_fewer_features_win():
    rows = [_row(layer="a", n_features=512), _row(layer="b", n_features=8)]
    assert _winner(rows) == ("m", "b", "logreg")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([_row(model="zeta"), _row(model="alpha", layer="z")], ("alpha", "z", "logreg")),
        ([_row(layer="layer4"), _row(layer="layer2", head="svm")], ("m", "layer2", "svm")),
        ([_row(head="svm"), _row(head="linsvm"), _row(head="logreg")], ("m", "layer1", "linsvm")),
    ],
)
def test_then_model_layer_and_head_names_ascending(rows, expected):
    assert _winner(rows) == expected


def test_missing_values_rank_last():
    rows = [_row(layer="a", cv_mean=math.nan), _row(layer="b", cv_mean=0.1)]
    assert _winner(rows) == ("m", "b", "logreg")
    rows = [_row(layer="a", cv_std=math.nan), _row(layer="b", cv_std=0.3)]
    assert _winner(rows) == ("m", "b", "logreg")


def test_rank_orders_everything_and_best_per_picks_each_group():
    table = pd.DataFrame(
        [
            _row(layer="a", head="logreg", cv_mean=0.8),
            _row(layer="a", head="linsvm", cv_mean=0.8, cv_std=0.001),
            _row(layer="b", head="logreg", cv_mean=0.95),
            _row(layer="b", head="svm", cv_mean=0.7),
        ]
    )
    assert list(rank(table)["head"]) == ["logreg", "linsvm", "logreg", "svm"]
    per_layer = best_per(table, ["model", "layer"])
    assert list(zip(per_layer["layer"], per_layer["head"], strict=True)) == [
        ("a", "linsvm"),
        ("b", "logreg"),
    ]


def test_best_of_nothing_is_an_error():
    with pytest.raises(InvalidArgumentError, match="no combination to choose from"):
        best(pd.DataFrame([_row()]).iloc[:0])
    with pytest.raises(InvalidArgumentError, match="the table lacks n_features"):
        best(pd.DataFrame([_row()]).drop(columns="n_features"))


# -- everyone who names a winner names the same one -----------------------------------

# Two combinations tie on CV mean at the top; what breaks the tie differs per case. Each case
# is built so that the next rule down would pick the other one. (layer, head): (cv_mean, cv_std).
# Layers: noise has 8 features, embedding 12, informative 16; by name embedding < informative
# < noise.
TIES = {
    "lower std wins over fewer features": (
        {("informative", "logreg"): (0.99, 0.01), ("noise", "linsvm"): (0.99, 0.02)},
        ("informative", "logreg"),
    ),
    "equal std: fewer features win over names": (
        {("noise", "logreg"): (0.99, 0.01), ("embedding", "linsvm"): (0.99, 0.01)},
        ("noise", "logreg"),
    ),
    "same layer, equal std: head name": (
        {("embedding", "logreg"): (0.99, 0.01), ("embedding", "linsvm"): (0.99, 0.01)},
        ("embedding", "linsvm"),
    ),
}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A cache, the fit arguments, and a results folder fitted once (copied by each case)."""
    root = tmp_path_factory.mktemp("ties")
    cache = write_cache(root / "c.h5")
    grid = root / "grid.json"
    grid.write_text(json.dumps({"logreg": {"C": [0.1]}, "linsvm": {"C": [0.1]}}))
    argv = [
        "fit", str(cache), "--heads", "logreg,linsvm", "--grid", str(grid), "--cv", "3",
        "--jobs", "1",
    ]  # fmt: skip
    assert main([*argv, "--out", str(root / "results")]) == 0
    return root / "results", argv


def _rewrite_scores(folder: ResultsFolder, scores: dict) -> None:
    """Give the combinations of ``scores`` their (cv_mean, cv_std), and every other 0.5."""
    for record in folder.records():
        mean, std = scores.get((record["layer"], record["head"]), (0.5, 0.1))
        folder.write_combo({**record, "cv_mean": mean, "cv_std": std})


@pytest.mark.parametrize("case", list(TIES))
def test_fit_report_demo_and_api_name_the_same_winner(fitted, tmp_path, capsys, case):
    scores, (layer, head) = TIES[case]
    results = tmp_path / "results"
    shutil.copytree(fitted[0], results)
    _rewrite_scores(ResultsFolder(results), scores)
    capsys.readouterr()
    # `featurecache fit` again: every combination is reused, the table and the line are rewritten
    assert main([*fitted[1], "--out", str(results)]) == 0
    printed = capsys.readouterr().out
    named = {"fit": printed.split("best by CV: ", 1)[1].split(" (", 1)[0]}
    markdown = (pipelines.report(results, tmp_path / "report") / "report.md").read_text()
    named["report"] = markdown.split("## Best combination: ", 1)[1].split("\n", 1)[0]
    sentence = markdown.split("## Recommendation\n\n", 1)[1].split("\n", 1)[0]
    assert f"layer **{layer}** and head **{head}**" in sentence
    shown, _ = best_found(results)
    named["demo"] = " / ".join(shown[k] for k in ("model", "layer", "head"))
    chosen, _ = pipelines.best_combination(results)
    named["best_combination"] = " / ".join(chosen[k] for k in ("model", "layer", "head"))
    table = pd.read_csv(results / "results.csv")
    named["best(results.csv)"] = " / ".join(pipelines.best(table)[["model", "layer", "head"]])
    assert set(named.values()) == {f"toy / {layer} / {head}"}, named
    assert f"(CV 0.990 ± {scores[(layer, head)][1]:.3f}" in printed
