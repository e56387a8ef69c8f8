"""Refit a chosen head on the fitting rows and score it once on the test rows.

:func:`refit` fits the head with its chosen hyper-parameters, predicts the test rows (on
their test-time views with TTA) and times both; :func:`confidence` is the predicted class's
probability a predictions file records; :func:`heldout_metrics` and :func:`score_columns`
are the test scores a combination's record holds.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any, NamedTuple

import numpy as np
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score

from pipelines.heads._heads import Head, build_pipeline
from pipelines.heads._search import SearchResult, converged, single_blas_thread
from pipelines.rows._views import tta_predict

__all__ = [
    "Refit", "TestViews", "binomial_se", "confidence", "heldout_metrics", "predict_test", "refit",
    "score_columns",
]  # fmt: skip


class Refit(NamedTuple):
    """A refitted head and what it predicted on the test rows."""

    estimator: Any
    y_pred: np.ndarray
    confidence: np.ndarray
    predict_seconds_per_1000: float | None
    seconds: float  # the refit's
    converged: bool


class TestViews(NamedTuple):
    """Test-time augmentation: ``mode``, and the views of the test rows at ``positions``."""

    mode: str
    views: np.ndarray  # (n_with_views, n_tta, n_features)
    positions: np.ndarray  # their rows among the test rows


@single_blas_thread
def refit(
    head: Head, params: dict, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int,
    tta: TestViews | None = None, scale=None,
) -> Refit:  # fmt: skip
    """Fit ``head`` with ``params`` on ``(X, y)`` and predict ``X_test``.

    Parameters
    ----------
    head : Head
    params : dict
        The chosen hyper-parameters.
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    X_test : ndarray of shape (n_test, n_features)
    seed : int
        Seeds the estimator.
    tta : TestViews, optional
        Score the test rows that have test-time views on them.
    scale : transformer, optional
        Replaces the standard scaling step (a feature set's per-part scaler).

    Returns
    -------
    Refit
    """
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator = build_pipeline(head, params, X, y, seed=seed, scale=scale)
    seconds = time.perf_counter() - start
    return Refit(estimator, *predict_test(estimator, X_test, tta), seconds=seconds,
                 converged=converged(estimator[-1]))  # fmt: skip


def predict_test(
    estimator, X_test: np.ndarray, tta: TestViews | None = None
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """The predictions and confidences of the test rows, and the seconds per 1,000 rows.

    Rows with test-time views (``tta``) are scored on them; the others keep their plain
    prediction.
    """
    start = time.perf_counter()
    y_pred = estimator.predict(X_test) if len(X_test) else np.zeros(0, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    scores = confidence(estimator, X_test)
    if tta is not None and len(tta.positions):
        y_pred[tta.positions], scores[tta.positions] = tta_predict(estimator, tta.views, tta.mode)
    per_1000 = (time.perf_counter() - start) * 1000 / len(X_test) if len(X_test) else None
    return y_pred, scores, per_1000


def confidence(estimator, X: np.ndarray) -> np.ndarray:
    """The predicted class's probability; the softmax of the decision scores without one."""
    if len(X) == 0:
        return np.zeros(0)
    if hasattr(estimator, "predict_proba"):
        with contextlib.suppress(AttributeError):  # SVC(probability=False) has the name only
            return np.max(estimator.predict_proba(X), axis=1)
    scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if scores.ndim == 1:
        scores = np.column_stack([np.zeros_like(scores), scores])
    return np.max(softmax(scores, axis=1), axis=1)


def score_columns(found: SearchResult, refitted: Refit, y_test: np.ndarray) -> dict[str, Any]:
    """The columns of a combination's record that say what the search found and what the
    refitted head scored on test."""
    metrics = heldout_metrics(y_test, refitted.y_pred)
    return {
        "params": found.params,
        "cv_mean": found.cv_mean,
        "cv_std": found.cv_std,
        "candidates": list(found.candidates),
        "test_accuracy": metrics["accuracy"],
        "test_balanced_accuracy": metrics["balanced_accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "fit_seconds": found.seconds + refitted.seconds,
        "n_not_converged": found.n_not_converged + (0 if refitted.converged else 1),
        "warnings": " ".join(found.warnings),
        "predict_seconds_per_1000": refitted.predict_seconds_per_1000,
    }


def heldout_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the true classes) and macro-F1."""
    if len(y_true) == 0:
        return {"accuracy": math.nan, "balanced_accuracy": math.nan, "macro_f1": math.nan}
    recalls = [float(np.mean(y_pred[y_true == k] == k)) for k in np.unique(y_true)]
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def binomial_se(p: float, n: int) -> float:
    """The standard error of an accuracy ``p`` measured on ``n`` rows (NaN without rows)."""
    return math.sqrt(p * (1 - p) / n) if n else math.nan
