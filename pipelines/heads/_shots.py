"""Few-shot learning curves: k training rows per class, seeded draws, honest selection inside each draw.

For each number of shots ``k`` and each draw ``r``:

1. :func:`draw_shots` picks exactly ``k`` training rows of every class, from the
   training rows only, with a generator seeded by ``(seed, k, r)``: the same
   arguments give the same rows, and a draw never sees a test row.
2. The head's hyper-parameters are chosen inside the draw (:func:`shot_splits`):
   stratified ``cv``-fold CV when ``k >= cv``, leave-one-out when ``2 <= k < cv``
   (each held-out row still leaves ``k - 1`` of its class), and with one shot,
   where nothing can be held out, the classifier's own defaults
   (:func:`fallback_params`).
3. The chosen head is refitted on the draw and scored on the full test split.

:func:`curve_summary` gives the mean and the 95 % interval over draws
(Student's t, ``R - 1`` degrees of freedom).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from featurecache.core._validation import ParameterError
from pipelines.heads._heads import PCA_KEY, Head, build_pipeline
from pipelines.heads._search import search_heads, stratified_splits

__all__ = ["draw_shots", "shot_splits", "fallback_params", "learning_curve", "curve_summary"]

ALL = "all"


def parse_shots(shots: str | Sequence[int | str]) -> list[int | str]:
    """``"1,5,all"`` or ``[1, 5, "all"]`` -> ``[1, 5, "all"]``, ascending, ``"all"`` last.

    Raises
    ------
    ParameterError
        A value that is neither a positive int nor ``"all"``.
    """
    values = shots.split(",") if isinstance(shots, str) else list(shots)
    parsed: set[int] = set()
    with_all = False
    for value in values:
        text = str(value).strip().lower()
        if text == ALL:
            with_all = True
            continue
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            raise ParameterError(
                "shots", "fit", "a list of positive ints and 'all'", value, "For example 1,5,all."
            )
        parsed.add(int(text))
    return [*sorted(parsed), *([ALL] if with_all else [])]


def draw_shots(y: np.ndarray, rows: np.ndarray, shots: int, draw: int, seed: int) -> np.ndarray:
    """Indices of exactly ``shots`` rows of every class of ``y[rows]``, from ``rows`` only.

    Parameters
    ----------
    y : ndarray of shape (n_samples,)
        Labels of every row.
    rows : ndarray of int
        The rows a draw may use (the training split).
    shots, draw, seed : int
        The draw is a function of ``(seed, shots, draw)`` alone.

    Returns
    -------
    ndarray of int, sorted

    Raises
    ------
    ParameterError
        A class has fewer than ``shots`` rows.
    """
    rng = np.random.default_rng([int(seed), int(shots), int(draw)])
    rows = np.sort(np.asarray(rows))
    chosen = []
    for label in np.unique(y[rows]):
        members = rows[y[rows] == label]
        if len(members) < shots:
            raise ParameterError(
                "shots",
                "fit",
                f"at most {len(members)} (the training rows of class {int(label)})",
                shots,
                "Leave that value out.",
            )
        chosen.append(rng.choice(members, size=shots, replace=False))
    return np.sort(np.concatenate(chosen))


def shot_splits(y: np.ndarray, shots: int, cv: int, seed: int) -> list | None:
    """Folds that choose hyper-parameters inside a draw, or ``None`` with one shot."""
    if shots >= cv:
        return stratified_splits(y, cv, seed)
    if shots >= 2:
        everything = np.arange(len(y))
        return [(np.delete(everything, i), np.array([i])) for i in everything]
    return None


def fallback_params(head: Head, grid: Mapping[str, list]) -> dict:
    """The grid value nearest the classifier's own default, for each key of ``grid``.

    Numbers are compared on a log scale; a default that is not a number and not in
    the grid falls back to the grid's first value. ``pca`` takes its first value.
    """
    defaults = head.make_classifier(0).get_params()
    chosen = {}
    for key, values in grid.items():
        default = defaults.get(key)
        if key == PCA_KEY or default is None:
            chosen[key] = values[0]
        elif default in values:
            chosen[key] = default
        elif all(_positive(v) for v in [default, *values]):
            chosen[key] = min(values, key=lambda v: abs(math.log(float(v) / float(default))))
        else:
            chosen[key] = values[0]
    return chosen


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def learning_curve(
    head: Head,
    grid: Mapping[str, list],
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    shots: Sequence[int],
    draws: int = 5,
    cv: int = 5,
    seed: int = 0,
    n_jobs: int | None = 1,
) -> list[dict]:
    """One row per (shots, draw): the chosen parameters, their CV score and the test accuracy.

    Draws come from ``X, y`` (the training rows) only; ``X_test, y_test`` only score.

    Returns
    -------
    list of dict
        ``shots, draw, params, selection, cv_mean, cv_std, test_accuracy, n_train, fit_seconds``.
    """
    rows = []
    pool = np.arange(len(y))
    for k in shots:
        for r in range(draws):
            start = time.perf_counter()
            chosen = draw_shots(y, pool, k, r, seed)
            X_k, y_k = X[chosen], y[chosen]
            splits = shot_splits(y_k, k, cv, seed)
            if splits is None:
                params, cv_mean, cv_std, selection = (
                    fallback_params(head, grid),
                    None,
                    None,
                    "defaults",
                )
            else:
                found = search_heads(
                    [head], {head.name: grid}, X_k, y_k, splits, seed=seed, n_jobs=n_jobs
                )[head.name]
                params, cv_mean, cv_std = found.params, found.cv_mean, found.cv_std
                selection = f"{cv}-fold CV" if k >= cv else "leave-one-out"
            estimator = build_pipeline(head, params, X_k, y_k, seed=seed)
            accuracy = float(np.mean(estimator.predict(X_test) == y_test)) if len(y_test) else None
            rows.append(
                {
                    "shots": int(k),
                    "draw": int(r),
                    "params": dict(params),
                    "selection": selection,
                    "cv_mean": cv_mean,
                    "cv_std": cv_std,
                    "test_accuracy": accuracy,
                    "n_train": int(len(chosen)),
                    "fit_seconds": time.perf_counter() - start,
                }
            )
    return rows


def curve_summary(accuracies: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % interval (Student's t) of the draws' accuracies."""
    values = np.asarray([a for a in accuracies if a is not None], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), 0.0
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)
