"""Fit every (model, layer, head) of a cache into a results folder.

Protocol: hyper-parameters are chosen on training data only (stratified k-fold
CV on ``train``, or the ``val`` split when the cache has one), the chosen head
is refitted on ``train`` (+ ``val``) and scored once on ``test``. Nothing is
selected on ``test``. With ``views="train"`` every training row contributes all its
augmented views and the folds are grouped by sample; with ``tta`` test rows are scored
on their test-time views (see :mod:`pipelines.rows._views`). The results folder (its layout,
its files, and which combination is best) belongs to :mod:`pipelines.results._results`.

This module runs the fit, one layer at a time; the rest has a module of its own:
:mod:`pipelines.fitting._plan` (what to fit, validated before anything is written),
:mod:`pipelines.fitting._row_checks` (the rows a fit can use), :mod:`pipelines.fitting._cluster` (where
the workers run), :mod:`pipelines.fitting._layer_data` (the rows of one layer),
:mod:`pipelines.fitting._keys` (result keys, and why a head is refitted) and
:mod:`pipelines.fitting._refit` (the refit and its test scores).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning

from featurecache.cache import Cache, Entry, open_cache
from featurecache.cache import _format as fmt
from featurecache.core._paths import check_not_input
from featurecache.core._validation import check_bool
from pipelines.fitting._budget import Budget
from pipelines.fitting._cluster import (
    BACKENDS,
    LOCAL_BACKENDS,
    check_backend,
    check_n_jobs,
    parallel_backend,
)
from pipelines.fitting._keys import (
    Key,
    budget_key,
    is_done,
    protocol_key,
    refit_reasons,
    result_keys,
)
from pipelines.fitting._layer_data import LayerData, TestRows, rows_held, streamed_rows
from pipelines.fitting._ooc import IN_MEMORY, FitRows, Strategy, fit_streamed
from pipelines.fitting._plan import DEFAULT_HEADS, Plan
from pipelines.fitting._refit import (
    Refit,
    TestViews,
    binomial_se,
    confidence,
    predict_test,
    refit,
    score_columns,
)
from pipelines.heads._fixed import FIXED_HEADS, fixed_pipeline, stored_classifier
from pipelines.heads._heads import Head
from pipelines.heads._protocols import get_protocol
from pipelines.heads._search import SearchResult, search_heads, single_blas_thread
from pipelines.heads._shots import learning_curve
from pipelines.results._feature_sets import FeatureSet
from pipelines.results._results import ResultsFolder, best
from pipelines.rows._stream import fold_groups
from pipelines.rows._views import PLAIN, Variant, tta_predict

# check_n_jobs, BACKENDS and LOCAL_BACKENDS live in pipelines.fitting._cluster, DEFAULT_HEADS in
# pipelines.fitting._plan; the command line imports them from here.
__all__ = ["fit", "check_n_jobs", "DEFAULT_HEADS", "BACKENDS", "LOCAL_BACKENDS"]

logger = logging.getLogger(__name__)


def fit(
    cache: str | os.PathLike | Cache,
    out: str | os.PathLike,
    *,
    models: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    heads: Sequence[str] = DEFAULT_HEADS,
    grid: Mapping[str, Mapping[str, Sequence]] | str | os.PathLike | None = None,
    cv: int = 5,
    seed: int = 0,
    n_jobs: int | None = 1,
    pca: int | None = None,
    backend: str = "loky",
    address: str | None = None,
    shots: str | Sequence[int | str] | None = None,
    draws: int = 5,
    views: str | None = None,
    tta: str | None = None,
    allow_partial: bool = False,
    force: bool = False,
    combine: Sequence[str] | str | None = None,
    combine_pca: int | None = None,
    protocol: str | None = None,
    memory: int | str | None = None,
    select_rows: int | None = None,
) -> pd.DataFrame:
    """Choose, refit and score every (model, layer, head) and write ``out``.

    Parameters
    ----------
    cache : str, path or Cache
    out : str or path
        The results folder: a new or empty folder (created), or a results folder made
        from the same samples (same ``samples_digest``), which is resumed. Anything else
        is refused unless ``force``. Nothing is left in it when ``fit`` refuses, or fails
        before its first combination is finished.
    models, layers : list of str, optional
        Restrict to these models and layer names (default: all). A layer name
        applies to every model that has it. A plain string is refused: write
        ``["embedding"]`` for one name.
    heads : list of str
        Names from :func:`~pipelines.list_heads`, and ``zeroshot``: the zero-shot
        classifier stored with a model that has a text tower (OpenCLIP), fitted on
        nothing, scored on the same folds and on test, recorded with
        ``selection = "fixed"`` (see :mod:`pipelines.heads._fixed`).
    grid : mapping or path, optional
        ``{head: {param: [values]}}`` (or a JSON/YAML file of it) updating the
        default grids.
    cv : int
        Folds (>= 2) of the stratified CV on ``train`` (ignored when there is a
        ``val`` split).
    seed : int
        Seeds the folds and the estimators (0 to 2**32 - 1).
    n_jobs : int or None
        joblib workers (``-1``: all cores; 0 is refused, and so is more than 4 per CPU, at
        least 32, on the loky, threading and multiprocessing backends).
    pca : int, optional
        Add a PCA step with this many components (>= 1) to layers wider than that.
    backend : {"loky", "threading", "multiprocessing", "dask", "ray"}
        joblib backend. ``dask`` connects ``distributed.Client(address)``;
        ``ray`` registers ``ray.util.joblib`` and connects to ``address``.
        Results do not depend on the backend.
    address : str, optional
        Scheduler (dask) or cluster (ray) address.
    shots : list of int and "all", or str, optional
        Few-shot learning curves (``[1, 5, 10, 25, "all"]`` or ``"1,5,10,25,all"``):
        for each number of training rows per class, ``draws`` seeded draws from
        ``train``, hyper-parameters chosen inside each draw, the refit scored on
        ``test`` (see :mod:`pipelines.heads._shots`); written to ``curves.csv``.
        ``"all"`` is the full fit itself.
    draws : int
        Draws per number of shots (>= 1).
    views : {"train"}, optional
        Train every head on every augmented view of every training row (a cache
        extracted with ``featurecache extract --views K --augment SPEC``). The selection
        folds are drawn per sample, so no view of a held-out image is ever trained on;
        held-out rows and test rows are scored on their plain view (view 0) unless
        ``tta``. Recorded as a variant beside the plain results (``views``, ``n_views``).
    tta : {"mean-proba", "mean-feature"}, optional
        Score test rows on their test-time views (``extract --tta SPEC``): the mean of the
        head's ``predict_proba`` over the views (heads without it, ``linsvm``, ``svm`` and
        ``ridge``, average ``decision_function``), or the head applied to the mean
        feature. CV is unchanged (view 0). A test row without test-time views is scored on
        its plain view. Recorded in the ``tta`` and ``n_tta`` columns.
    allow_partial : bool
        Fit on the rows done when the cache has pending rows (an extraction still running
        or stopped); without it such a cache is refused with the pending rows per split.
        ``run.json`` and the report state the counts.
    force : bool
        Write into an ``out`` that ``fit`` did not write (a file there is replaced), or
        start over in a results folder made from other samples (its results are removed).
    combine : list of str, optional
        Feature sets, each fitted as one more layer: ``lite0:blocks.10+blocks.14``,
        ``last4``, ``lite0:blocks.10+lite2:blocks.14`` (the grammar is in
        :mod:`pipelines.results._feature_sets`). Each part is standardised on its own (inside the
        folds) before concatenation; a set reads the rows ok in every part; its parts are
        fitted alone too, for comparison. Sets are fitted on plain rows (no views, TTA or
        learning curves).
    combine_pca : int, optional
        Reduce each part of a set wider than this by its own PCA (fitted inside the folds).
    protocol : {"ssl-transfer", "dino-knn"}, optional
        Evaluate every layer with this published protocol instead of ``heads`` and the
        product's selection (see :mod:`pipelines.heads._protocols`); recorded as the ``head``.
    memory : int or str, optional
        What one layer's fit may hold: bytes, or ``"4GB"``, ``"512MB"`` (binary units, at
        least 64MB). Default: half of the machine's RAM. A layer whose in-memory fit fits
        is fitted in memory, as without a budget; a larger one out of core, its rows
        streamed (see :mod:`pipelines.fitting._ooc`). ``results.csv`` states each head's strategy.
    select_rows : int, optional
        Out of core, the most rows a hyper-parameter search runs on (a stratified sample;
        default 50,000, at least 100): the search of every head but ``ridge``, and of
        ``logreg`` when the rows exceed it. ``results.csv`` states the rows used.

    Returns
    -------
    pandas.DataFrame
        The rows of ``results.csv`` (the full training data); :func:`~pipelines.best` picks the best (logged).

    Raises
    ------
    InvalidArgumentError
        Bad arguments or data, pending rows without ``allow_partial``, a class left without
        usable training rows, ``views`` or ``tta`` on a model without such views, or an
        ``out`` that cannot be used (nothing is written).
    """
    allow_partial = check_bool(allow_partial, "allow_partial", "fit")
    force = check_bool(force, "force", "fit")
    results = ResultsFolder(out)
    results.check_path(force=force)
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    check_not_input(
        results.root, {"the cache": cache.path, "the cache's folder": fmt.data_dir(cache.path)},
        "out", "fit",
    )  # fmt: skip
    plan = Plan.build(
        cache, out, models=models, layers=layers, heads=heads, grid=grid, cv=cv, seed=seed,
        pca=pca, n_jobs=n_jobs, backend=backend, address=address, shots=shots, draws=draws,
        views=views, tta=tta, allow_partial=allow_partial, combine=combine,
        combine_pca=combine_pca, protocol=protocol,
        budget=Budget.build(memory, select_rows),
    )  # fmt: skip
    replace = results.check(cache, force=force)
    check_backend(plan.backend)
    keys = result_keys(cache, plan)
    if not replace:
        _say_refits(results, keys)
    with results.writing(plan.run_record(cache), replace=replace):
        with parallel_backend(plan.backend, plan.address):
            for model, layer in plan.combos:
                if plan.heads:
                    _fit_layer(cache, plan, results, model, layer, keys)
                for name in plan.fixed.get((model, layer), ()):
                    _score_fixed(cache, plan, results, model, layer, name, keys)
            for feature_set in plan.feature_sets if plan.heads else ():
                model, layer = feature_set.model, feature_set.layer
                _fit_layer(cache, plan, results, model, layer, keys, feature_set)
            if plan.named_protocol is not None:
                for entry in [*(cache.entry(*c) for c in plan.combos), *plan.feature_sets]:
                    _fit_protocol(cache, plan, results, entry)
        table = results.write_table()
        results.write_curves()
    chosen = best(table)
    logger.info("best by CV: %s / %s / %s", chosen["model"], chosen["layer"], chosen["head"])
    return table


def _say_refits(results: ResultsFolder, keys: Mapping[tuple[str, str, str], Key]) -> None:
    """Log one line per reason why finished combinations are fitted again."""
    for why, n in refit_reasons(results, keys).items():
        logger.warning("%d head%s refitted: %s", n, "s" if n > 1 else "", why)


def _fit_layer(
    cache: Cache, plan: Plan, results: ResultsFolder, model: str, layer: str,
    keys: Mapping[tuple[str, str, str], Key],
    feature_set: FeatureSet | None = None,
) -> None:  # fmt: skip
    """Choose, refit, score and record every head of ``plan`` not finished yet on one layer
    (or ``feature_set``), in memory or out of core as the budget allows."""
    entry = feature_set or cache.entry(model, layer)
    variant = plan.variant(model) if feature_set is None else Variant()
    scale = feature_set.scaler(plan.seed) if feature_set is not None else None
    # Feature sets are fitted in memory (their parts are read whole: not streamed yet).
    streamed = feature_set is None and not plan.budget.fits_in_memory(
        rows_held(cache, plan, entry), entry.n_features
    )
    keys = {head.name: keys[model, layer, head.name] for head in plan.heads}
    if streamed:  # the budget changes how a head is chosen: part of its key out of core
        keys = {name: budget_key(key, plan.budget) for name, key in keys.items()}
    pending = [
        head
        for head in plan.heads
        if not is_done(results, model, layer, head.name, keys[head.name], variant.name)
    ]
    if not pending:
        logger.info("%s/%s: every head already fitted, reusing", model, layer)
        return
    logger.info(
        "%s/%s: fitting %s (%s)", model, layer, ", ".join(h.name for h in pending), variant.label
    )
    if streamed:
        _fit_layer_streamed(cache, plan, results, entry, variant, pending, keys)
        return
    data = LayerData.load(cache, plan, entry, variant)
    found = search_heads(
        pending, plan.grids, data.X_fit, data.y_fit, data.splits, seed=plan.seed,
        n_jobs=plan.n_jobs, scale=scale,
    )  # fmt: skip
    tta = (
        None if variant.tta == PLAIN else TestViews(variant.tta, data.tta_views, data.tta_positions)
    )
    refits = Parallel(n_jobs=plan.n_jobs)(
        delayed(refit)(head, found[head.name].params, data.X_fit, data.y_fit, data.X_test,
                       plan.seed, tta, scale)
        for head in pending
    )  # fmt: skip
    strategy = Strategy(IN_MEMORY, len(data.y_fit), len(data.y_fit))
    for head, refitted in zip(pending, refits, strict=True):
        curve = _curve(plan, head, data) if feature_set is None else []
        _write_combo(results, cache, plan, entry, data, head, keys[head.name], found[head.name],
                     refitted, curve, variant=variant, strategy=strategy)  # fmt: skip
    results.write_table()


def _fit_layer_streamed(
    cache: Cache, plan: Plan, results: ResultsFolder, entry: Entry, variant: Variant,
    pending: list[Head], keys: dict[str, Key],
) -> None:  # fmt: skip
    """Fit ``pending`` out of core (:mod:`pipelines.fitting._ooc`), its test rows predicted in windows."""
    rows, test = streamed_rows(cache, plan, entry)
    logger.info(
        "%s/%s: %d fitting rows exceed the memory budget (%s) in memory: streamed",
        entry.model, entry.layer, len(rows.rows), plan.budget.describe(),
    )  # fmt: skip
    fits = fit_streamed(
        cache, entry, pending, plan.grids, rows, budget=plan.budget, cv=plan.cv, seed=plan.seed,
        n_jobs=plan.n_jobs, views=variant.views != PLAIN, n_views=variant.n_views,
    )  # fmt: skip
    for head in pending:
        streamed = fits[head.name]
        predicted = _predict_streamed(cache, plan, entry, variant, streamed.estimator, test.rows)
        refitted = Refit(streamed.estimator, *predicted, seconds=streamed.seconds,
                         converged=streamed.converged)  # fmt: skip
        found = streamed.found
        if plan.shots:
            note = "No learning curve: the layer was fitted out of core."
            found = dataclasses.replace(found, warnings=(*found.warnings, note))
        _write_combo(results, cache, plan, entry, test, head, keys[head.name], found, refitted,
                     [], variant=variant, strategy=streamed.strategy)  # fmt: skip
    results.write_table()


@single_blas_thread
def _predict_streamed(
    cache: Cache, plan: Plan, entry: Entry, variant: Variant, estimator, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Predictions and confidences of the test ``rows``, read window by window; with TTA the
    rows that have test-time views are then scored on them."""
    y_pred = np.zeros(len(rows), dtype=np.int64)
    scores = np.zeros(len(rows))
    start = time.perf_counter()
    batch_rows = plan.budget.batch_rows(entry.n_features)
    for batch in cache.iter_batches(entry.model, entry.layer, rows, batch_rows=batch_rows):
        at = np.searchsorted(rows, batch.rows)
        y_pred[at] = np.asarray(estimator.predict(batch.X), dtype=np.int64)
        scores[at] = confidence(estimator, batch.X)
    if variant.tta != PLAIN:
        batch_rows = plan.budget.batch_rows(entry.n_features, variant.n_tta)
        for batch in cache.iter_batches(entry.model, entry.layer, rows, batch_rows=batch_rows,
                                        view="tta"):  # fmt: skip
            at = np.searchsorted(rows, batch.rows)
            y_pred[at], scores[at] = tta_predict(estimator, batch.X, variant.tta)
    per_1000 = (time.perf_counter() - start) * 1000 / len(rows) if len(rows) else None
    return y_pred, scores, per_1000


