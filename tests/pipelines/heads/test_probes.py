"""The fast probes: exact-CV ridge and cosine kNN, against plain scikit-learn and a brute force."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import pipelines
from pipelines.heads._heads import build_pipeline
from pipelines.heads._knn import CosineKNNClassifier, knn_grid_predictions
from pipelines.heads._ridge import ridge_path_predictions


def _data(n_samples=160, n_features=12, n_classes=3, seed=0):
    X, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=6,
        n_classes=n_classes,
        random_state=seed,
    )
    return X, y


@pytest.mark.parametrize(("n_samples", "n_features", "n_classes"), [(160, 12, 3), (60, 40, 2)])
def test_ridge_cv_equals_gridsearchcv_for_every_alpha(n_samples, n_features, n_classes):
    """Both Gram forms (rows >= features, rows < features) and the binary single column."""
    X, y = _data(n_samples, n_features, n_classes)
    alphas = [float(a) for a in np.logspace(-3, 4, 15)]
    ours = pipelines.search("ridge", X, y, grid={"alpha": alphas}, cv=4, seed=1)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", RidgeClassifier())])
    folds = StratifiedKFold(4, shuffle=True, random_state=1)
    plain = GridSearchCV(pipe, {"clf__alpha": alphas}, cv=folds).fit(X, y)
    np.testing.assert_allclose(
        [c["mean"] for c in ours.candidates], plain.cv_results_["mean_test_score"], atol=1e-9
    )
    np.testing.assert_allclose(
        [c["std"] for c in ours.candidates], plain.cv_results_["std_test_score"], atol=1e-9
    )
    assert ours.params["alpha"] == plain.best_params_["clf__alpha"]


def test_ridge_path_predictions_equal_ridgeclassifier():
    X, y = _data(120, 30, 4)
    X_train, X_test, y_train = X[:80], X[80:], y[:80]
    alphas = [1e-2, 1.0, 100.0]
    predicted = ridge_path_predictions(X_train, y_train, X_test, alphas)
    for alpha, row in zip(alphas, predicted, strict=True):
        expected = RidgeClassifier(alpha=alpha).fit(X_train, y_train).predict(X_test)
        np.testing.assert_array_equal(row, expected)


def test_ridge_alpha_at_the_end_of_the_grid_is_a_warning():
    X, y = _data()
    found = pipelines.search("ridge", X, y, grid={"alpha": [1e3, 1e4, 1e5]}, cv=3)
    assert found.params["alpha"] == 1e3
    assert found.warnings == (
        "alpha=1000 is the lowest value of the grid (1000 to 100000): the best alpha may lie "
        "beyond it; extend the grid.",
    )
    middle = pipelines.search("ridge", X, y, grid={"alpha": [1e-3, 10.0, 1e6]}, cv=3)
    assert middle.params["alpha"] == 10.0 and middle.warnings == ()
    plateau = pipelines.search("ridge", X, y, grid={"alpha": [1e-4, 1e-3, 1e-2]}, cv=3)
    assert len({c["mean"] for c in plateau.candidates}) == 1  # a tie: no doubt about the end
    assert plateau.params["alpha"] == 1e-4 and plateau.warnings == ()


def test_ridge_default_grid_reaches_low_alphas():
    alphas = pipelines.get_head("ridge").default_grid["alpha"]
    assert min(alphas) <= 1e-3 and max(alphas) >= 1e6 and list(alphas) == sorted(alphas)


def _brute_force_knn(X_train, y_train, X_test, k, temperature):
    """Every similarity, a full sort, and the weighted vote, one row at a time."""
    unit = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)  # noqa: E731
    A, B = unit(X_train), unit(X_test)
    classes = np.unique(y_train)
    predictions = []
    for row in B:
        sims = A @ row
        order = np.argsort(-sims)[:k]
        votes = np.zeros(len(classes))
        for j in order:
            votes[np.searchsorted(classes, y_train[j])] += np.exp(sims[j] / temperature)
        predictions.append(classes[np.argmax(votes)])
    return np.array(predictions)


def test_knn_predictions_equal_brute_force_for_every_k_and_t():
    X, y = _data(200, 16, 4)
    X_train, X_test, y_train = X[:150], X[150:], y[:150]
    ks, temperatures = [1, 3, 7, 20, 150, 400], [0.02, 0.07, 0.5, 5.0]
    pairs = list(itertools.product(ks, temperatures))
    # a tiny block: many blocks of a few test rows each
    grid = knn_grid_predictions(X_train, y_train, X_test, pairs, block_size=450)
    for (k, t), row in zip(pairs, grid, strict=True):
        expected = _brute_force_knn(X_train, y_train, X_test, min(k, 150), t)
        np.testing.assert_array_equal(row, expected, err_msg=f"k={k}, T={t}")
        model = CosineKNNClassifier(n_neighbors=k, temperature=t, block_size=450)
        np.testing.assert_array_equal(model.fit(X_train, y_train).predict(X_test), expected)


def test_knn_block_size_bounds_the_similarity_block(monkeypatch):
    X, y = _data(100, 8, 3)
    seen = []
    real_argpartition = np.argpartition

    def spy(a, *args, **kwargs):
        seen.append(a.size)
        return real_argpartition(a, *args, **kwargs)

    monkeypatch.setattr(np, "argpartition", spy)
    knn_grid_predictions(X[:80], y[:80], X[80:], [(5, 0.1)], block_size=240)
    assert seen and max(seen) <= 240 and sum(seen) == 80 * 20


def test_knn_search_scores_equal_one_fit_per_candidate():
    X, y = _data(120, 10, 3)
    grid = {"n_neighbors": [1, 5, 20], "temperature": [0.05, 1.0]}
    found = pipelines.search("knn", X, y, grid=grid, cv=3, seed=2)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", CosineKNNClassifier())])
    folds = StratifiedKFold(3, shuffle=True, random_state=2)
    plain = GridSearchCV(pipe, {f"clf__{k}": v for k, v in grid.items()}, cv=folds).fit(X, y)
    np.testing.assert_allclose(
        [c["mean"] for c in found.candidates], plain.cv_results_["mean_test_score"], atol=1e-12
    )


def test_knn_is_a_scikit_learn_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(CosineKNNClassifier())


def test_new_heads_refit_into_plain_pipelines():
    X, y = _data()
    for name, params in [
        ("ridge", {"alpha": 1.0}),
        ("knn", {"n_neighbors": 5, "temperature": 0.1}),
    ]:
        pipe = build_pipeline(pipelines.get_head(name), {"pca": None, **params}, X, y, seed=0)
        assert pipe.score(X, y) > 0.6
        assert list(pipe.named_steps) == ["scale", "clf"]
