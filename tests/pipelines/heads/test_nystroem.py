"""The Nyström RBF head: scikit-learn's ``Nystroem`` + ``RidgeClassifier``, exactly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from _synthetic import write_cache
from sklearn.datasets import make_classification
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import pipelines
from featurecache.exceptions import InvalidArgumentError
from pipelines.heads._nystroem import NystroemClassifier, nystroem_grid_predictions


def _data(n_samples=150, seed=0):
    return make_classification(
        n_samples=n_samples, n_features=10, n_informative=6, n_classes=3, random_state=seed
    )


def test_nystroem_head_equals_nystroem_plus_ridgeclassifier():
    X, y = _data()
    ours = NystroemClassifier(gamma=0.2, n_components=40, alpha=0.5, random_state=7).fit(X, y)
    plain = make_pipeline(
        Nystroem(kernel="rbf", gamma=0.2, n_components=40, random_state=7),
        RidgeClassifier(alpha=0.5),
    ).fit(X, y)
    X_new, _ = _data(60, seed=1)
    np.testing.assert_array_equal(ours.predict(X_new), plain.predict(X_new))
    np.testing.assert_array_equal(ours.decision_function(X_new), plain.decision_function(X_new))


def test_the_grid_path_predicts_what_each_fit_predicts():
    X, y = _data()
    candidates = [(g, 30, a) for g in (0.05, 0.3) for a in (0.01, 1.0, 100.0)]
    got = nystroem_grid_predictions(X[:100], y[:100], X[100:], candidates, seed=4)
    for row, (gamma, n, alpha) in zip(got, candidates, strict=True):
        fitted = NystroemClassifier(gamma=gamma, n_components=n, alpha=alpha, random_state=4)
        np.testing.assert_array_equal(row, fitted.fit(X[:100], y[:100]).predict(X[100:]))


def test_more_components_than_rows_use_every_row_without_a_warning():
    X, y = _data(30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf = NystroemClassifier(gamma=0.1, n_components=500).fit(X, y)
    assert clf.map_.components_.shape == (30, 10)


def test_fit_chooses_it_by_cv_and_records_the_resolved_kernel(tmp_path):
    path = write_cache(tmp_path / "c.h5", layers=(("embedding", 12, 1.0),))
    grid = {
        "nystroem": {"gamma": ["0.5*scale", "scale"], "n_components": [25], "alpha": [0.1, 1.0]}
    }
    table = pipelines.fit(path, tmp_path / "r", heads=["nystroem"], grid=grid, cv=3, n_jobs=1)
    row = table.iloc[0]
    assert json.loads(row["params"])["gamma"] in ("0.5*scale", "scale")
    assert row["selection"] == "3-fold CV"
    record = pipelines.load_head(tmp_path / "r" / row["head_file"])
    cache = pipelines.open_cache(path)
    X, y, _ = cache.load("toy", "embedding", "train")
    scaled = StandardScaler().fit_transform(X)
    multiple = 0.5 if json.loads(row["params"])["gamma"] == "0.5*scale" else 1.0
    expected_gamma = multiple / (scaled.shape[1] * scaled.var())
    assert record.estimator["clf"].gamma == pytest.approx(expected_gamma, rel=1e-5)
    candidates = json.loads((tmp_path / "r" / "combos/toy/embedding/nystroem.json").read_text())
    assert len(candidates["candidates"]) == 4


def test_a_bad_nystroem_grid_is_refused():
    with pytest.raises(InvalidArgumentError,
                       match=r"the grid of head 'nystroem'.*'alpha' parameter of "
                       r"NystroemClassifier must be a float in the range \(0.0, inf\)"):  # fmt: skip
        pipelines.get_head("nystroem").grid({"alpha": [-1.0]})


def test_search_scores_equal_gridsearchcv_of_the_same_pipeline():
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    X, y = _data(120)
    grid = {"gamma": [0.05, 0.2], "n_components": [40], "alpha": [0.1, 10.0]}
    found = pipelines.search("nystroem", X, y, grid=grid, cv=3, seed=5)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", NystroemClassifier(random_state=5))])
    folds = StratifiedKFold(3, shuffle=True, random_state=5)
    plain = GridSearchCV(pipe, {f"clf__{k}": v for k, v in grid.items()}, cv=folds).fit(X, y)
    np.testing.assert_allclose(
        [c["mean"] for c in found.candidates], plain.cv_results_["mean_test_score"], atol=1e-12
    )
