"""Feature sets (``fit(combine=...)``): parsing, per-part scaling inside the folds, rows ok in
every part, results, report, and no leakage under the product's CV."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _synthetic import write_cache
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

import pipelines
from featurecache.core._validation import ParameterError
from featurecache.exceptions import UnknownNameError
from pipelines.heads._search import stratified_splits
from pipelines.results._feature_sets import PartScaler, load_set_rows, resolve_sets

LAYERS = (("noise", 8, 0.0), ("informative", 16, 3.0), ("embedding", 12, 1.5))


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("sets") / "c.h5", models=("a", "b"), layers=LAYERS)


def _fit(cache, out, **kwargs):
    kwargs.setdefault("heads", ["logreg"])
    kwargs.setdefault("grid", {"logreg": {"C": [0.1, 1.0]}})
    return pipelines.fit(cache, out, cv=3, n_jobs=1, **kwargs)


# -- the grammar ------------------------------------------------------------------------


def test_the_grammar_names_layers_of_one_or_several_backbones(cache_path):
    cache = pipelines.open_cache(cache_path)
    sets = resolve_sets(
        cache,
        ["a:noise+informative", "informative+embedding", "a:informative+b:embedding", "b:last2",
         "deep=a:last3"],
        ["a", "b"],
    )  # fmt: skip
    got = [(s.model, s.name, [(p.model, p.layer) for p in s.parts]) for s in sets]
    assert got == [
        ("a", "noise+informative", [("a", "noise"), ("a", "informative")]),
        ("a", "informative+embedding", [("a", "informative"), ("a", "embedding")]),
        ("b", "informative+embedding", [("b", "informative"), ("b", "embedding")]),
        ("a+b", "a:informative+b:embedding", [("a", "informative"), ("b", "embedding")]),
        ("b", "last2", [("b", "informative"), ("b", "embedding")]),
        ("a", "deep", [("a", "noise"), ("a", "informative"), ("a", "embedding")]),
    ]
    assert [s.n_features for s in sets] == [24, 28, 28, 28, 28, 36]


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("a:noise+informatve", UnknownNameError,
         r"layer 'informatve', which model 'a' does not have.*Did you mean 'informative'"),
        ("z:noise+informative", UnknownNameError, r"names model 'z', which is not in cache"),
        ("a:noise", ParameterError, r"2 or more distinct layers.*Got 'a:noise' instead"),
        ("a:noise+noise", ParameterError, r"2 or more distinct layers"),
        ("a:last9", ParameterError, r"a number of layers that model 'a' has \(1 to 3\)"),
        ("x y=a:noise+informative", ParameterError, r"NAME holds letters, digits"),
        ("embedding=a:noise+informative", ParameterError,
         r"already has a layer or set of that name"),
    ],
)  # fmt: skip
def test_a_bad_set_is_refused_with_the_grammar(cache_path, spec, error, match):
    cache = pipelines.open_cache(cache_path)
    with pytest.raises(error, match=match):
        resolve_sets(cache, [spec], ["a", "b"])


# -- scaling ----------------------------------------------------------------------------


def test_part_scaler_equals_each_part_scaled_on_its_own():
    rng = np.random.default_rng(0)
    X = np.hstack([rng.normal(5, 3, (40, 6)), rng.normal(-2, 0.1, (40, 10))])
    train, other = X[:30], X[30:]
    scaler = PartScaler(sizes=(6, 10), n_components=8, random_state=3).fit(train)
    first = StandardScaler().fit(train[:, :6])
    second = StandardScaler().fit(train[:, 6:])
    pca = PCA(8, random_state=3).fit(second.transform(train[:, 6:]))  # the wider part only
    expected = np.hstack(
        [first.transform(other[:, :6]), pca.transform(second.transform(other[:, 6:]))]
    )
    np.testing.assert_allclose(scaler.transform(other), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"expects 16 columns \(parts of \[6, 10\]\); X has 15"):
        scaler.transform(other[:, :15])


def test_a_sets_columns_equal_the_per_part_scaled_concatenation(cache_path, tmp_path):
    table = _fit(cache_path, tmp_path / "r", layers=["noise"], combine=["a:informative+b:embedding"],
                 combine_pca=5)  # fmt: skip
    row = table[table["layer"] == "a:informative+b:embedding"].iloc[0]
    assert (row["model"], row["n_features"]) == ("a+b", 28)
    record = pipelines.load_head(tmp_path / "r" / row["head_file"])
    cache = pipelines.open_cache(cache_path)
    Xa, ya, _ = cache.load("a", "informative", "train")
    Xb, _, _ = cache.load("b", "embedding", "train")
    a = StandardScaler().fit(Xa)
    b = StandardScaler().fit(Xb)
    pca_a = PCA(5, random_state=0).fit(a.transform(Xa))
    pca_b = PCA(5, random_state=0).fit(b.transform(Xb))
    Xta, _, _ = cache.load("a", "informative", "test")
    Xtb, _, _ = cache.load("b", "embedding", "test")
    expected = np.hstack([pca_a.transform(a.transform(Xta)), pca_b.transform(b.transform(Xtb))])
    got = record.estimator["scale"].transform(np.hstack([Xta, Xtb]))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)  # float32 features
    assert record.provenance["feature_set"]["parts"][1]["layer"] == "embedding"
    # Its parts are fitted alone too, and run.json records the set.
    assert {("a", "informative"), ("b", "embedding")} <= set(
        zip(table["model"], table["layer"], strict=True)
    )
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["arguments"]["combine"] == [
        {"model": "a+b", "layer": "a:informative+b:embedding",
         "parts": [["a", "informative"], ["b", "embedding"]]}
    ]  # fmt: skip


def test_each_fold_scales_on_its_own_training_rows(cache_path, monkeypatch):
    """The search fits a fresh PartScaler per fold on that fold's training rows only."""
    seen = []
    original = PartScaler.fit

    def spy(self, X, y=None):
        seen.append(len(X))
        return original(self, X, y)

    monkeypatch.setattr(PartScaler, "fit", spy)
    cache = pipelines.open_cache(cache_path)
    (feature_set,) = resolve_sets(cache, ["a:noise+informative"], ["a"])
    train = (cache.splits == "train") & (cache.labels >= 0)
    X, rows = load_set_rows(cache, feature_set, train)
    y = cache.labels[rows]
    splits = stratified_splits(y, 3, 0)
    from pipelines.heads._search import search_heads

    head = pipelines.get_head("logreg")
    search_heads([head], {"logreg": head.grid({"C": [1.0]})}, X, y, splits, seed=0, n_jobs=1,
                 scale=feature_set.scaler(0))  # fmt: skip
    assert sorted(seen) == sorted(len(t) for t, _ in splits)