def _score_fixed(
    cache: Cache, plan: Plan, results: ResultsFolder, model: str, layer: str, name: str,
    keys: Mapping[tuple[str, str, str], Key],
) -> None:  # fmt: skip
    """Score a fixed head like a fitted one: on the selection folds, then once on test."""
    entry = cache.entry(model, layer)
    classifier = stored_classifier(cache, model, FIXED_HEADS[name])
    key = keys[model, layer, name]
    if is_done(results, model, layer, name, key):
        logger.info("%s/%s: %s already scored, reusing", model, layer, name)
        return
    estimator = fixed_pipeline(classifier, entry.n_features)
    if plan.budget.fits_in_memory(rows_held(cache, plan, entry), entry.n_features):
        data = LayerData.load(cache, plan, entry)
        start = time.perf_counter()
        fold_scores = [
            float(np.mean(estimator.predict(data.X_fit[score]) == data.y_fit[score]))
            for _, score in data.splits
        ]
        seconds = time.perf_counter() - start
        predicted = predict_test(estimator, data.X_test)
        splits, how = data.splits, IN_MEMORY
    else:  # streamed: the same scores, window by window
        rows, data = streamed_rows(cache, plan, entry)
        start = time.perf_counter()
        fold_scores = _fixed_fold_scores(cache, plan, entry, estimator, rows)
        seconds = time.perf_counter() - start
        predicted = _predict_streamed(cache, plan, entry, Variant(), estimator, data.rows)
        splits, how = rows.splits, "fixed, scored streamed"
    found = SearchResult(
        head=name, params={}, cv_mean=float(np.mean(fold_scores)),
        cv_std=float(np.std(fold_scores)) if len(fold_scores) > 1 else binomial_se(
            fold_scores[0], len(splits[0][1])),
        candidates=({"params": {}, "scores": fold_scores, "mean": float(np.mean(fold_scores)),
                     "std": float(np.std(fold_scores))},),
        n_splits=len(fold_scores), n_not_converged=0, seconds=seconds, warnings=(),
    )  # fmt: skip
    n_scored = sum(len(score) for _, score in splits)
    _write_combo(results, cache, plan, entry, data, _Named(name), key, found,
                 Refit(estimator, *predicted, seconds=0.0, converged=True), [],
                 selection="fixed", strategy=Strategy(how, n_scored, 0))  # fmt: skip
    results.write_table()


