"""Exact cross-validation of a ridge classifier over a whole grid of alphas.

``RidgeClassifier(alpha)`` regresses the one-vs-all targets ``Y`` (+1 for the
row's class, -1 otherwise; one column for two classes) on centred features:
``W = (Xc^T Xc + alpha I)^-1 Xc^T Yc`` and ``b = mean(Y) - mean(X) W``. With one
eigendecomposition ``Xc^T Xc = V diag(l) V^T`` every alpha costs one scaling:
``W(alpha) = V diag(1 / (l + alpha)) V^T Xc^T Yc``. When a fold has fewer rows
than features the same holds for the ``n x n`` Gram matrix ``Xc Xc^T``
(``W = Xc^T U diag(1 / (m + alpha)) U^T Yc``), so a few-shot set stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ridge_path_predictions"]


def ridge_path_predictions(
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, alphas: Sequence[float]
) -> np.ndarray:
    """Class labels predicted for ``X_test`` by ``RidgeClassifier(alpha)`` for every alpha.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Training features (already scaled, as the pipeline's scaler leaves them).
    y : ndarray of shape (n_samples,)
    X_test : ndarray of shape (n_test, n_features)
    alphas : sequence of float
        Each > 0.

    Returns
    -------
    ndarray of shape (len(alphas), n_test)
        Labels from ``y``'s classes, what ``RidgeClassifier(alpha=a).fit(X, y).predict(X_test)``
        returns (up to floating-point rounding).
    """
    X = np.asarray(X, dtype=np.float64)
    X_test = np.asarray(X_test, dtype=np.float64)
    classes = np.unique(y)
    Y = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
    if len(classes) == 2:
        Y = Y[:, 1:]  # LabelBinarizer's single column: +1 for classes[1]
    x_mean, y_mean = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - x_mean, Y - y_mean
    T = X_test - x_mean
    if X.shape[0] >= X.shape[1]:
        eigenvalues, V = np.linalg.eigh(Xc.T @ Xc)
        left = T @ V  # (n_test, r)
        right = V.T @ (Xc.T @ Yc)  # (r, n_outputs)
    else:
        eigenvalues, U = np.linalg.eigh(Xc @ Xc.T)
        left = (T @ Xc.T) @ U
        right = U.T @ Yc
    eigenvalues = np.clip(eigenvalues, 0.0, None)  # rounding can leave tiny negatives
    predictions = np.empty((len(alphas), len(X_test)), dtype=classes.dtype)
    for i, alpha in enumerate(alphas):
        scores = left @ (right / (eigenvalues + float(alpha))[:, None]) + y_mean
        if scores.shape[1] == 1:
            predictions[i] = classes[(scores[:, 0] > 0).astype(int)]
        else:
            predictions[i] = classes[np.argmax(scores, axis=1)]
    return predictions