def test_a_set_across_backbones_reads_only_rows_ok_in_every_part(tmp_path):
    a = write_cache(tmp_path / "a.h5", models=("a", "b"), layers=LAYERS[:2], failed_rows=[3])
    cache = pipelines.open_cache(a)
    (feature_set,) = resolve_sets(cache, ["a:noise+b:informative"], ["a", "b"])
    X, rows = load_set_rows(cache, feature_set, np.ones(cache.n_samples, bool))
    assert 3 not in rows and len(rows) == cache.n_samples - 1
    Xa, rows_a = cache.load_rows("a", "noise", np.ones(cache.n_samples, bool))
    np.testing.assert_array_equal(X[:, :8], Xa[np.isin(rows_a, rows)])


def test_sets_are_selected_like_layers_and_reported_against_their_parts(cache_path, tmp_path):
    table = _fit(cache_path, tmp_path / "r", models=["a"], combine=["a:noise+informative"])
    assert ("a", "noise+informative", "logreg") in set(
        zip(table["model"], table["layer"], table["head"], strict=True)
    )
    csv = pd.read_csv(tmp_path / "r" / "results.csv")
    assert "noise+informative" in set(csv["layer"])
    out = pipelines.report(tmp_path / "r", tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "## Feature sets" in text
    assert "| a | noise+informative | a/noise + a/informative | logreg |" in text
    assert "The feature set `a / noise+informative`" in text
    assert "its best single part `a / informative`" in text


def test_random_labels_give_chance_accuracy_under_the_products_cv(tmp_path):
    """Noise features, labels that carry nothing: a set (scaled and reduced per part inside the
    folds) must not score above chance in CV, which a scaler or PCA fitted on held-out rows
    of many features would."""
    noise = (("n1", 60, 0.0), ("n2", 60, 0.0))
    path = write_cache(tmp_path / "c.h5", layers=noise, n_classes=4,
                       n_per_class={"train": 30, "test": 10})  # fmt: skip
    table = _fit(path, tmp_path / "r", heads=["logreg", "knn"], grid=None,
                 combine=["toy:n1+n2"], combine_pca=20)  # fmt: skip
    sets = table[table["layer"] == "n1+n2"]
    chance, se = 0.25, np.sqrt(0.25 * 0.75 / 120)
    assert len(sets) == 2
    assert (sets["cv_mean"] < chance + 3 * se).all(), sets[["head", "cv_mean"]]
    assert (sets["test_accuracy"] < chance + 3 * np.sqrt(0.25 * 0.75 / 40)).all()


def test_with_views_a_set_fits_on_plain_rows_and_its_parts_on_views(tmp_path):
    path = write_cache(tmp_path / "v.h5", layers=LAYERS[:2], views=2)
    table = _fit(path, tmp_path / "r", views="train", combine=["toy:noise+informative"])
    row = table[table["layer"] == "noise+informative"].iloc[0]
    assert (row["views"], row["n_views"]) == ("none", 1)
    assert set(table[table["layer"] == "noise"]["views"]) == {"train"}


def test_cli_fit_combine_and_its_errors(cache_path, tmp_path, capsys):
    from featurecache.app.cli import main

    argv = ["fit", str(cache_path), "--out", str(tmp_path / "r"), "--heads", "logreg",
            "--cv", "3", "--jobs", "1", "--layers", "embedding"]  # fmt: skip
    assert main([*argv, "--combine", "a:noise+informative", "deep=b:last2"]) == 0
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    assert {("a", "noise+informative"), ("b", "deep")} <= set(
        zip(table["model"], table["layer"], strict=True)
    )
    capsys.readouterr()
    assert main([*argv, "--combine", "a:noise"]) == 2
    assert "--combine must be feature sets of 2 or more distinct layers" in capsys.readouterr().err
    assert main([*argv, "--combine", "a:noise+informative", "--combine-pca", "0"]) == 2
    assert "--combine-pca must be None or an int >= 1. Got 0 instead." in capsys.readouterr().err


def test_when_a_set_wins_the_report_says_it_beats_its_parts(tmp_path):
    """Two weak layers with independent noise: their concatenation is better than either."""
    weak = (("p1", 8, 0.6), ("p2", 8, 0.6))
    path = write_cache(tmp_path / "c.h5", models=("a", "b"), layers=weak,
                       n_per_class={"train": 40, "test": 20})  # fmt: skip
    table = _fit(path, tmp_path / "r", grid=None, combine=["a:p1+p2", "a:p1+b:p2"])
    chosen = pipelines.best(table)
    assert (chosen["model"], chosen["layer"]) == ("a", "p1+p2")
    text = (pipelines.report(tmp_path / "r", tmp_path / "rep") / "report.md").read_text()
    assert "Use backbone **a**, layer **p1+p2** and head **logreg**" in text
    assert "by more than" not in text.split("## Protocol")[0]
    assert "more than the CV spread" in text.split("## Protocol")[0]
    assert "combining the layers helps" in text
    assert "### Map of the best layer" in text  # the set's test rows, read part by part


def test_a_set_without_a_model_applies_to_the_models_that_have_its_layers(cache_path):
    cache = pipelines.open_cache(cache_path)

    class BWithoutEmbedding:  # the cache, as if model b had no `embedding`
        models, path, entry = cache.models, cache.path, cache.entry

        @staticmethod
        def layers(model):
            return cache.layers(model)[: 2 if model == "b" else 3]

    (found,) = resolve_sets(BWithoutEmbedding, ["noise+embedding"], ["a", "b"])
    assert (found.model, found.name) == ("a", "noise+embedding")
    assert len(resolve_sets(BWithoutEmbedding, ["noise+informative"], ["a", "b"])) == 2
    with pytest.raises(UnknownNameError, match=r"layer 'embeding', which model 'b' does not"):
        resolve_sets(BWithoutEmbedding, ["noise+embeding"], ["a", "b"])