def _fixed_fold_scores(
    cache: Cache, plan: Plan, entry: Entry, estimator, rows: FitRows
) -> list[float]:
    """The accuracy of a fixed head on each selection split's scored rows, streamed."""
    group = fold_groups(len(rows.rows), rows.splits)
    correct, count = np.zeros(len(rows.splits)), np.zeros(len(rows.splits))
    batch_rows = plan.budget.batch_rows(entry.n_features)
    for batch in cache.iter_batches(entry.model, entry.layer, rows.rows, batch_rows=batch_rows):
        at = group[np.searchsorted(rows.rows, batch.rows)]
        right = np.asarray(estimator.predict(batch.X)) == batch.y
        scored = at >= 0
        np.add.at(correct, at[scored], right[scored])
        np.add.at(count, at[scored], 1)
    return [float(c / max(n, 1)) for c, n in zip(correct, count, strict=True)]


def _fit_protocol(
    cache: Cache, plan: Plan, results: ResultsFolder, entry: Entry | FeatureSet
) -> None:
    """Evaluate one layer (or feature set) with the named protocol and record it."""
    protocol = get_protocol(plan.named_protocol)
    key = protocol_key(cache, plan, entry, protocol.name)
    if is_done(results, entry.model, entry.layer, protocol.name, key):
        logger.info("%s/%s: %s already done, reusing", entry.model, entry.layer, protocol.name)
        return
    data = LayerData.load(cache, plan, entry)
    is_val = np.isin(data.fit_samples, np.flatnonzero(cache.splits == "val"))
    scale = entry.scaler(plan.seed) if isinstance(entry, FeatureSet) else None
    start = time.perf_counter()
    chosen = protocol.run(data.X_fit, data.y_fit, is_val, data.splits, plan.seed, scale)
    seconds = time.perf_counter() - start
    found = SearchResult(
        head=protocol.name, params=chosen.params, cv_mean=chosen.score, cv_std=chosen.std,
        candidates=chosen.candidates, n_splits=chosen.n_splits, n_not_converged=0,
        seconds=seconds, warnings=(),
    )  # fmt: skip
    refitted = Refit(chosen.estimator, *predict_test(chosen.estimator, data.X_test),
                     seconds=0.0, converged=True)  # fmt: skip
    _write_combo(results, cache, plan, entry, data, _Named(protocol.name), key, found, refitted,
                 [], selection=protocol.selection)  # fmt: skip
    results.write_table()


