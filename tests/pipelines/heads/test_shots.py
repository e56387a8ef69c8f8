"""Few-shot draws and learning curves."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

import pipelines
from featurecache.core._validation import ParameterError
from pipelines.heads._shots import (
    curve_summary,
    draw_shots,
    fallback_params,
    learning_curve,
    parse_shots,
    shot_splits,
)


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(
        n_samples=300, n_features=10, n_informative=5, n_classes=3, random_state=0
    )
    split = np.where(np.arange(300) % 3 == 0, "test", "train")
    return (
        X.astype(np.float32),
        y,
        np.flatnonzero(split == "train"),
        np.flatnonzero(split == "test"),
    )


@pytest.mark.parametrize("shots", [1, 5, 25])
def test_draws_have_k_rows_per_class_from_train_only_and_repeat(data, shots):
    _, y, train, test = data
    for draw in range(3):
        rows = draw_shots(y, train, shots, draw, seed=7)
        assert np.bincount(y[rows]).tolist() == [shots] * 3
        assert not np.isin(rows, test).any() and np.isin(rows, train).all()
        np.testing.assert_array_equal(rows, draw_shots(y, train, shots, draw, seed=7))
    assert not np.array_equal(draw_shots(y, train, shots, 0, 7), draw_shots(y, train, shots, 1, 7))
    assert not np.array_equal(draw_shots(y, train, shots, 0, 7), draw_shots(y, train, shots, 0, 8))


def test_a_draw_larger_than_a_class_is_refused(data):
    _, y, train, _ = data
    with pytest.raises(ParameterError, match=r"The 'shots' parameter of fit must be at most \d+"):
        draw_shots(y, train, 500, 0, seed=0)


def test_parse_shots():
    assert parse_shots("25,1,all, 5") == [1, 5, 25, "all"]
    assert parse_shots([10]) == [10]
    with pytest.raises(ParameterError, match="The 'shots' parameter of fit must be a list"):
        parse_shots("1,0")


def test_selection_inside_a_draw():
    y = np.repeat([0, 1, 2], 5)
    assert len(shot_splits(y, 5, 5, 0)) == 5  # stratified k-fold
    y2 = np.repeat([0, 1, 2], 3)
    loo = shot_splits(y2, 3, 5, 0)
    assert len(loo) == 9 and all(len(test) == 1 for _, test in loo)
    assert shot_splits(np.array([0, 1, 2]), 1, 5, 0) is None


def test_one_shot_uses_the_classifier_defaults():
    logreg = pipelines.get_head("logreg")
    assert fallback_params(logreg, logreg.grid())["C"] == 1.0
    knn = pipelines.get_head("knn")
    chosen = fallback_params(knn, knn.grid())
    assert chosen["n_neighbors"] == 20 and chosen["temperature"] == 0.07
    ridge = pipelines.get_head("ridge")
    assert fallback_params(ridge, ridge.grid({"alpha": [0.1, 3.0, 100.0]}))["alpha"] == 3.0


def test_learning_curve_rows_and_summary(data):
    X, y, train, test = data
    head = pipelines.get_head("ridge")
    rows = learning_curve(
        head,
        head.grid(),
        X[train],
        y[train],
        X[test],
        y[test],
        shots=[1, 3, 10],
        draws=2,
        cv=5,
        seed=0,
    )
    assert [(r["shots"], r["draw"]) for r in rows] == [
        (1, 0), (1, 1), (3, 0), (3, 1), (10, 0), (10, 1)
    ]  # fmt: skip
    assert [r["selection"] for r in rows[::2]] == ["defaults", "leave-one-out", "5-fold CV"]
    assert all(0 <= r["test_accuracy"] <= 1 and r["n_train"] == 3 * r["shots"] for r in rows)
    again = learning_curve(
        head,
        head.grid(),
        X[train],
        y[train],
        X[test],
        y[test],
        shots=[1, 3, 10],
        draws=2,
        cv=5,
        seed=0,
    )
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in rows]
    mean, half = curve_summary([0.5, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(12.7062 * 0.1, rel=1e-4)
