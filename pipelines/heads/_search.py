"""Choose a head's hyper-parameters by stratified k-fold cross-validation, fast.

The score of a candidate is what :class:`~sklearn.model_selection.GridSearchCV`
reports as ``mean_test_score`` for the same pipeline: the mean accuracy over
the folds of ``StratifiedKFold(cv, shuffle=True, random_state=seed)``. It is
computed with less work:

- each fold is scaled once (``StandardScaler`` fitted on the fold's training
  part), and projected once per ``pca`` value, instead of once per candidate;
- along a head's ``path_param`` (``C`` for ``logreg``) candidates are fitted in
  ascending order with ``warm_start``, each starting from the previous solution
  of the same fold or, when it has a lower objective, from a linear
  extrapolation (in ``log C``) of the two previous solutions; the optimum is
  the same, only the starting point of the solver changes, and it never uses
  rows outside the fold's training part;
- folds (and heads) run in parallel with joblib.

``ConvergenceWarning`` is silenced inside the search; fits that stop at
``max_iter`` are counted in :attr:`SearchResult.n_not_converged` and logged.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import ParameterGrid, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from featurecache.core._validation import check_int
from featurecache.exceptions import InvalidArgumentError
from pipelines.heads._heads import PCA_KEY, Head, get_head, make_pca

__all__ = ["SearchResult", "search", "stratified_splits"]

logger = logging.getLogger(__name__)

Splits = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SearchResult:
    """Outcome of a search for one head.

    Attributes
    ----------
    head : str
    params : dict
        The chosen grid values (the first best in grid order on ties).
    cv_mean, cv_std : float
        Mean and standard deviation of the chosen candidate's accuracy over the
        folds; with a single validation split, ``cv_std`` is the binomial
        standard error ``sqrt(p (1 - p) / n_val)``.
    candidates : tuple of dict
        Every candidate in grid order: ``params``, ``scores`` (one per fold),
        ``mean``, ``std``.
    n_splits : int
    n_not_converged : int
        Fits that stopped at ``max_iter``.
    seconds : float
        Time spent in the folds, summed over workers.
    warnings : tuple of str
        Doubts about the choice, one sentence each: a chosen value of one of the
        head's ``edge_params`` at either end of its grid.
    """

    head: str
    params: dict
    cv_mean: float
    cv_std: float
    candidates: tuple[dict, ...]
    n_splits: int
    n_not_converged: int
    seconds: float
    warnings: tuple[str, ...] = ()


def stratified_splits(y: np.ndarray, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``StratifiedKFold(cv, shuffle=True, random_state=seed)`` folds of ``y``.

    Raises
    ------
    InvalidArgumentError
        ``cv < 2``, or a class with fewer than ``cv`` rows.
    """
    cv = check_int(int(cv) if isinstance(cv, np.integer) else cv, "cv", "search", low=2)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise InvalidArgumentError(
            f"cross-validation needs at least 2 classes; the training rows have {len(classes)}."
        )
    if counts.min() < cv:
        k, n = int(classes[np.argmin(counts)]), int(counts.min())
        fewer = f"use cv={n} or fewer folds, " if n >= 2 else ""
        raise InvalidArgumentError(
            f"cv={cv} needs at least {cv} training rows per class; class {k} has {n}: "
            f"{fewer}add training rows of class {k}, or leave the class out."
        )
    folds = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=seed)
    return list(folds.split(np.zeros((len(y), 1)), y))


def search(
    head: str | Head,
    X: np.ndarray,
    y: np.ndarray,
    *,
    grid: Mapping[str, Sequence] | None = None,
    cv: int | Splits = 5,
    seed: int = 0,
    n_jobs: int | None = 1,
) -> SearchResult:
    """Cross-validate every candidate of ``grid`` and return the best.

    Parameters
    ----------
    head : str or Head
        A name from :func:`~pipelines.list_heads`.
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    grid : mapping, optional
        Updates the head's default grid (``{"C": [0.1, 1]}``).
    cv : int or sequence of (train, test) index arrays
        Number of stratified shuffled folds, or explicit splits (one split =
        a validation split).
    seed : int
        Seeds the folds and the estimators.
    n_jobs : int or None
        Parallel folds (joblib; the active ``parallel_config`` backend is used).

    Returns
    -------
    SearchResult
    """
    head = get_head(head) if isinstance(head, str) else head
    grids = {head.name: head.grid(grid)}
    splits = stratified_splits(y, cv, seed) if isinstance(cv, (int, np.integer)) else list(cv)
    return search_heads([head], grids, X, y, splits, seed=seed, n_jobs=n_jobs)[head.name]