class _Named(NamedTuple):
    """A head known by its name only (a fixed head, a named protocol), for a record."""

    name: str


def _curve(plan: Plan, head: Head, data: LayerData) -> list[dict]:
    """The few-shot learning curve of one head on one layer (empty without ``shots``)."""
    if not plan.shots or len(data.y_test) == 0:
        return []
    pool = data.train_rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return learning_curve(
            head, plan.grids[head.name], data.X_fit[pool], data.y_fit[pool], data.X_test,
            data.y_test, shots=plan.shots, draws=plan.draws, cv=plan.cv, seed=plan.seed,
            n_jobs=plan.n_jobs,
        )  # fmt: skip


def _write_combo(
    results: ResultsFolder, cache: Cache, plan: Plan, entry: Entry | FeatureSet,
    data: LayerData | TestRows, head: Head | _Named, key: Key, found: SearchResult,
    refitted: Refit, curve: list[dict], selection: str | None = None,
    variant: Variant | None = None, strategy: Strategy | None = None,
) -> None:  # fmt: skip
    """Write the head, its test predictions, and last the record that marks it finished."""
    model, layer = entry.model, entry.layer
    variant = variant or Variant()
    head_file = results.write_head(
        estimator=refitted.estimator, model=model, layer=layer, head=head.name,
        params=found.params, class_names=cache.class_names,
        samples_digest=cache.samples_digest, provenance=entry.provenance, variant=variant.name,
    )  # fmt: skip
    predictions_file = results.write_predictions(
        model, layer, head.name, ids=data.ids_test, y_true=data.y_test, y_pred=refitted.y_pred,
        class_names=cache.class_names, confidence=refitted.confidence, variant=variant.name,
    )  # fmt: skip
    results.write_combo(
        {
            "key": key.key,
            "key_fields": key.fields,
            "features_digest": key.fields["features_digest"],
            "model": model,
            "layer": layer,
            "depth": entry.depth,
            "head": head.name,
            **variant.columns(),
            "selection": selection or ("val" if plan.uses_val else f"{plan.cv}-fold CV"),
            "protocol": plan.protocol,
            **score_columns(found, refitted, data.y_test),
            **data.counts,
            **(strategy or Strategy(IN_MEMORY, len(data.y_fit), len(data.y_fit))).columns(),
            "head_file": head_file,
            "predictions_file": predictions_file,
            "provenance": entry.provenance,
            "curve": curve,
            **({"feature_set": entry.provenance["feature_set"]}
               if isinstance(entry, FeatureSet) else {}),
        }
    )  # fmt: skip
