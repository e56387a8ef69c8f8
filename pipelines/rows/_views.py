"""Training on augmented views, grouped by sample, and test-time augmentation (TTA).

A views cache (``featurecache extract --views K --augment SPEC``) holds ``K`` views of
every train (and val) row, view 0 being the plain one; with ``--tta SPEC`` it also holds
``T`` test-time views of every row. Stage 2 uses them in two ways:

- ``fit(..., views="train")`` trains every head on all ``K`` views of every training
  row. Views of one image are near copies, so the selection folds are drawn **per
  sample** and then expanded to the sample's views (:func:`expand_splits`): no view of a
  validation image is ever in the training part of a fold. The folds are the very folds
  a plain fit draws (``StratifiedKFold`` on the samples, same seed), which makes a CV
  difference between plain and views a paired one. The held-out samples are scored on
  their plain view (view 0), as test is, so CV means of plain and views fits compare.
- ``fit(..., tta="mean-proba")`` scores every test row on the mean of the head's
  ``predict_proba`` over the row's ``T`` test-time views; ``"mean-feature"`` applies the
  head to the mean of the views' features. Heads without ``predict_proba`` (``linsvm``,
  ``svm``, ``ridge``) average their ``decision_function`` under ``"mean-proba"`` instead
  (for the linear ones, the same prediction as ``"mean-feature"``). TTA changes test
  scoring only: CV is scored on view 0 either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

__all__ = [
    "VIEWS_MODES",
    "TTA_MODES",
    "PLAIN",
    "Variant",
    "expand_views",
    "expand_splits",
    "tta_predict",
]

#: What ``fit(..., views=...)`` accepts: the rows that train on their augmented views.
VIEWS_MODES = ("train",)
#: What ``fit(..., tta=...)`` accepts.
TTA_MODES = ("mean-proba", "mean-feature")
#: The ``views`` and ``tta`` value of a plain fit in ``results.csv``.
PLAIN = "none"


@dataclass(frozen=True)
class Variant:
    """How a combination was trained and scored: plain, on views, with or without TTA.

    Attributes
    ----------
    views : {"none", "train"}
    n_views : int
        Views per training row (1 when plain).
    tta : {"none", "mean-proba", "mean-feature"}
    n_tta : int
        Test-time views per test row (1 without TTA).
    """

    views: str = PLAIN
    n_views: int = 1
    tta: str = PLAIN
    n_tta: int = 1

    @property
    def is_plain(self) -> bool:
        return self.views == PLAIN and self.tta == PLAIN

    @property
    def name(self) -> str:
        """The suffix of the combination's files: ``""`` when plain, else e.g.
        ``views`` or ``views+tta-mean-proba``."""
        parts = [] if self.views == PLAIN else ["views"]
        parts += [] if self.tta == PLAIN else [f"tta-{self.tta}"]
        return "+".join(parts)

    @property
    def label(self) -> str:
        """For people: ``plain``, ``views ×4``, ``views ×4, TTA mean-proba ×3``."""
        parts = [] if self.views == PLAIN else [f"views ×{self.n_views}"]
        parts += [] if self.tta == PLAIN else [f"TTA {self.tta} ×{self.n_tta}"]
        return ", ".join(parts) or "plain"

    def columns(self) -> dict:
        """The ``results.csv`` columns of the variant."""
        return {"views": self.views, "n_views": self.n_views, "tta": self.tta, "n_tta": self.n_tta}


def expand_views(
    X: np.ndarray, y: np.ndarray, views: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every view of every row as a row of its own, with its group (the row it came from).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The plain view (view 0) of every row.
    y : ndarray of shape (n_samples,)
    views : ndarray of shape (n_with_views, n_views, n_features)
        The views of some rows; view 0 (the plain view, already in ``X``) is skipped.
    positions : ndarray of shape (n_with_views,)
        The row of ``X`` each entry of ``views`` belongs to.

    Returns
    -------
    X_all : ndarray of shape (n_samples + n_with_views * (n_views - 1), n_features)
        ``X`` first (so row ``i`` is still sample ``i``), then views 1, 2, … of each row.
    y_all : ndarray of shape (n_rows,)
    groups : ndarray of shape (n_rows,)
        The row of ``X`` each row of ``X_all`` belongs to.
    """
    extra = views[:, 1:, :]
    n_extra = extra.shape[1]
    groups = np.concatenate([np.arange(len(X)), np.repeat(positions, n_extra)])
    X_all = np.concatenate([X, extra.reshape(-1, X.shape[1]).astype(X.dtype, copy=False)])
    return X_all, y[groups], groups


def expand_splits(
    splits: list[tuple[np.ndarray, np.ndarray]], groups: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sample-level ``(train, score)`` splits as row-level splits of :func:`expand_views`
    rows: the training part takes every view of its samples, the scored part only their
    plain view (row ``i`` of ``X_all`` is sample ``i``'s view 0).

    No view of a scored sample is in the training part: the folds are grouped by sample.
    """
    return [(np.flatnonzero(np.isin(groups, train)), np.asarray(score)) for train, score in splits]


def tta_predict(estimator, views: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Predict rows from their test-time views.

    Parameters
    ----------
    estimator : fitted classifier (a ``Pipeline``)
    views : ndarray of shape (n_samples, n_views, n_features)
    mode : {"mean-proba", "mean-feature"}
        ``"mean-proba"``: the class with the highest ``predict_proba`` averaged over the
        views (``decision_function`` averaged for heads without ``predict_proba``);
        ``"mean-feature"``: the head applied to the mean feature of the views.

    Returns
    -------
    y_pred : ndarray of shape (n_samples,)
        Class indices.
    confidence : ndarray of shape (n_samples,)
        The predicted class's mean probability (``"mean-proba"``), or what
        ``confidence`` gives for the mean feature; for heads without probabilities the
        softmax of the mean decision scores.
    """
    n_samples, n_views, n_features = views.shape
    if n_samples == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if mode == "mean-feature":
        mean = views.mean(axis=1, dtype=np.float64).astype(views.dtype)
        scores = _class_scores(estimator, mean)
    else:
        flat = _class_scores(estimator, views.reshape(n_samples * n_views, n_features))
        scores = flat.reshape(n_samples, n_views, -1).mean(axis=1)
    y_pred = np.asarray(estimator.classes_, dtype=np.int64)[np.argmax(scores, axis=1)]
    if not _has_proba(estimator):
        scores = softmax(scores, axis=1)
    return y_pred, np.max(scores, axis=1)


def _has_proba(estimator) -> bool:
    # A Pipeline (and SVC(probability=False)) hides the name when it cannot predict it.
    return hasattr(estimator, "predict_proba")


def _class_scores(estimator, X: np.ndarray) -> np.ndarray:
    """``predict_proba`` of ``X``, or its ``decision_function`` (one column per class)."""
    if _has_proba(estimator):
        return np.asarray(estimator.predict_proba(X), dtype=np.float64)
    scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if scores.ndim == 1:  # binary: the score of classes_[1]
        scores = np.column_stack([np.zeros_like(scores), scores])
    return scores