def search_heads(
    heads: Sequence[Head],
    grids: Mapping[str, Mapping[str, list]],
    X: np.ndarray,
    y: np.ndarray,
    splits: Splits,
    *,
    seed: int,
    n_jobs: int | None,
    scale: BaseEstimator | None = None,
) -> dict[str, SearchResult]:
    """Search several heads on the same data; every (head, fold) is one joblib task.

    When the tasks do not fill the last round of workers (5 folds on 2 workers), the
    folds of that round are cut along the ``path_param`` chain into pieces that keep
    every worker busy: the first piece runs as usual, each later piece starts from
    the solution of an earlier fold (of the same head, at the preceding grid value)
    instead of its own. The optimum of each fit is unchanged; only the solver's
    starting point is, so scores can differ within the solver's tolerance between
    numbers of workers. The cuts balance the solver iterations each candidate took on the
    earlier folds (not their times, so the same call cuts the same way every run).
    ``scale`` replaces each fold's ``StandardScaler`` (a feature set's per-part scaler,
    cloned and fitted on the fold's training rows).
    """
    tasks = [(h, f) for h in range(len(heads)) for f in range(len(splits))]
    n_workers = effective_n_jobs(n_jobs)
    tail = len(tasks) % n_workers if len(tasks) > n_workers else 0
    if not any(head.path_param for head in heads):
        tail = 0
    first, last = tasks[: len(tasks) - tail], tasks[len(tasks) - tail :]

    def run(task, only=None, starts=None):
        head = heads[task[0]]
        train, test = splits[task[1]]
        return delayed(fold_scores)(
            head, grids[head.name], X, y, train, test, seed, only=only, starts=starts,
            scale=scale,
        )  # fmt: skip

    runs = dict(zip(first, Parallel(n_jobs=n_jobs)(run(t) for t in first), strict=True))
    if last:
        pieces = [
            (task, only, starts)
            for task in last
            for only, starts in _pieces(heads[task[0]], grids, task, runs, n_workers // tail)
        ]
        outputs = Parallel(n_jobs=n_jobs)(run(t, only, starts) for t, only, starts in pieces)
        for task in last:
            parts = [o for (t, _, _), o in zip(pieces, outputs, strict=True) if t == task]
            runs[task] = FoldRun.merge(parts)
    results = {}
    for h, head in enumerate(heads):
        chunk = [runs[(h, f)] for f in range(len(splits))]
        results[head.name] = _summarize(
            head,
            grids[head.name],
            np.array([c.scores for c in chunk]),  # (n_splits, n_candidates)
            n_val=len(splits[0][1]),
            n_not_converged=sum(c.n_not_converged for c in chunk),
            seconds=sum(c.seconds for c in chunk),
        )
    return results


def _pieces(head: Head, grids, task, runs, n_pieces: int) -> list[tuple[set | None, dict]]:
    """``(only, starts)`` of each piece of a last-round fold: ``[(None, {})]`` when whole."""
    donors = [run for (h, _), run in runs.items() if h == task[0]]
    if head.path_param is None or n_pieces < 2 or not donors:
        return [(None, {})]
    candidates = list(ParameterGrid(grids[head.name]))
    chains = [
        c for members in _by_pca(candidates).values() for c in _chains(head, candidates, members)
    ]
    order = [i for chain in chains for i in chain]
    if len(order) < 2:
        return [(None, {})]
    previous = {chain[j]: chain[j - 1] for chain in chains for j in range(1, len(chain))}
    cost = np.array([np.mean([d.costs[i] for d in donors]) for i in order])
    cumulative = np.cumsum(cost)
    targets = cumulative[-1] * np.arange(1, n_pieces) / n_pieces
    cuts = sorted({int(np.argmin(np.abs(cumulative[:-1] - t))) + 1 for t in targets})
    pieces = []
    for segment in np.split(np.array(order), cuts):
        first = int(segment[0])
        starts = {}
        if first in previous:
            before = previous[first]
            value = float(candidates[before][head.path_param])
            starts[first] = (value, *donors[0].solutions[before])
        pieces.append(({int(i) for i in segment}, starts))
    return pieces


def _summarize(
    head: Head,
    grid: Mapping[str, list],
    scores: np.ndarray,
    *,
    n_val: int,
    n_not_converged: int,
    seconds: float,
) -> SearchResult:
    means = scores.mean(axis=0)
    if scores.shape[0] > 1:
        stds = scores.std(axis=0)
    else:
        stds = np.sqrt(np.clip(means * (1 - means), 0, None) / max(n_val, 1))
    # Round so that means equal up to float noise tie, then the first in grid order wins.
    candidates = list(ParameterGrid(grid))
    name = head.name
    best = int(np.argmax(np.round(means, 12)))
    if n_not_converged:
        logger.info("%s: %d fits stopped at max_iter", name, n_not_converged)
    doubts = edge_warnings(head, grid, candidates, np.round(means, 12), best)
    for doubt in doubts:
        logger.info("%s: %s", name, doubt)
    return SearchResult(
        head=name,
        params=candidates[best],
        cv_mean=float(means[best]),
        cv_std=float(stds[best]),
        candidates=tuple(
            {
                "params": c,
                "scores": [float(s) for s in scores[:, i]],
                "mean": float(means[i]),
                "std": float(stds[i]),
            }
            for i, c in enumerate(candidates)
        ),
        n_splits=int(scores.shape[0]),
        n_not_converged=int(n_not_converged),
        seconds=float(seconds),
        warnings=doubts,
    )


def edge_warnings(
    head: Head, grid: Mapping[str, list], candidates: list[dict], means: np.ndarray, best: int
) -> tuple[str, ...]:
    """A sentence for each of ``head.edge_params`` chosen at the end of a grid of 3+ values
    and strictly better there than at the next value inwards (a tied plateau is no doubt)."""
    chosen = candidates[best]
    doubts = []
    for key in head.edge_params:
        values = sorted(float(v) for v in grid.get(key, ()))
        if len(values) < 3:
            continue
        value = float(chosen[key])
        end = "lowest" if value == values[0] else "highest" if value == values[-1] else None
        if end is None:
            continue
        inward = values[1] if end == "lowest" else values[-2]
        neighbour = next(
            i
            for i, c in enumerate(candidates)
            if float(c[key]) == inward and all(c[k] == v for k, v in chosen.items() if k != key)
        )
        if means[neighbour] >= means[best]:
            continue
        doubts.append(
            f"{key}={value:g} is the {end} value of the grid ({values[0]:g} to "
            f"{values[-1]:g}): the best {key} may lie beyond it; extend the grid."
        )
    return tuple(doubts)


def single_blas_thread(function: Callable) -> Callable:
    """Run ``function`` with one BLAS thread.

    Parallelism comes from joblib across folds and heads; a multi-threaded BLAS on
    top of it oversubscribes the cores, and on small matrices its threads spin:
    a 100 x 1,280 logreg search measured 33 s with two OpenBLAS threads and 1 s with one.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class FoldRun:
    """What :func:`fold_scores` measured on one fold (NaN for candidates it skipped)."""

    scores: list[float]
    n_not_converged: int
    seconds: float
    costs: dict[int, float]  # solver iterations of each candidate (+1): its cost, deterministic
    solutions: dict[int, tuple[np.ndarray, np.ndarray]]

    @staticmethod
    def merge(parts: Sequence[FoldRun]) -> FoldRun:
        """One fold's run from the runs of its pieces."""
        scores = [
            next((p.scores[i] for p in parts if not math.isnan(p.scores[i])), math.nan)
            for i in range(len(parts[0].scores))
        ]
        return FoldRun(
            scores=scores,
            n_not_converged=sum(p.n_not_converged for p in parts),
            seconds=sum(p.seconds for p in parts),
            costs={i: c for p in parts for i, c in p.costs.items()},
            solutions={i: w for p in parts for i, w in p.solutions.items()},
        )


@single_blas_thread
def fold_scores(
    head: Head,
    grid: Mapping[str, list],
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
    *,
    only: set[int] | None = None,
    starts: Mapping[int, tuple[float, np.ndarray, np.ndarray]] | None = None,
    scale: BaseEstimator | None = None,
) -> FoldRun:
    """Accuracy of every candidate (grid order) on one fold.

    ``only`` restricts the fits to these candidate indices (the others score NaN);
    ``starts[i] = (path value, coef, intercept)`` starts candidate ``i``'s fit from
    that solution when ``i`` opens a run of its chain. ``scale`` (cloned) replaces the
    fold's ``StandardScaler``.
    """
    start = time.perf_counter()
    starts = starts or {}
    candidates = list(ParameterGrid(grid))
    scores = [math.nan] * len(candidates)
    costs: dict[int, float] = {}
    solutions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    not_converged = 0
    X_train = np.ascontiguousarray(X[train], dtype=np.float32)  # a copy: scaled in place
    scaler = (clone(scale) if scale is not None else StandardScaler(copy=False)).fit(X_train)
    X_train = scaler.transform(X_train)
    X_test = scaler.transform(np.ascontiguousarray(X[test], dtype=np.float32))
    y_train, y_test = y[train], y[test]
    with warnings.catch_warnings():
        # Counted below instead: a grid deliberately includes barely regularised fits.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for n_components, members in _by_pca(candidates).items():
            members = [i for i in members if only is None or i in only]
            if not members:
                continue
            pca = make_pca(n_components, X_train.shape[0], X_train.shape[1], seed)
            A = pca.fit_transform(X_train) if pca is not None else X_train
            B = pca.transform(X_test) if pca is not None else X_test
            if head.score_grid is not None:
                predicted = head.score_grid(
                    [candidates[i] for i in members], A, y_train, B, seed=seed
                )
                for i, y_pred in zip(members, predicted, strict=True):
                    scores[i] = float(np.mean(y_pred == y_test))
                continue
            for chain in _chains(head, candidates, members):
                estimator = None
                history: list[tuple[float, np.ndarray, np.ndarray]] = []
                for i in chain:
                    if estimator is None and i in starts:
                        history = [starts[i]]
                        estimator = head.classifier(candidates[i], A, seed=seed)
                        estimator.set_params(warm_start=True)
                        estimator.coef_, estimator.intercept_ = (w.copy() for w in starts[i][1:])
                    else:
                        estimator = _next_estimator(
                            head, candidates[i], A, y_train, seed, estimator, history
                        )
                    estimator.fit(A, y_train)
                    scores[i] = float(np.mean(estimator.predict(B) == y_test))
                    not_converged += not converged(estimator)
                    if head.path_param is not None:
                        solution = (estimator.coef_.copy(), estimator.intercept_.copy())
                        history.append((float(candidates[i][head.path_param]), *solution))
                        solutions[i] = solution
                    costs[i] = 1.0 + float(np.max(getattr(estimator, "n_iter_", 0)))
    return FoldRun(scores, not_converged, time.perf_counter() - start, costs, solutions)


def _by_pca(candidates: list[dict]) -> dict[Any, list[int]]:
    """Candidate indices grouped by their ``pca`` value, in grid order."""
    groups: dict[Any, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(c[PCA_KEY], []).append(i)
    return groups


def _chains(head: Head, candidates: list[dict], members: list[int]) -> list[list[int]]:
    """Candidates grouped by everything but the path parameter, each group ascending."""
    if head.path_param is None:
        return [[i] for i in members]
    groups: dict[str, list[int]] = {}
    for i in members:
        rest = {k: v for k, v in candidates[i].items() if k != head.path_param}
        groups.setdefault(repr(sorted(rest.items())), []).append(i)
    return [
        sorted(group, key=lambda i: (float(candidates[i][head.path_param]), i))
        for group in groups.values()
    ]


def _next_estimator(head, params, X, y, seed, previous, history):
    """The estimator for the next candidate of a chain, warm-started where possible."""
    if head.path_param is None or previous is None:
        estimator = head.classifier(params, X, seed=seed)
        if head.path_param is not None:
            estimator.set_params(warm_start=True)
        return estimator
    value = float(params[head.path_param])
    previous.set_params(**{head.path_param: value})
    if len(history) >= 2:
        (c1, w1, b1), (c2, w2, b2) = history[-2], history[-1]
        if 0 < c1 < c2 < value and hasattr(previous, "predict_log_proba"):
            # Predictor step along the regularisation path (linear in log C), kept only
            # when it lowers the new objective below that of the previous solution.
            r = min(math.log(value / c2) / math.log(c2 / c1), 2.0)
            guess = (w2 + r * (w2 - w1), b2 + r * (b2 - b1))
            if _objective(previous, guess, X, y, value) < _objective(
                previous, (w2, b2), X, y, value
            ):
                previous.coef_, previous.intercept_ = guess
            else:
                previous.coef_, previous.intercept_ = w2.copy(), b2.copy()
    return previous


def _objective(estimator, weights, X, y, C: float) -> float:
    """LogisticRegression's L2 objective (mean log-loss + ||coef||² / (2 C n)) at ``weights``.

    The log-probabilities come from ``log_softmax`` of the decision function, not from
    ``predict_log_proba``, whose ``log(softmax)`` underflows to ``log(0)`` (a warning and
    ``-inf``) when an extrapolated guess is far off.
    """
    estimator.coef_, estimator.intercept_ = weights
    scores = estimator.decision_function(X)
    if scores.ndim == 1:  # binary: P(classes_[1]) = sigmoid(score)
        scores = np.column_stack([np.zeros_like(scores), scores])
    log_proba = log_softmax(scores, axis=1)
    columns = np.searchsorted(estimator.classes_, y)
    loss = -float(np.mean(log_proba[np.arange(len(y)), columns]))
    return loss + float(np.sum(np.square(weights[0], dtype=np.float64))) / (2.0 * C * len(y))


def converged(estimator) -> bool:
    """False when a fitted estimator stopped at ``max_iter``."""
    max_iter = estimator.get_params().get("max_iter")
    n_iter = getattr(estimator, "n_iter_", None)
    if max_iter is None or n_iter is None or max_iter < 0:
        return True
    return int(np.max(n_iter)) < int(max_iter)
