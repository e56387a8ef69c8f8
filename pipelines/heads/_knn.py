"""Cosine k-nearest-neighbour classification with temperature-weighted votes (DINO's kNN probe).

A test row's neighbours are the ``k`` training rows of highest cosine similarity
``s``; each votes for its class with weight ``exp(s / T)``, and the class with the
largest sum wins (the lowest class on an exact tie). Similarities come from
blocked matrix products: a block holds at most ``block_size`` similarities, so
memory never grows with ``n_train x n_test``.

Every ``(k, T)`` of a grid is scored from one pass: the ``k_max`` nearest
neighbours of each test row are found once, sorted, and the votes of every
``k`` are the cumulative sums of the weighted one-hot labels along that order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["CosineKNNClassifier", "knn_grid_predictions", "DEFAULT_BLOCK_SIZE"]

DEFAULT_BLOCK_SIZE = 1 << 24  # similarities per block: 64 MiB in float32


class CosineKNNClassifier(ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine similarity, votes weighted by ``exp(s / T)``.

    Parameters
    ----------
    n_neighbors : int, default=20
        ``k``; clipped to the number of training rows.
    temperature : float, default=0.07
        ``T`` of the vote weights (DINO's default).
    block_size : int, default=2**24
        Most similarities held at once.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    unit_features_ : ndarray of shape (n_samples, n_features)
        The training rows scaled to unit length.
    labels_ : ndarray of shape (n_samples,)
        Index into ``classes_`` of each training row.
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "block_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, *, n_neighbors=20, temperature=0.07, block_size=DEFAULT_BLOCK_SIZE):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.block_size = block_size

    def fit(self, X, y):
        """Store the unit-length training rows and their labels."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, self.labels_ = np.unique(y, return_inverse=True)
        self.unit_features_ = unit_rows(X)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Each class's share of the weighted votes, shape (n_samples, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        pair = (int(self.n_neighbors), float(self.temperature))
        votes = np.empty((len(X), len(self.classes_)))
        for rows, sims, labels in nearest(self.unit_features_, self.labels_, X, pair[0], self):
            votes[rows] = grid_votes(sims, labels, len(self.classes_), [pair])[0]
        return votes / votes.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The class with the largest weighted vote."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` scaled to unit L2 norm (all-zero rows stay zero), float32 or float64."""
    X = np.asarray(X, dtype=np.result_type(X.dtype, np.float32))
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0).astype(X.dtype)


def nearest(
    unit_train: np.ndarray, labels: np.ndarray, X: np.ndarray, k: int, estimator=None
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """``(rows, similarities, neighbour labels)`` of the ``k`` nearest rows, block by block.

    Similarities are sorted in decreasing order, shape ``(block rows, min(k, n_train))``.
    """
    block_size = DEFAULT_BLOCK_SIZE if estimator is None else int(estimator.block_size)
    query = unit_rows(np.asarray(X, dtype=unit_train.dtype))
    n_train = len(unit_train)
    k = min(int(k), n_train)
    step = max(1, block_size // max(n_train, 1))
    for start in range(0, len(query), step):
        rows = slice(start, min(len(query), start + step))
        sims = query[rows] @ unit_train.T
        if k < n_train:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(n_train), sims.shape)
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        yield (
            rows,
            np.take_along_axis(top_sims, order, 1),
            labels[np.take_along_axis(top, order, 1)],
        )


def grid_votes(
    sims: np.ndarray, labels: np.ndarray, n_classes: int, pairs: Sequence[tuple[int, float]]
) -> list[np.ndarray]:
    """Weighted class votes ``(n_rows, n_classes)`` for each ``(k, T)`` of ``pairs``.

    ``sims`` and ``labels`` are sorted neighbours, ``(n_rows, k_max)``. The weights
    are ``exp((s - s_max) / T)``: ``exp(s / T)`` scaled by a per-row constant, which
    keeps every winner and avoids overflow at small ``T``.
    """
    onehot = np.eye(n_classes)[labels]  # (n_rows, k_max, n_classes)
    shifted = sims.astype(np.float64) - sims[:, :1].astype(np.float64)
    cumulative = {}
    votes = []
    for k, temperature in pairs:
        if temperature not in cumulative:
            weights = np.exp(shifted / float(temperature))
            cumulative[temperature] = np.cumsum(weights[:, :, None] * onehot, axis=1)
        votes.append(cumulative[temperature][:, min(int(k), sims.shape[1]) - 1])
    return votes


def knn_grid_predictions(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    pairs: Sequence[tuple[int, float]],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> np.ndarray:
    """Labels predicted for ``X_test`` by ``CosineKNNClassifier(k, T)`` for every pair.

    One top-``k_max`` pass over blocked similarities serves every pair.

    Returns
    -------
    ndarray of shape (len(pairs), n_test)
    """
    classes, labels = np.unique(y, return_inverse=True)
    unit_train = unit_rows(np.asarray(X))
    k_max = max(int(k) for k, _ in pairs)
    predictions = np.empty((len(pairs), len(X_test)), dtype=classes.dtype)
    settings = CosineKNNClassifier(block_size=block_size)
    for rows, sims, neighbours in nearest(unit_train, labels, X_test, k_max, settings):
        for i, votes in enumerate(grid_votes(sims, neighbours, len(classes), pairs)):
            predictions[i, rows] = classes[np.argmax(votes, axis=1)]
    return predictions
