"""Fit the heads of a layer larger than the memory budget, its rows streamed.

Each head says how it was fitted (:class:`Strategy`, written to ``results.csv``):

- ``ridge``: exact. One pass sums, per selection fold, the counts, the feature sums, the
  Gram matrix ``X^T X`` and ``X^T Y`` in float64 (:class:`~pipelines.rows._stream.GroupStats`);
  the training part of a fold is the total minus the fold. Its scaler and its
  eigendecomposition follow from those sums (``n_features x n_features`` memory), and a
  second pass scores every held-out row for every alpha: the CV scores equal the in-memory
  :func:`~pipelines.heads._ridge.ridge_path_predictions` up to float rounding. The refit on every
  row comes from the same sums.
- ``logreg``: the objective of scikit-learn's ``LogisticRegression`` (mean log-loss, L2
  penalty ``||W||^2 / (2 C n)``, multinomial for 3+ classes, binomial for 2, intercept not
  penalised) minimised by scipy's L-BFGS-B with scikit-learn's settings (``gtol = tol``,
  ``maxls = 50``, ``ftol = 64 eps``), each loss and gradient one streamed pass. With at
  most ``select_rows`` rows the CV is streamed too (each fold's scaler from the sums);
  with more, C is chosen on a stratified sample and only the refit streams, starting from
  the sample's solution (the optimum is the same; the starting point saves passes).
- PCA (``pca`` in the grid of ``ridge`` or ``logreg``): the principal axes of each fold's
  scaled rows come from the eigendecomposition of its Gram sums (:class:`_Space`); ridge on
  PCA features is the ridge path over the first axes, logreg streams the projected rows.
- ``linsvm``: C chosen on a stratified sample, refitted on every row by L-BFGS on
  ``LinearSVC``'s primal (squared hinge, one-vs-rest, the intercept a penalised feature),
  streamed, starting from the sample's solution.
- ``knn``: chosen on a stratified sample, refitted on every row when their unit-length
  float32 rows fit half the budget (exact top-k over every row at prediction), else on the
  sample.
- every other head, and any head whose grid asks for something the streamed solvers do
  not compute (other parameters): chosen and refitted on a stratified sample of at most
  ``select_rows`` rows (fewer when the budget holds fewer), by the in-memory search.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import optimize
from scipy.special import expit, log_expit, logsumexp
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer, StandardScaler

from featurecache.cache import Cache, Entry
from pipelines.fitting._budget import Budget
from pipelines.heads._heads import PCA_KEY, Head, build_pipeline
from pipelines.heads._knn import unit_rows
from pipelines.heads._search import (
    SearchResult,
    _summarize,
    search_heads,
    single_blas_thread,
    stratified_splits,
)
from pipelines.rows._stream import GroupStats, RowSource, fold_groups, scaler_of
from pipelines.rows._views import expand_splits, expand_views

__all__ = ["Strategy", "StreamedFit", "fit_streamed", "lbfgs_linear", "IN_MEMORY"]

logger = logging.getLogger(__name__)

#: The strategy text of a head fitted in memory (today's path).
IN_MEMORY = "in memory"


@dataclass(frozen=True)
class Strategy:
    """How a head was chosen and refitted.

    Attributes
    ----------
    text : str
        For people: ``exact, streamed Gram``, ``selected on 50,000 rows, refit on
        1,000,000 (streamed L-BFGS)``, ``in memory``.
    n_select, n_refit : int
        The rows the hyper-parameters were chosen on and the rows the head was refitted on
        (views counted as rows).
    """

    text: str
    n_select: int
    n_refit: int

    def columns(self) -> dict:
        """The ``results.csv`` columns."""
        return {"strategy": self.text, "n_select": self.n_select, "n_refit": self.n_refit}


class StreamedFit(NamedTuple):
    """A head chosen and refitted out of core."""

    found: SearchResult
    estimator: Pipeline
    seconds: float
    converged: bool
    strategy: Strategy


@dataclass(frozen=True)
class FitRows:
    """The fitting rows of a layer, as :func:`fit_streamed` takes them.

    Attributes
    ----------
    rows : ndarray of shape (n_rows,), int64
        Ascending row numbers of the ok fitting rows.
    y : ndarray of shape (n_rows,)
    is_val : ndarray of shape (n_rows,), bool
        Rows of the val split (selection on val) or all False (selection by CV).
    splits : list of (train, score) index arrays
        The selection splits over ``rows``.
    """

    rows: np.ndarray
    y: np.ndarray
    is_val: np.ndarray
    splits: list


@single_blas_thread
def fit_streamed(
    cache: Cache,
    entry: Entry,
    heads: Sequence[Head],
    grids: Mapping[str, Mapping[str, list]],
    data: FitRows,
    *,
    budget: Budget,
    cv: int,
    seed: int,
    n_jobs: int | None,
    views: bool = False,
    n_views: int = 1,
) -> dict[str, StreamedFit]:
    """Choose and refit every head of ``heads`` on ``data`` within ``budget``.

    With one BLAS thread: on the small products of a window, more threads spin (measured:
    a streamed ridge on 50,000 x 384 took 73 s with two OpenBLAS threads, 5.6 s with one).

    Returns
    -------
    dict
        :class:`StreamedFit` of each head, by name.
    """
    n_features = int(entry.n_features)
    source = RowSource(
        cache, entry.model, entry.layer, data.rows, fold_groups(len(data.rows), data.splits),
        batch_rows=budget.batch_rows(n_features, n_views if views else 1), views=views,
        n_views=n_views,
    )  # fmt: skip
    classes = np.unique(data.y)
    gram_bytes = 8 * n_features * n_features * (len(data.splits) + 4)
    n_held = len(data.rows) * (n_views if views else 1)
    plans = {h.name: _strategy(h, grids[h.name], n_held, budget, gram_bytes, n_features)
             for h in heads}  # fmt: skip
    start = time.perf_counter()
    gram = any(
        plans[h.name] == "ridge"
        or (plans[h.name] in _STREAMED_REFIT and grids[h.name].get(PCA_KEY) != [None])
        for h in heads
    )
    stats = GroupStats.collect(source, classes, gram=gram, n_features=n_features)
    stats_seconds = time.perf_counter() - start
    n_rows = int(stats.count.sum())  # views counted
    on_sample = {}  # head name: (search result, the head refitted on the sample, its rows)
    sampled = [h for h in heads if plans[h.name] in _SAMPLED]
    if sampled:
        sample = _Sample.load(cache, entry, data, budget, cv=cv, seed=seed, views=views)
        found = search_heads(sampled, grids, sample.X, sample.y, sample.splits, seed=seed,
                             n_jobs=n_jobs)  # fmt: skip
        for head in sampled:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = build_pipeline(head, found[head.name].params, sample.X, sample.y,
                                        seed=seed)  # fmt: skip
            on_sample[head.name] = (found[head.name], fitted, len(sample.y),
                                    time.perf_counter() - start)  # fmt: skip
        del sample  # the streamed refits below hold windows, not the sample
    fits = {}
    for head in heads:
        plan, grid = plans[head.name], grids[head.name]
        if plan == "ridge":
            fits[head.name] = _ridge(head, grid, source, stats, classes, data, n_rows,
                                     stats_seconds)  # fmt: skip
        elif plan == "logreg":
            fits[head.name] = _logreg_exact(head, grid, source, stats, data, n_rows, seed)
        else:
            fits[head.name] = _from_sample(
                head, *on_sample[head.name], source, stats, classes, plan, n_rows, seed
            )
        logger.info("%s/%s %s: %s", entry.model, entry.layer, head.name,
                    fits[head.name].strategy.text)  # fmt: skip
    return fits


#: The strategies that choose on a stratified sample.
_SAMPLED = ("sample", "logreg-sample", "linsvm-sample", "knn-all")
#: The strategies that refit by L-BFGS over streamed rows.
_STREAMED_REFIT = ("logreg", "logreg-sample", "linsvm-sample")
#: The grid parameters a streamed L-BFGS refit follows.
_LBFGS_PARAMS = {"C", "tol", "max_iter", PCA_KEY}


def _strategy(head: Head, grid: Mapping[str, list], n_rows: int, budget: Budget, gram_bytes,
              n_features: int) -> str:  # fmt: skip
    """``ridge``, ``logreg`` (exact, streamed), ``logreg-sample`` or ``linsvm-sample`` (chosen
    on a sample, refit streamed), ``knn-all`` (chosen on a sample, its unit rows of every row held: 4 bytes a
    value, within half the budget) or ``sample`` (chosen and refitted on a sample)."""
    plain = all(v is None for v in grid.get(PCA_KEY, [None]))
    gram = gram_bytes <= budget.memory // 2  # PCA and ridge need the Gram sums
    if head.name == "ridge" and gram and set(grid) <= {"alpha", PCA_KEY}:
        return "ridge"
    streamable = (plain or gram) and set(grid) <= _LBFGS_PARAMS
    if head.name == "logreg" and streamable:
        return "logreg" if n_rows <= budget.select_rows else "logreg-sample"
    if head.name == "linsvm" and streamable:
        return "linsvm-sample"
    if head.name == "knn" and plain and 4 * n_rows * n_features <= budget.memory // 2:
        return "knn-all"
    return "sample"


# -- the stratified sample: selection of every other head --------------------------------


@dataclass(frozen=True)
class _Sample:
    """A stratified sample of the fitting rows, in memory, with its selection splits."""

    X: np.ndarray
    y: np.ndarray
    splits: list
    n_samples: int  # sampled rows before their views

    @classmethod
    def load(cls, cache: Cache, entry: Entry, data: FitRows, budget: Budget, *, cv: int,
             seed: int, views: bool) -> _Sample:  # fmt: skip
        per_row = max(1, cache.views(entry.model).count("augment")) if views else 1
        size = min(budget.select_rows // per_row, budget.rows_in_memory(entry.n_features * per_row))
        chosen = stratified_sample(data.y * 2 + data.is_val, size, cv, seed)
        rows, y, is_val = data.rows[chosen], data.y[chosen], data.is_val[chosen]
        parts = [b.X for b in cache.iter_batches(entry.model, entry.layer, rows)]
        X = np.concatenate(parts) if parts else np.zeros((0, entry.n_features), np.float32)
        if is_val.any():
            splits = [(np.flatnonzero(~is_val), np.flatnonzero(is_val))]
        else:
            splits = stratified_splits(y, cv, seed)
        found = []
        if views:
            found = [(b.X, b.rows) for b in cache.iter_batches(entry.model, entry.layer, rows,
                                                               view="augment")]  # fmt: skip
        if found:  # rows without views (failed or pending) train on their plain view only
            V = np.concatenate([v for v, _ in found])
            positions = np.searchsorted(rows, np.concatenate([r for _, r in found]))
            X, y, groups = expand_views(X, y, V, positions)
            splits = expand_splits(splits, groups)
        return cls(X, y, splits, len(rows))


def stratified_sample(strata: np.ndarray, size: int, least: int, seed: int) -> np.ndarray:
    """Ascending positions of ``size`` rows drawn per stratum in proportion to it (and at
    least ``least`` of each stratum that has them), seeded.

    All rows when ``size >= len(strata)``.
    """
    if size >= len(strata):
        return np.arange(len(strata))
    rng = np.random.default_rng(seed)
    values, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    quota = counts * size / len(strata)
    take = np.floor(quota).astype(int)
    # Largest remainders first, so the sample holds exactly ``size`` rows (before ``least``).
    take[np.argsort(take - quota, kind="stable")[: size - int(take.sum())]] += 1
    take = np.maximum(take, np.minimum(counts, least))
    chosen = [
        rng.choice(np.flatnonzero(inverse == i), size=int(take[i]), replace=False)
        for i in range(len(values))
    ]
    return np.sort(np.concatenate(chosen))


def _from_sample(head, found, estimator, n_select, seconds, source, stats, classes, plan, n_rows,
                 seed) -> StreamedFit:  # fmt: skip
    """Refit ``head`` with the sample's choice: on every row (logreg, linsvm, knn), or keep
    ``estimator``, its refit on the sample (``seconds`` long)."""
    start = time.perf_counter() - seconds
    if plan == "knn-all":
        estimator = _knn_on_every_row(head, found.params, source, scaler_of(stats.without(None)),
                                      classes, n_rows, seed)  # fmt: skip
        text = f"selected on a stratified sample of {n_select:,} rows, refit on {n_rows:,}"
        return StreamedFit(found, estimator, time.perf_counter() - start, True,
                           Strategy(text, n_select, n_rows))  # fmt: skip
    if plan not in _STREAMED_REFIT:
        seconds = time.perf_counter() - start
        text = f"selected and refit on a stratified sample of {n_select:,} rows"
        return StreamedFit(found, estimator, seconds, True, Strategy(text, n_select, n_select))
    guess = None
    if len(estimator) == 2:  # no PCA: the sample's solution, on every row's scaling
        clf = estimator[-1]
        guess = _rescale(clf.coef_, clf.intercept_, estimator[0], scaler_of(stats.without(None)))
    if plan == "linsvm-sample":
        estimator, converged = _linsvm_refit(head, found.params, source, stats, classes, seed,
                                             guess)  # fmt: skip
    else:
        estimator, converged = _logreg_refit(head, found.params, source, stats, classes, seed,
                                             guess)  # fmt: skip
    text = f"selected on a stratified sample of {n_select:,} rows, refit on {n_rows:,} (streamed L-BFGS)"
    return StreamedFit(found, estimator, time.perf_counter() - start, converged,
                       Strategy(text, n_select, n_rows))  # fmt: skip


def _knn_on_every_row(head, params, source: RowSource, scaler, classes, n_rows, seed):
    """The kNN head on every row: its unit-length scaled rows filled window by window (exact
    top-k over every row at prediction, in blocks)."""
    clf = head.classifier(params, np.zeros((1, 1)), seed=seed)
    unit = np.empty((n_rows, len(scaler.mean_)), dtype=np.float32)
    labels = np.empty(n_rows, dtype=np.int64)
    at = 0
    for chunk in source.chunks():
        n = len(chunk.y)
        unit[at : at + n] = unit_rows(scaler.transform(chunk.X).astype(np.float32))
        labels[at : at + n] = np.searchsorted(classes, chunk.y)
        at += n
    clf.classes_, clf.labels_, clf.unit_features_ = classes, labels[:at], unit[:at]
    clf.n_features_in_ = unit.shape[1]
    return Pipeline([("scale", scaler), ("clf", clf)])


def _rescale(coef, intercept, old: StandardScaler, new: StandardScaler) -> np.ndarray:
    """Weights on ``old``'s scaled features as weights on ``new``'s (the same function)."""
    coef = coef / old.scale_ * new.scale_
    intercept = intercept + coef @ ((new.mean_ - old.mean_) / new.scale_)
    return np.column_stack([coef, intercept])


# -- a fold's feature space: its scaler and its PCA, from the sums ----------------------


class _Space(NamedTuple):
    """The scaled features of a fold's training part and their principal axes.

    ``eigenvalues`` (descending) and ``V`` diagonalise ``Xs^T Xs`` of the scaled, centred
    rows: a PCA to ``p`` components projects on ``V[:, :p]``, exactly the
    ``PCA(p)`` of those rows (up to signs, and to the randomised solver's approximation).
    """

    scaler: StandardScaler
    eigenvalues: np.ndarray | None
    V: np.ndarray | None
    n: float

    @classmethod
    def of(cls, stats: GroupStats) -> _Space:
        """The space of the (single-group) rows of ``stats``; without their Gram sums, the
        scaler only (no PCA)."""
        scaler = scaler_of(stats)
        if stats.gram is None:
            return cls(scaler, None, None, stats.n)
        inverse = 1.0 / scaler.scale_
        gram = stats.centred_gram() * inverse[:, None] * inverse[None, :]
        eigenvalues, V = np.linalg.eigh(gram)
        return cls(scaler, np.clip(eigenvalues[::-1], 0.0, None), V[:, ::-1], stats.n)

    def width(self, n_components) -> int:
        """The features after a PCA to ``n_components`` (``None``: none), as ``make_pca``."""
        n_features = len(self.scaler.mean_)
        return n_features if n_components is None or n_components >= n_features else int(
            n_components)  # fmt: skip

    def pca(self, n_components, seed: int) -> PCA | None:
        """The fitted ``PCA`` step for ``n_components``, or ``None`` (none, as ``make_pca``)."""
        p = self.width(n_components)
        if p == len(self.scaler.mean_):
            return None
        variance = self.eigenvalues / max(self.n - 1, 1)
        pca = PCA(n_components=p, random_state=seed)
        pca.components_ = np.ascontiguousarray(self.V[:, :p].T)
        pca.mean_ = np.zeros(len(variance))  # the scaled rows are centred
        pca.n_components_, pca.n_samples_, pca.n_features_in_ = p, int(self.n), len(variance)
        pca.explained_variance_ = variance[:p]
        pca.explained_variance_ratio_ = variance[:p] / max(variance.sum(), np.finfo(float).tiny)
        pca.singular_values_ = np.sqrt(self.eigenvalues[:p])
        pca.noise_variance_ = float(variance[p:].mean()) if p < len(variance) else 0.0
        return pca

    def transform(self, X: np.ndarray, n_components=None) -> np.ndarray:
        """``X`` scaled and projected, float64."""
        Xs = (np.asarray(X, np.float64) - self.scaler.mean_) / self.scaler.scale_
        p = self.width(n_components)
        return Xs if p == len(self.scaler.mean_) else Xs @ self.V[:, :p]

    def steps(self, n_components, seed: int) -> list:
        pca = self.pca(n_components, seed)
        return [("scale", self.scaler)] + ([("pca", pca)] if pca is not None else [])


# -- ridge: exact from the per-fold sums ------------------------------------------------


class _RidgeSolution(NamedTuple):
    """The ridge path of one fold's training part: ``scores(x) = ((x - mean) / scale) V_p
    diag(1 / (l_p + alpha)) right_p + y_mean`` over its first ``p`` principal axes (all of
    them without PCA: ridge on PCA features is ridge restricted to their axes)."""

    space: _Space
    right: np.ndarray
    y_mean: np.ndarray
    classes: np.ndarray

    def predict_all(self, X: np.ndarray, candidates: Sequence[dict]) -> np.ndarray:
        left = self.space.transform(X) @ self.space.V
        out = np.empty((len(candidates), len(X)), dtype=self.classes.dtype)
        for i, candidate in enumerate(candidates):
            p = self.space.width(candidate.get(PCA_KEY))
            weights = self.right[:p] / (self.space.eigenvalues[:p] + float(candidate["alpha"]))[
                :, None]  # fmt: skip
            s = left[:, :p] @ weights + self.y_mean
            out[i] = self.classes[(s[:, 0] > 0).astype(int) if s.shape[1] == 1 else s.argmax(1)]
        return out


def _ridge_solution(stats: GroupStats, classes: np.ndarray) -> _RidgeSolution:
    """The ridge path on the (single-group) rows of ``stats``, exactly as
    ``ridge_path_predictions`` computes it on those rows scaled by their StandardScaler."""
    present = stats.class_count[0] > 0
    fold_classes, n = classes[present], stats.n
    # Targets +1 for the row's class and -1 otherwise: sum(Y) = 2 count - n.
    Y_sums = 2.0 * stats.class_count[0][present] - n
    Y_cross = 2.0 * stats.cross[0][:, present] - stats.sums[0][:, None]
    if len(fold_classes) == 2:
        Y_sums, Y_cross = Y_sums[1:], Y_cross[:, 1:]
    space = _Space.of(stats)
    cross = stats.centred_cross(Y_sums, Y_cross) / space.scaler.scale_[:, None]
    return _RidgeSolution(space, space.V.T @ cross, Y_sums / n, fold_classes)


def _ridge(head, grid, source, stats, classes, data: FitRows, n_rows, seconds) -> StreamedFit:
    start = time.perf_counter()
    candidates = list(ParameterGrid(grid))
    folds = {k: _ridge_solution(stats.without(k), classes) for k in range(len(data.splits))}
    scores = score_folds(source, {k: (lambda X, s=s: s.predict_all(X, candidates)) for k, s in
                                  folds.items()}, len(candidates))  # fmt: skip
    found = _summarize(head, grid, scores, n_val=len(data.splits[0][1]), n_not_converged=0,
                       seconds=seconds + time.perf_counter() - start)  # fmt: skip
    start = time.perf_counter()  # the refit, counted apart from the search
    whole = _ridge_solution(stats.without(None), classes)
    p = whole.space.width(found.params.get(PCA_KEY))
    alpha = float(found.params["alpha"])
    coef = (whole.right[:p] / (whole.space.eigenvalues[:p] + alpha)[:, None]).T
    if p == len(whole.space.eigenvalues):  # no PCA: back from the axes to the features
        coef = coef @ whole.space.V.T
    clf = head.classifier(found.params, np.zeros((1, p)), seed=0)
    clf.coef_ = coef
    clf.intercept_ = whole.y_mean
    clf._label_binarizer = LabelBinarizer(pos_label=1, neg_label=-1).fit(whole.classes)
    clf.classes_ = clf._label_binarizer.classes_
    clf.n_features_in_ = p
    estimator = Pipeline([*whole.space.steps(found.params.get(PCA_KEY), 0), ("clf", clf)])
    text = f"exact, streamed Gram ({n_rows:,} rows)"
    return StreamedFit(found, estimator, time.perf_counter() - start, True,
                       Strategy(text, n_rows, n_rows))  # fmt: skip


def score_folds(
    source: RowSource, predict: Mapping[int, Callable[[np.ndarray], np.ndarray]], n_candidates: int
) -> np.ndarray:
    """Accuracy ``(n_folds, n_candidates)`` of every candidate on each fold's held-out rows:
    ``predict[k](X)`` gives ``(n_candidates, n_rows)`` labels. One pass over the plain rows."""
    correct = np.zeros((len(predict), n_candidates))
    count = np.zeros(len(predict))
    for chunk in source.chunks(plain_only=True):
        X = chunk.X.astype(np.float64)
        for k in predict:
            at = chunk.group == k
            if not at.any():
                continue
            correct[k] += np.sum(predict[k](X[at]) == chunk.y[at][None, :], axis=1)
            count[k] += at.sum()
    return correct / np.maximum(count, 1)[:, None]


# -- logreg and linsvm: scikit-learn's objectives, streamed ----------------------------


def lbfgs_linear(
    loss: str,
    chunks: Callable[[], Any],
    transform: Callable[[np.ndarray], np.ndarray],
    n_features: int,
    classes: np.ndarray,
    n_rows: int,
    C: float,
    *,
    tol: float,
    max_iter: int,
    w0: np.ndarray | None = None,
) -> tuple[np.ndarray, int, bool]:
    """Minimise a linear head's objective over streamed rows by L-BFGS-B.

    ``loss="log"`` is ``LogisticRegression(C=C)``'s objective (the intercept unpenalised);
    ``loss="squared_hinge"`` is ``LinearSVC(C=C)``'s primal of each one-vs-rest class (one for
    two classes, that of ``classes[1]``): ``||w||^2 / 2 + C sum(max(0, 1 - y w.x)^2)`` with
    ``y`` in {-1, 1} and the intercept a feature of value 1 (``intercept_scaling=1``),
    penalised as liblinear penalises it; smooth and strictly convex, so L-BFGS reaches
    liblinear's optimum. Both are minimised divided by ``C n`` (the same optimum), with
    ``gtol = tol``.

    Parameters
    ----------
    loss : {"log", "squared_hinge"}
    chunks : callable
        ``chunks()`` yields ``(X, y)`` pairs (raw features, labels from ``classes``):
        one pass over the training rows per call.
    transform : callable
        ``transform(X)`` gives the features the model sees, float64 of shape
        ``(n, n_features)``: the scaler (and PCA) fitted on the same rows.
    n_features : int
    classes : ndarray of shape (n_classes,)
    n_rows : int
        The rows ``chunks`` yields, the ``n`` of the mean loss.
    C, tol, max_iter : float, float, int
        As the head's (``LogisticRegression``'s or ``LinearSVC``'s).
    w0 : ndarray, optional
        Starting weights ``(n_outputs, n_features + 1)`` (default: zeros).

    Returns
    -------
    weights : ndarray of shape (n_outputs, n_features + 1)
        Coefficients, then the intercept, in the last column; one output row for two classes
        (the weights of ``classes[1]``, as scikit-learn's binomial model), one per class else.
    n_iter : int
    converged : bool
    """
    n_out = 1 if len(classes) == 2 else len(classes)
    chunk_loss, penalty = _LOSSES[loss](n_out, 1.0 / (C * n_rows))
    return _minimize_streamed(
        chunk_loss, penalty, chunks, transform, (n_out, n_features + 1), classes, n_rows,
        tol=tol, max_iter=max_iter, w0=w0,
    )  # fmt: skip


def _log_loss(n_out: int, l2: float):
    """The multinomial (binomial for one output) log loss, the intercept unpenalised."""

    def chunk_loss(z: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        if n_out == 1:
            target = (labels == 1).astype(np.float64)
            z = z[:, 0]
            loss = -float(np.sum(log_expit(z) * target + log_expit(-z) * (1 - target)))
            return loss, (expit(z) - target)[:, None]
        lse = logsumexp(z, axis=1)
        residual = np.exp(z - lse[:, None])
        residual[np.arange(len(z)), labels] -= 1.0
        return float(np.sum(lse - z[np.arange(len(z)), labels])), residual

    def penalty(W: np.ndarray) -> tuple[float, np.ndarray]:
        coef = np.zeros_like(W)
        coef[:, :-1] = W[:, :-1]
        return 0.5 * l2 * float(np.sum(coef * coef)), l2 * coef

    return chunk_loss, penalty


def _squared_hinge(n_out: int, l2: float):
    """One-vs-rest squared hinge, the intercept penalised as one more weight (liblinear)."""

    def chunk_loss(z: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        if n_out == 1:
            Y = np.where(labels == 1, 1.0, -1.0)[:, None]
        else:
            Y = -np.ones((len(labels), n_out))
            Y[np.arange(len(labels)), labels] = 1.0
        margin = np.maximum(0.0, 1.0 - Y * z)
        return float(np.sum(margin * margin)), -2.0 * Y * margin

    def penalty(W: np.ndarray) -> tuple[float, np.ndarray]:
        return 0.5 * l2 * float(np.sum(W * W)), l2 * W

    return chunk_loss, penalty


_LOSSES = {"log": _log_loss, "squared_hinge": _squared_hinge}


def _minimize_streamed(
    chunk_loss: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]],
    penalty: Callable[[np.ndarray], tuple[float, np.ndarray]],
    chunks: Callable[[], Any],
    transform: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, int],
    classes: np.ndarray,
    n_rows: int,
    *,
    tol: float,
    max_iter: int,
    w0: np.ndarray | None,
) -> tuple[np.ndarray, int, bool]:
    """Minimise ``mean over rows of chunk_loss + penalty`` by L-BFGS-B, one pass per step.

    ``chunk_loss(z, labels)`` gives the summed loss of a chunk's decision values ``z``
    ``(n, n_outputs)`` and its gradient with respect to ``z``; ``penalty(W)`` the
    regulariser and its gradient. Weights ``W`` are ``shape``, the intercept in the last
    column. Returns ``(weights, n_iter, converged)`` as :func:`lbfgs_linear`.
    """

    def loss_gradient(w: np.ndarray) -> tuple[float, np.ndarray]:
        W = w.reshape(shape)
        loss, grad = 0.0, np.zeros(shape)
        for X, y in chunks():
            Xs = transform(np.asarray(X, np.float64))
            part, residual = chunk_loss(Xs @ W[:, :-1].T + W[:, -1], np.searchsorted(classes, y))
            loss += part
            grad[:, :-1] += residual.T @ Xs
            grad[:, -1] += residual.sum(axis=0)
        extra, extra_grad = penalty(W)
        return loss / n_rows + extra, (grad / n_rows + extra_grad).ravel()

    start = np.zeros(shape) if w0 is None else np.asarray(w0, np.float64).reshape(shape)
    result = optimize.minimize(
        loss_gradient, start.ravel(), method="L-BFGS-B", jac=True,
        options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps},
    )  # fmt: skip
    n_iter = int(result.nit)
    return result.x.reshape(shape), n_iter, n_iter < max_iter


def _logreg_settings(head: Head, params: Mapping) -> tuple[float, float, int]:
    clf = head.classifier(params, np.zeros((1, 1)), seed=0)
    return float(clf.C), float(clf.tol), int(clf.max_iter)


def _logreg_chunks(source: RowSource, fold: int | None):
    """``chunks()`` of :func:`lbfgs_linear` over the training part of ``fold`` (None: all)."""

    def chunks():
        for chunk in source.chunks():
            if fold is None:
                yield chunk.X, chunk.y
                continue
            at = chunk.group != fold
            if at.any():
                yield chunk.X[at], chunk.y[at]

    return chunks


def _logreg_fit(head, params, source, space: _Space, classes, n_rows, fold, w0):
    """``(weights, n_iter, converged)`` of the streamed fit of ``params`` on ``space``."""
    C, tol, max_iter = _logreg_settings(head, params)
    n_components = params.get(PCA_KEY)
    return lbfgs_linear(
        "log", _logreg_chunks(source, fold), lambda X: space.transform(X, n_components),
        space.width(n_components), classes, n_rows, C, tol=tol, max_iter=max_iter, w0=w0,
    )  # fmt: skip


def _logreg_estimator(head, params, weights, classes, space: _Space, n_iter, seed) -> Pipeline:
    clf = head.classifier(params, np.zeros((1, 1)), seed=seed)
    clf.classes_ = classes
    clf.coef_, clf.intercept_ = weights[:, :-1].copy(), weights[:, -1].copy()
    clf.n_iter_ = np.array([n_iter], dtype=np.int32)
    clf.n_features_in_ = weights.shape[1] - 1
    return Pipeline([*space.steps(params.get(PCA_KEY), seed), ("clf", clf)])


def _logreg_exact(head, grid, source, stats, data: FitRows, n_rows, seed) -> StreamedFit:
    """Streamed CV along C (ascending, each fit starting from the previous C's solution of
    the same fold and PCA), and a streamed refit."""
    start = time.perf_counter()
    candidates = list(ParameterGrid(grid))
    chains: dict[Any, list[int]] = {}
    for i in sorted(range(len(candidates)), key=lambda i: (float(candidates[i]["C"]), i)):
        chains.setdefault(candidates[i][PCA_KEY], []).append(i)
    n_not_converged = 0
    predictors = {}
    for k in range(len(data.splits)):
        part = stats.without(k)
        space = _Space.of(part)
        classes = np.unique(data.y[data.splits[k][0]])
        solutions = {}
        for chain in chains.values():
            previous = None
            for i in chain:
                weights, _, ok = _logreg_fit(head, candidates[i], source, space, classes,
                                             int(part.n), k, previous)  # fmt: skip
                n_not_converged += not ok
                solutions[i] = previous = weights
        predictors[k] = _linear_predictor(space, classes, candidates, solutions)
    scores = score_folds(source, predictors, len(candidates))
    found = _summarize(head, grid, scores, n_val=len(data.splits[0][1]),
                       n_not_converged=n_not_converged,
                       seconds=time.perf_counter() - start)  # fmt: skip
    refit_start = time.perf_counter()
    estimator, converged = _logreg_refit(
        head, found.params, source, stats, np.unique(data.y), seed, None
    )
    text = f"exact, streamed L-BFGS ({n_rows:,} rows)"
    return StreamedFit(found, estimator, time.perf_counter() - refit_start, converged,
                       Strategy(text, n_rows, n_rows))  # fmt: skip


def _logreg_refit(head, params, source, stats, classes, seed, w0):
    """The streamed refit on every row: ``(pipeline, converged)``."""
    whole = stats.without(None)
    space = _Space.of(whole)
    weights, n_iter, converged = _logreg_fit(head, params, source, space, classes,
                                             int(whole.n), None, w0)  # fmt: skip
    return _logreg_estimator(head, params, weights, classes, space, n_iter, seed), converged


def _linear_predictor(space: _Space, classes, candidates, solutions):
    """``predict(X)``: the labels of every candidate (rows: candidates) from its weights."""

    def predict(X: np.ndarray) -> np.ndarray:
        features: dict[Any, np.ndarray] = {}
        out = np.empty((len(candidates), len(X)), dtype=classes.dtype)
        for i, candidate in enumerate(candidates):
            p = candidate.get(PCA_KEY)
            if p not in features:
                features[p] = space.transform(X, p)
            W = solutions[i]
            z = features[p] @ W[:, :-1].T + W[:, -1]
            out[i] = classes[(z[:, 0] > 0).astype(int) if z.shape[1] == 1 else z.argmax(1)]
        return out

    return predict


# -- linsvm's refit ------------------------------------------------------------------


def _linsvm_refit(head, params, source, stats, classes, seed, w0):
    """The streamed refit of ``linsvm`` on every row: ``(pipeline, converged)``."""
    whole = stats.without(None)
    space = _Space.of(whole)
    clf = head.classifier(params, np.zeros((1, 1)), seed=seed)
    n_components = params.get(PCA_KEY)
    weights, n_iter, converged = lbfgs_linear(
        "squared_hinge", _logreg_chunks(source, None), lambda X: space.transform(X, n_components),
        space.width(n_components), classes, int(whole.n), float(clf.C), tol=float(clf.tol),
        max_iter=int(clf.max_iter), w0=w0,
    )  # fmt: skip
    clf.classes_ = classes
    clf.coef_, clf.intercept_ = weights[:, :-1].copy(), weights[:, -1].copy()
    clf.n_iter_ = n_iter
    clf.n_features_in_ = weights.shape[1] - 1
    return Pipeline([*space.steps(n_components, seed), ("clf", clf)]), converged
