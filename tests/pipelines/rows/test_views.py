"""`fit(views="train")`, grouped selection folds, test-time augmentation, and how the
results folder and the report show them (issue 14, stage 2)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from _synthetic import write_cache
from sklearn.model_selection import StratifiedKFold

import pipelines
from featurecache.app.cli import main
from featurecache.cache import FeatureConfig, SampleTable, ViewSets, open_cache, write_arrays
from featurecache.exceptions import InvalidArgumentError
from pipelines.heads._search import search, stratified_splits
from pipelines.results._results import RESULT_COLUMNS, load_head
from pipelines.rows._views import Variant, expand_splits, expand_views, tta_predict

FAST = {"logreg": {"C": [0.01, 1.0]}, "linsvm": {"C": [0.01, 0.1]}}


def _fit(cache, out, **kwargs):
    options = {"heads": ["logreg"], "grid": FAST, "cv": 3, "n_jobs": 1, **kwargs}
    options["grid"] = {h: g for h, g in options["grid"].items() if h in options["heads"]}
    return pipelines.fit(cache, out, **options)


def _rows(table, **where):
    mask = np.ones(len(table), bool)
    for column, value in where.items():
        mask &= table[column] == value
    return table[mask]


# -- grouping, on arrays ---------------------------------------------------------------


def test_expanded_folds_never_train_on_a_view_of_a_held_out_sample():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    X = rng.normal(size=(30, 4)).astype(np.float32)
    positions = np.array([0, 3, 4, 7, 12, 20, 29])  # some rows have views, others not
    views = rng.normal(size=(len(positions), 4, 4)).astype(np.float32)
    views[:, 0] = X[positions]
    X_all, y_all, groups = expand_views(X, y, views, positions)
    assert X_all.shape == (30 + 7 * 3, 4) and np.array_equal(X_all[:30], X)
    assert np.array_equal(X_all[30:33], views[0, 1:]) and np.array_equal(groups[30:33], [0, 0, 0])
    assert np.array_equal(y_all, y[groups])
    samples = stratified_splits(y, 5, seed=0)
    for (train, score), (rows_train, rows_score) in zip(
        samples, expand_splits(samples, groups), strict=True
    ):
        assert np.array_equal(rows_score, score)  # held out: the plain view only
        assert not np.isin(groups[rows_train], score).any()  # no view of them in training
        assert set(groups[rows_train]) == set(train)  # every view of the training samples
        assert len(rows_train) == len(train) + 3 * np.isin(positions, train).sum()


# -- test-time augmentation, on arrays --------------------------------------------------


@pytest.fixture(scope="module")
def fitted_heads():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 6)) + np.repeat(np.eye(3, 6) * 1.5, 30, axis=0)
    y = np.repeat([0, 1, 2], 30)
    views = (X[:20, None, :] + rng.normal(size=(20, 5, 6))).astype(np.float32)
    from pipelines.heads._heads import build_pipeline, get_head

    heads = {
        name: build_pipeline(get_head(name), params, X.astype(np.float32), y, seed=0)
        for name, params in (
            ("logreg", {"C": 1.0, "pca": None}),
            ("linsvm", {"C": 0.1, "pca": None}),
            ("svm", {"C": 1.0, "gamma": "scale", "pca": None}),
        )
    }
    return heads, views


def test_tta_mean_proba_is_the_mean_of_predict_proba_over_the_views(fitted_heads):
    heads, views = fitted_heads
    estimator = heads["logreg"]
    by_hand = np.mean([estimator.predict_proba(views[:, v]) for v in range(5)], axis=0)
    y_pred, confidence = tta_predict(estimator, views, "mean-proba")
    assert np.array_equal(y_pred, by_hand.argmax(axis=1))
    np.testing.assert_allclose(confidence, by_hand.max(axis=1), rtol=1e-6)


def test_tta_mean_feature_applies_the_head_to_the_mean_feature(fitted_heads):
    heads, views = fitted_heads
    for estimator in heads.values():
        y_pred, _ = tta_predict(estimator, views, "mean-feature")
        assert np.array_equal(y_pred, estimator.predict(views.mean(axis=1)))


def test_tta_mean_proba_without_predict_proba_averages_decision_function(fitted_heads):
    heads, views = fitted_heads
    for name in ("linsvm", "svm"):
        estimator = heads[name]
        assert not hasattr(estimator, "predict_proba")
        by_hand = np.mean([estimator.decision_function(views[:, v]) for v in range(5)], axis=0)
        y_pred, confidence = tta_predict(estimator, views, "mean-proba")
        assert np.array_equal(y_pred, by_hand.argmax(axis=1))
        e = np.exp(by_hand - by_hand.max(axis=1, keepdims=True))
        np.testing.assert_allclose(
            confidence, (e / e.sum(axis=1, keepdims=True)).max(axis=1), rtol=1e-6
        )
    # For a linear head the mean decision is the decision of the mean feature.
    linear = heads["linsvm"]
    assert np.array_equal(
        tta_predict(linear, views, "mean-proba")[0], tta_predict(linear, views, "mean-feature")[0]
    )


def test_variant_names_and_labels():
    assert Variant().name == "" and Variant().label == "plain" and Variant().is_plain
    views = Variant(views="train", n_views=4)
    assert views.name == "views" and views.label == "views ×4"
    both = Variant(views="train", n_views=4, tta="mean-proba", n_tta=3)
    assert both.name == "views+tta-mean-proba"
    assert both.label == "views ×4, TTA mean-proba ×3"
    assert Variant(tta="mean-feature", n_tta=2).name == "tta-mean-feature"


# -- fit on a views cache ---------------------------------------------------------------


def test_grouped_folds_keep_pure_noise_at_chance_where_ungrouped_folds_leak(tmp_path):
    """Random features, random labels, and views that barely change a row: nothing to learn.

    The product's folds (grouped by sample) score at chance, within their spread; the same
    rows split without grouping score far above it, because a near copy of every held-out
    row sits in training. Both are asserted, so the product's split is the grouped one.
    """
    cache = write_cache(
        tmp_path / "noise.h5", layers=(("noise", 256, 0.0),), n_per_class={"train": 30, "test": 10},
        views=4, view_noise=0.05, seed=0,
    )  # fmt: skip
    table = pipelines.fit(cache, tmp_path / "r", heads=["logreg"], views="train", cv=5, n_jobs=1)
    row = table.iloc[0]
    assert (row["views"], row["n_views"]) == ("train", 4)
    assert abs(row["cv_mean"] - 1 / 3) <= 2 * row["cv_std"]
    assert row["cv_mean"] < 0.5

    opened = open_cache(cache)
    X, rows = opened.load_rows("toy", "noise", opened.splits == "train")
    views, with_views = opened.load_views("toy", "noise", "augment")
    X_all, y_all, _ = expand_views(X, opened.labels[rows], views, np.searchsorted(rows, with_views))
    assert len(X_all) == 4 * len(X)
    leaky = StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(X_all, y_all)
    ungrouped = search("logreg", X_all, y_all, cv=list(leaky), seed=0)
    assert ungrouped.cv_mean > 0.9


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    return write_cache(
        root / "c.h5", n_per_class={"train": 20, "test": 10}, views=3, tta=4, view_noise=0.5,
        seed=2,
    )  # fmt: skip


@pytest.mark.parametrize("tta", ["mean-proba", "mean-feature"])
def test_tta_predictions_equal_the_head_over_the_test_views_by_hand(views_cache, tmp_path, tta):
    table = _fit(views_cache, tmp_path / "r", layers=["embedding"], views="train", tta=tta)
    row = table.iloc[0]
    assert (row["views"], row["n_views"], row["tta"], row["n_tta"]) == ("train", 3, tta, 4)
    estimator = load_head(tmp_path / "r" / row["head_file"]).estimator
    predictions = pd.read_csv(tmp_path / "r" / row["predictions_file"], dtype={"id": str})
    cache = open_cache(views_cache)
    views, rows = cache.load_views("toy", "embedding", "tta")
    test = rows[cache.splits[rows] == "test"]
    assert list(predictions["id"]) == list(cache.ids[test])
    V = views[np.isin(rows, test)]
    if tta == "mean-proba":
        proba = np.mean([estimator.predict_proba(V[:, v]) for v in range(4)], axis=0)
    else:
        proba = estimator.predict_proba(V.mean(axis=1))
    assert np.array_equal(predictions["y_pred"], proba.argmax(axis=1))
    np.testing.assert_allclose(predictions["confidence"], proba.max(axis=1), rtol=1e-5)
    assert row["test_accuracy"] == np.mean(predictions["y_pred"] == cache.labels[test])


def test_views_train_on_every_view_and_refit_on_all_of_them(views_cache, tmp_path):
    table = _fit(views_cache, tmp_path / "r", layers=["embedding"], views="train")
    row = table.iloc[0]
    assert row["n_train"] == 60  # samples, not rows
    head = load_head(tmp_path / "r" / row["head_file"])
    assert head.estimator[0].n_samples_seen_ == 3 * 60  # the refit saw every view
    record = json.loads((tmp_path / "r" / "combos" / "toy" / "embedding" / "logreg+views.json")
                        .read_text())  # fmt: skip
    # Test rows are scored on their plain view: the same head on the plain test features.
    cache = open_cache(views_cache)
    X, rows = cache.load_rows("toy", "embedding", cache.splits == "test")
    assert row["test_accuracy"] == np.mean(head.estimator.predict(X) == cache.labels[rows])
    assert record["protocol"]["views"].startswith("trained on every augmented view")


def test_plain_and_variants_share_one_results_folder(views_cache, tmp_path):
    out = tmp_path / "r"
    plain = _fit(views_cache, out, layers=["embedding"], heads=["logreg", "linsvm"])
    assert list(plain[["views", "n_views", "tta", "n_tta"]].iloc[0]) == ["none", 1, "none", 1]
    _fit(views_cache, out, layers=["embedding"], heads=["logreg", "linsvm"], views="train")
    table = _fit(views_cache, out, layers=["embedding"], heads=["logreg", "linsvm"],
                 views="train", tta="mean-proba")  # fmt: skip
    on_disk = pd.read_csv(out / "results.csv")
    assert list(on_disk.columns) == list(RESULT_COLUMNS)
    assert len(on_disk) == len(table) == 6
    logreg = _rows(on_disk, head="logreg")
    assert list(zip(logreg["views"], logreg["n_views"], logreg["tta"], logreg["n_tta"],
                    strict=True)) == [("none", 1, "none", 1), ("train", 3, "none", 1),
                                      ("train", 3, "mean-proba", 4)]  # fmt: skip
    assert sorted(p.name for p in (out / "combos" / "toy" / "embedding").iterdir()) == [
        "linsvm+views+tta-mean-proba.json", "linsvm+views.json", "linsvm.json",
        "logreg+views+tta-mean-proba.json", "logreg+views.json", "logreg.json",
    ]  # fmt: skip
    assert list(logreg["head_file"]) == [
        "heads/toy/embedding/logreg.joblib", "heads/toy/embedding/logreg+views.joblib",
        "heads/toy/embedding/logreg+views+tta-mean-proba.joblib",
    ]  # fmt: skip
    # The plain rows are what a plain fit alone gives; TTA changes test only, not CV.
    for column in ("cv_mean", "cv_std", "test_accuracy", "params"):
        assert (
            _rows(on_disk, head="logreg", views="none")[column].iloc[0]
            == (plain.set_index("head").loc["logreg", column])
        )
    views, tta = logreg.iloc[1], logreg.iloc[2]
    assert (views["cv_mean"], views["params"]) == (tta["cv_mean"], tta["params"])
    # A re-run reuses every finished variant.
    before = (out / "combos" / "toy" / "embedding" / "logreg+views.json").stat().st_mtime_ns
    _fit(views_cache, out, layers=["embedding"], heads=["logreg", "linsvm"], views="train")
    assert (out / "combos" / "toy" / "embedding" / "logreg+views.json").stat().st_mtime_ns == before
    run = json.loads((out / "run.json").read_text())
    assert run["arguments"]["views"] == "train" and run["arguments"]["tta"] == "none"


def test_report_compares_plain_views_and_tta(tmp_path):
    views_cache = write_cache(
        tmp_path / "c.h5", layers=(("embedding", 12, 0.6),), n_per_class={"train": 20, "test": 20},
        views=3, tta=4, view_noise=0.5, seed=4,
    )  # fmt: skip
    out = tmp_path / "r"
    _fit(views_cache, out, layers=["embedding"])
    plain_report = pipelines.report(out, tmp_path / "plain")
    assert "Augmented views" not in (plain_report / "report.md").read_text()
    assert "marked *views*" not in (plain_report / "report.md").read_text()
    _fit(views_cache, out, layers=["embedding"], views="train")
    _fit(views_cache, out, layers=["embedding"], tta="mean-feature")
    _fit(views_cache, out, layers=["embedding"], views="train", tta="mean-feature")
    text = (pipelines.report(out, tmp_path / "all") / "report.md").read_text()
    section = text.split("## Augmented views and test-time augmentation")[1].split("\n## ")[0]
    protocol = text.split("## Protocol")[1].split("\n## ")[0]
    assert "Combinations marked *views* were trained on every augmented view" in protocol
    assert "Combinations marked *TTA* scored each test row on the mean" in protocol
    table = pd.read_csv(out / "results.csv")
    lines = [line for line in section.splitlines() if line.startswith("| toy")]
    assert [line.split(" | ")[3] for line in lines] == [
        "plain", "TTA mean-feature ×4", "views ×3", "views ×3, TTA mean-feature ×4",
    ]  # fmt: skip
    plain, views = _rows(table, tta="none", views="none").iloc[0], _rows(
        table, tta="none", views="train").iloc[0]  # fmt: skip
    gain = views["cv_mean"] - plain["cv_mean"]
    spread = max(plain["cv_std"], views["cv_std"])
    test_gain = views["test_accuracy"] - plain["test_accuracy"]
    assert f"{gain:+.3f} CV ({test_gain:+.3f} test) over plain" in lines[2]
    judgement = "likely real" if abs(gain) >= 2 * spread else (
        "suggestive" if abs(gain) >= spread else "not a reliable difference")  # fmt: skip
    assert f"{abs(gain) / spread:.1f}× the spread (± {spread:.3f}): {judgement}" in lines[2]
    tta_both = _rows(table, tta="mean-feature", views="train").iloc[0]
    assert (
        f"{tta_both['test_accuracy'] - views['test_accuracy']:+.3f} test over views ×3"
        in (lines[3])
    )
    assert "reference" in lines[0]
    # The best by CV is the views fit (TTA ties in CV; the tie rule takes the cheaper one).
    assert views["cv_mean"] > plain["cv_mean"]
    assert f", views ×3): CV accuracy {views['cv_mean']:.3f}" in text
    assert "## Best combination: toy / embedding / logreg (views ×3)\n" in text


# -- refusals -----------------------------------------------------------------------------


def test_views_on_a_cache_without_views_names_the_model_and_how_to_extract(tmp_path, capsys):
    cache = write_cache(tmp_path / "c.h5")
    out = tmp_path / "r"
    message = (
        f"views='train' needs augmented views of model 'toy', which cache '{cache}' does not "
        "hold; extract them under a new model name with `featurecache extract DATA --cache "
        f"{cache} --model BACKBONE --name NAME --views K --augment SPEC`, or fit without "
        "views='train'."
    )
    with pytest.raises(InvalidArgumentError) as error:
        pipelines.fit(cache, out, views="train")
    assert str(error.value) == message
    assert not out.exists()
    assert main(["fit", str(cache), "--out", str(out), "--views", "train"]) == 2
    assert capsys.readouterr().err == (
        "featurecache: error: " + message.replace("views='train'", "--views train") + "\n"
    )


def test_tta_without_test_time_views_and_views_with_shots_are_refused(tmp_path, capsys):
    cache = write_cache(tmp_path / "c.h5", views=2)
    with pytest.raises(InvalidArgumentError) as error:
        pipelines.fit(cache, tmp_path / "r", tta="mean-proba")
    assert str(error.value) == (
        f"tta='mean-proba' needs test-time views of model 'toy', which cache '{cache}' does not "
        "hold; extract them under a new model name with `featurecache extract DATA --cache "
        f"{cache} --model BACKBONE --name NAME --tta SPEC`, or fit without tta='mean-proba'."
    )
    with pytest.raises(InvalidArgumentError, match=r"^views='train' cannot be combined with "
                       r"shots='5': learning curves are drawn from plain rows\. Fit the "
                       r"curves in a plain run into the same results folder\.$"):  # fmt: skip
        pipelines.fit(cache, tmp_path / "r", views="train", shots=[5, "all"])
    with pytest.raises(InvalidArgumentError, match=r"^The 'views' parameter of fit must be one "
                       r"of 'train'\. Got 'all' instead\."):  # fmt: skip
        pipelines.fit(cache, tmp_path / "r", views="all")
    with pytest.raises(InvalidArgumentError, match=r"^The 'tta' parameter of fit must be one "
                       r"of 'mean-proba', 'mean-feature'\. Got 'mean' instead\."):  # fmt: skip
        pipelines.fit(cache, tmp_path / "r", tta="mean")
    assert not (tmp_path / "r").exists()
    argv = ["fit", str(cache), "--out", str(tmp_path / "r")]
    assert main([*argv, "--tta", "mean"]) == 2
    assert "--tta: invalid choice: 'mean'" in capsys.readouterr().err


def test_cli_fit_with_views_and_tta(views_cache, tmp_path, capsys):
    argv = ["fit", str(views_cache), "--out", str(tmp_path / "r"), "--layers", "embedding",
            "--heads", "logreg", "--cv", "3", "--jobs", "1"]  # fmt: skip
    assert main([*argv, "--views", "train", "--tta", "mean-proba"]) == 0
    printed = capsys.readouterr().out
    assert "best by CV: toy / embedding / logreg (views ×3, TTA mean-proba ×4) (CV " in printed
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    assert list(table[["views", "tta"]].iloc[0]) == ["train", "mean-proba"]


def test_report_pairs_views_stored_under_another_model_name_with_the_plain_model(tmp_path):
    """``extract --name net-views3 --views 3`` beside a plain ``net``: same backbone,
    weights and preprocessing, so the report compares them as plain and views."""
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 2], 30)
    split = np.array((["train"] * 20 + ["test"] * 10) * 3, dtype=object)
    X = (rng.normal(size=(90, 6)) + 0.8 * np.eye(3, 6)[y]).astype(np.float32)
    V = X[:, None, :] + 0.5 * rng.normal(size=(90, 3, 6)).astype(np.float32)
    V[:, 0], V[split == "test"] = X, np.nan
    plain = FeatureConfig(
        backbone="net", weights_sha256="0" * 64, preprocessing={"crop_size": 32}, pooling="avg",
        dtype="float32", compute_dtype="float32",
    )  # fmt: skip
    views = dataclasses.replace(plain, views=ViewSets(k=3, augment="flip").to_dict())
    samples = SampleTable(np.array([f"s{i}" for i in range(90)], dtype=object), y, split,
                          ("a", "b", "c"), source="synthetic")  # fmt: skip
    cache = write_arrays(
        tmp_path / "c.h5", samples, {"net": {"embedding": X}, "net-views3": {"embedding": X}},
        {"net": plain, "net-views3": views},
        views={"net-views3": {"embedding": {"augment": V}}},
    )  # fmt: skip
    out = tmp_path / "r"
    _fit(cache, out, models=["net"])
    _fit(cache, out, models=["net-views3"], views="train")
    text = (pipelines.report(out, tmp_path / "report") / "report.md").read_text()
    section = text.split("## Augmented views and test-time augmentation")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| net")]
    assert [line.split(" | ")[:4] for line in lines] == [
        ["| net", "embedding", "logreg", "plain"], ["| net-views3", "embedding", "logreg", "views ×3"],
    ]  # fmt: skip
    assert "CV (" in lines[1] and "over plain (net) |" in lines[1]
