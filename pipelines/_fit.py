"""Fit every (model, layer, head) of a cache into a results folder.

Protocol: hyper-parameters are chosen on training data only (stratified k-fold
CV on ``train``, or the ``val`` split when the cache has one), the chosen head
is refitted on ``train`` (+ ``val``) and scored once on ``test``. Nothing is
selected on ``test``. With ``views="train"`` every training row contributes all its
augmented views and the folds are grouped by sample; with ``tta`` test rows are scored
on their test-time views (see :mod:`pipelines._views`). The results folder (its layout,
its files, and which combination is best) belongs to :mod:`pipelines._results`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score

from featurecache import __version__
from featurecache._paths import check_not_input
from featurecache._process import die_with_parent
from featurecache._validation import (
    DASK_START,
    RAY_START,
    AdviceError,
    ParameterError,
    check_bool,
    check_choice,
    check_int,
    check_names,
    check_optional_int,
    check_reachable,
    cluster_unreachable,
)
from featurecache.cache import Cache, Entry, StoredClassifier, open_cache
from featurecache.cache import _format as fmt
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest
from pipelines._budget import Budget
from pipelines._feature_sets import FeatureSet, load_set_rows, resolve_sets
from pipelines._fixed import FIXED_HEADS, fixed_pipeline, stored_classifier
from pipelines._heads import Head, build_pipeline, get_head, load_grid, resolve_grids
from pipelines._ooc import IN_MEMORY, FitRows, Strategy, fit_streamed
from pipelines._protocols import get_protocol, list_protocols
from pipelines._results import RECORD_VERSION, ResultsFolder, best, jsonable
from pipelines._rows import RowStatus, features_digest, fit_rows, row_status
from pipelines._search import (
    SearchResult,
    converged,
    search_heads,
    single_blas_thread,
    stratified_splits,
)
from pipelines._shots import ALL, learning_curve, parse_shots
from pipelines._stream import fold_groups
from pipelines._views import (
    PLAIN,
    TTA_MODES,
    VIEWS_MODES,
    Variant,
    expand_splits,
    expand_views,
    tta_predict,
)

__all__ = ["fit", "check_n_jobs", "DEFAULT_HEADS", "BACKENDS", "LOCAL_BACKENDS"]

logger = logging.getLogger(__name__)

DEFAULT_HEADS = ("logreg", "linsvm")
BACKENDS = ("loky", "threading", "multiprocessing", "dask", "ray")


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
        ``selection = "fixed"`` (see :mod:`pipelines._fixed`).
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
        ``test`` (see :mod:`pipelines._shots`); written to ``curves.csv``.
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
        :mod:`pipelines._feature_sets`). Each part is standardised on its own (inside the
        folds) before concatenation; a set reads the rows ok in every part; its parts are
        fitted alone too, for comparison. Sets are fitted on plain rows (no views, TTA or
        learning curves).
    combine_pca : int, optional
        Reduce each part of a set wider than this by its own PCA (fitted inside the folds).
    protocol : {"ssl-transfer", "dino-knn"}, optional
        Evaluate every layer with this published protocol instead of ``heads`` and the
        product's selection (see :mod:`pipelines._protocols`); recorded as the ``head``.
    memory : int or str, optional
        What one layer's fit may hold: bytes, or ``"4GB"``, ``"512MB"`` (binary units, at
        least 64MB). Default: half of the machine's RAM. A layer whose in-memory fit fits
        is fitted in memory, as without a budget; a larger one out of core, its rows
        streamed (see :mod:`pipelines._ooc`). ``results.csv`` states each head's strategy.
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
    plan = _Plan.build(
        cache, out, models=models, layers=layers, heads=heads, grid=grid, cv=cv, seed=seed,
        pca=pca, n_jobs=n_jobs, backend=backend, address=address, shots=shots, draws=draws,
        views=views, tta=tta, allow_partial=allow_partial, combine=combine,
        combine_pca=combine_pca, protocol=protocol,
        budget=Budget.build(memory, select_rows),
    )  # fmt: skip
    replace = results.check(cache, force=force)
    _check_backend(plan.backend)
    keys = _keys(cache, plan)
    if not replace:
        _say_refits(results, keys)
    with results.writing(plan.run_record(cache), replace=replace):
        with _parallel_backend(plan.backend, plan.address):
            for model, layer in plan.combos:
                if plan.heads:
                    _fit_layer(cache, plan, results, model, layer, keys)
                for name in plan.fixed.get((model, layer), ()):
                    _score_fixed(cache, plan, results, model, layer, name, keys)
            # -- feature sets and named protocols (pipelines._feature_sets, _protocols)
            for feature_set in plan.feature_sets:
                if plan.heads:
                    _fit_layer(cache, plan, results, *_set_names(feature_set), keys, feature_set)
            if plan.named_protocol is not None:
                for entry in [*(cache.entry(*c) for c in plan.combos), *plan.feature_sets]:
                    _fit_protocol(cache, plan, results, entry)
        table = results.write_table()
        results.write_curves()
    chosen = best(table)
    logger.info("best by CV: %s / %s / %s", chosen["model"], chosen["layer"], chosen["head"])
    return table


# -- planning: every check happens before anything is written -------------------------


@dataclass(frozen=True)
class _Plan:
    """What one ``fit`` call will do, fully validated."""

    heads: list[Head]
    grids: dict[str, dict[str, list]]
    grid_source: str | None
    cv: int
    seed: int
    pca: int | None
    n_jobs: int | None
    backend: str
    address: str | None
    combos: list[tuple[str, str]]
    selection: str  # "val" or "cv"
    out: str
    rows: dict[tuple[str, str], RowStatus]  # the status of each row of each combination
    shots: tuple[int, ...] = ()
    draws: int = 5
    allow_partial: bool = False
    fixed: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    variants: Mapping[str, Variant] = field(default_factory=dict)  # per model; plain if absent
    views_digest: Mapping[str, dict] = field(default_factory=dict)  # per model: its ViewSets
    feature_sets: tuple[FeatureSet, ...] = ()
    named_protocol: str | None = None
    budget: Budget = field(default_factory=lambda: Budget.build(None, None))

    @classmethod
    def build(cls, cache: Cache, out, *, models, layers, heads, grid, cv, seed, pca, n_jobs,
              backend, address, shots=None, draws=5, views=None, tta=None,
              allow_partial=False, combine=None, combine_pca=None, protocol=None,
              budget=None,
              ) -> _Plan:  # fmt: skip
        named = (
            None
            if protocol is None
            else check_choice(protocol, "protocol", "fit", list_protocols())
        )
        heads = None if named is not None else heads  # the protocol is the head
        head_names = check_names(heads, "heads", "fit", allow_none=named is not None) or []
        fitted = [name for name in head_names if name not in FIXED_HEADS]
        head_objects = [get_head(name) for name in fitted]
        grid_source = str(grid) if isinstance(grid, (str, os.PathLike)) else None
        user_grid = load_grid(grid) if grid_source is not None else grid
        pca = check_optional_int(pca, "pca", "fit", low=1)
        grids = resolve_grids(fitted, user_grid, pca=pca)
        cv = check_int(cv, "cv", "fit", low=2)
        seed = check_int(seed, "seed", "fit", low=0, high=2**32 - 1)
        backend = check_choice(backend, "backend", "fit", BACKENDS)
        n_jobs = check_n_jobs(n_jobs, backend)
        models = check_names(models, "models", "fit")
        layers = check_names(layers, "layers", "fit")
        combos = _combos(cache, models, layers)
        sets = resolve_sets(
            cache,
            check_names(combine, "combine", "fit"),
            list(dict.fromkeys(m for m, _ in combos)),
            pca=combine_pca,
        )
        combos += [(p.model, p.layer) for s in sets for p in s.parts]  # fitted alone too
        combos = list(dict.fromkeys(combos))
        fixed = _fixed_combos(cache, combos, [n for n in head_names if n in FIXED_HEADS])
        if not fitted and named is None:  # fixed heads alone: only the layers they read
            combos = [combo for combo in combos if combo in fixed]
        _check_extracted(cache, combos)
        draws = check_int(draws, "draws", "fit", low=1)
        few = tuple(k for k in parse_shots(shots) if k != ALL) if shots is not None else ()
        variants, view_sets = _variants(cache, combos, views, tta, few)
        selection = _selection(cache)
        rows = _check_rows(cache, combos, selection, cv, allow_partial)
        sets = [_with_ok_rows(s, rows) for s in sets]
        return cls(
            heads=head_objects,
            grids=grids,
            grid_source=grid_source,
            cv=cv,
            seed=seed,
            pca=pca,
            n_jobs=n_jobs,
            backend=backend,
            address=address,
            combos=combos,
            selection=selection,
            out=str(out),
            shots=few,
            draws=draws,
            rows=rows,
            allow_partial=allow_partial,
            fixed=fixed,
            variants=variants,
            views_digest=view_sets,
            feature_sets=tuple(sets),
            named_protocol=named,
            budget=budget or Budget.build(None, None),
        )

    def variant(self, model: str) -> Variant:
        """How ``model``'s heads are trained and scored in this fit (plain by default)."""
        return self.variants.get(model, Variant())

    def run_record(self, cache: Cache) -> dict:
        """What ``run.json`` records: the cache, the arguments, the protocol and the data."""
        return {
            "cache": str(Path(cache.path).resolve()),
            "samples_digest": cache.samples_digest,
            "featurecache_version": str(__version__),
            "arguments": {
                "models": sorted({m for m, _ in self.combos}),
                "layers": list(dict.fromkeys(layer for _, layer in self.combos)),
                "heads": [h.name for h in self.heads]
                + sorted({n for names in self.fixed.values() for n in names}),
                "grid": jsonable(self.grids),
                "grid_file": self.grid_source,
                "cv": self.cv,
                "seed": self.seed,
                "pca": self.pca,
                "n_jobs": self.n_jobs,
                "backend": self.backend,
                "address": self.address,
                "shots": list(self.shots),
                "draws": self.draws if self.shots else None,
                "views": self._mode("views"),
                "tta": self._mode("tta"),
                "combine": [
                    {
                        "model": s.model,
                        "layer": s.name,
                        "parts": [[p.model, p.layer] for p in s.parts],
                    }
                    for s in self.feature_sets
                ],  # fmt: skip
                "combine_pca": self.feature_sets[0].pca if self.feature_sets else None,
                "protocol": self.named_protocol,
                "memory": self.budget.memory,
                "select_rows": self.budget.select_rows,
            },
            "protocol": self.protocol,
            "data": _data_summary(cache, sorted({m for m, _ in self.combos})),
            "rows": _rows_summary(cache, self.rows, self.allow_partial),
        }

    def _mode(self, name: str) -> str:
        modes = {getattr(v, name) for v in self.variants.values()}
        return modes.pop() if modes else PLAIN

    @property
    def uses_val(self) -> bool:
        return self.selection == "val"

    @property
    def protocol(self) -> dict:
        if self.uses_val:
            selection = "chosen on the val split (each candidate fitted on train, scored on val)"
            refit = "train + val"
        else:
            selection = (
                f"chosen by {self.cv}-fold stratified cross-validation on train "
                f"(shuffled, seed {self.seed})"
            )
            refit = "train"
        if self.named_protocol is not None:
            named = get_protocol(self.named_protocol)
            selection, refit = named.chosen, named.refit
        protocol = {"selection": selection, "refit": refit}
        if self.named_protocol is not None:
            protocol["named"] = self.named_protocol
            protocol["named_description"] = get_protocol(self.named_protocol).description
        if self.feature_sets:
            protocol["feature_sets"] = (
                "each part standardised on its own"
                + (f" and reduced by its own PCA to {self.feature_sets[0].pca} components"
                   if self.feature_sets[0].pca else "")
                + " (fitted on the training rows of each fold), then concatenated; rows ok "
                "in every part"
            )  # fmt: skip
        if self._mode("views") != PLAIN:
            protocol["views"] = (
                "trained on every augmented view of every training row; the folds are drawn "
                "per sample (no view of a held-out image in training), held-out rows scored "
                "on their plain view"
            )
        if self._mode("tta") != PLAIN:
            protocol["tta"] = (
                f"test rows scored on their test-time views ({self._mode('tta')}); CV on the "
                "plain view"
            )
        return protocol


def _data_summary(cache: Cache, models: list[str]) -> dict:
    """Classes, labeled rows per split and class, and the rows that failed extraction."""
    labeled = (cache.labels >= 0) & ~cache.removed
    counts = {}
    for split in cache.samples.ordered_splits():
        in_split = (cache.splits == split) & labeled
        counts[split or "(none)"] = {
            cache.class_names[k]: int(np.sum(in_split & (cache.labels == k)))
            for k in range(len(cache.class_names))
        }
    return {
        "class_names": list(cache.class_names),
        "n_samples": int(cache.n_samples),
        "n_unlabeled": int(np.sum(~labeled)),
        "counts": counts,
        "has_test": bool(np.any((cache.splits == "test") & labeled)),
        "failed": {model: [[str(i), str(r)] for i, r in cache.failures(model)] for model in models},
    }


#: Backends whose workers are processes or threads of this machine.
LOCAL_BACKENDS = ("loky", "threading", "multiprocessing")


def check_n_jobs(n_jobs: Any, backend: str = "loky", owner: str = "fit") -> int | None:
    """``None`` or a nonzero int; on this machine's backends at most 4 workers per CPU (at
    least 32): joblib would otherwise start every one of 100,000 workers asked for."""
    value = check_optional_int(n_jobs, "n_jobs", owner)
    most = max(32, 4 * (os.cpu_count() or 1)) if backend in LOCAL_BACKENDS else None
    if value == 0 or (most is not None and value is not None and value > most):
        limit = f", at most {most} here (4 per CPU)" if most is not None else ""
        raise ParameterError(
            "n_jobs", owner, f"None or a nonzero int (-1: all cores{limit})", n_jobs
        )
    return value


def _combos(
    cache: Cache, models: list[str] | None, layers: list[str] | None
) -> list[tuple[str, str]]:
    available = cache.models
    chosen = available if models is None else models
    for model in chosen:
        if model not in available:
            raise UnknownNameError(
                f"model {model!r} is not in cache {str(cache.path)!r}; it has "
                f"{', '.join(available) or 'no models'}.{suggest(model, available)} "
                f"Hint: run `featurecache ls {cache.path}`."
            )
    if not chosen:
        raise InvalidArgumentError(
            f"cache {str(cache.path)!r} holds no features yet; run `featurecache extract` first."
        )
    by_model = {model: cache.layers(model) for model in chosen}
    if layers is None:
        return [(m, layer) for m in chosen for layer in by_model[m]]
    everything = sorted({layer for names in by_model.values() for layer in names})
    for layer in layers:
        if not any(layer in names for names in by_model.values()):
            raise UnknownNameError(
                f"layer {layer!r} is in none of the models {', '.join(chosen)}; they have "
                f"{', '.join(everything)}.{suggest(layer, everything)} "
                f"Hint: run `featurecache ls {cache.path}`."
            )
    return [(m, layer) for m in chosen for layer in by_model[m] if layer in layers]


def _fixed_combos(
    cache: Cache, combos: list[tuple[str, str]], names: list[str]
) -> dict[tuple[str, str], tuple[str, ...]]:
    """The (model, layer) pairs each fixed head applies to: the layer its classifier reads."""
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for name in names:
        kind = FIXED_HEADS[name]
        readers = {model: cache.classifiers(model).get(kind) for model in {m for m, _ in combos}}
        pairs = [(m, layer) for m, layer in combos if readers[m] and readers[m].layer == layer]
        if not pairs:
            stored = sorted(m for m, c in readers.items() if c is not None)
            reads = f" (reading {readers[stored[0]].layer})" if stored else ""
            raise InvalidArgumentError(
                f"head {name!r} needs a stored {kind} classifier and its layer; "
                + (f"models {', '.join(stored)} store one{reads}, which is not among the "
                   "layers to fit." if stored else
                   f"no model of cache {str(cache.path)!r} stores one: extract a model with "
                   "a text tower (open_clip:ARCH/PRETRAINED with its embedding.proj layer, or "
                   "an hf:REPO_ID SigLIP or CLIP repository with its tokenizer).")
            )  # fmt: skip
        for pair in pairs:
            found[pair] = (*found.get(pair, ()), name)
    return found


def _variants(
    cache: Cache, combos: list[tuple[str, str]], views: Any, tta: Any, shots: tuple[int, ...]
) -> tuple[dict[str, Variant], dict[str, dict]]:
    """The :class:`Variant` of each model (none when plain) and its recorded views, after
    refusing a model without the views asked for."""
    if views is None and tta is None:
        return {}, {}
    views = PLAIN if views is None else check_choice(views, "views", "fit", VIEWS_MODES)
    tta = PLAIN if tta is None else check_choice(tta, "tta", "fit", TTA_MODES)
    if views != PLAIN and shots:
        raise AdviceError(
            "{views} cannot be combined with {shots}: learning curves are drawn from plain "
            "rows. Fit the curves in a plain run into the same results folder.",
            views=("views", views), shots=("shots", ",".join(map(str, shots))),
        )  # fmt: skip
    variants, recorded = {}, {}
    for model in dict.fromkeys(m for m, _ in combos):
        sets = cache.views(model)
        for mode, kind, flags in (
            (views, "augment", "--views K --augment SPEC"), (tta, "tta", "--tta SPEC")
        ):  # fmt: skip
            if mode != PLAIN and (sets is None or not sets.count(kind)):
                asked = ("views", views) if kind == "augment" else ("tta", tta)
                what = "augmented" if kind == "augment" else "test-time"
                raise AdviceError(
                    "{asked}"
                    + AdviceError.literal(
                        f" needs {what} views of model {model!r}, which cache "
                        f"{str(cache.path)!r} does not hold; extract them under a new model "
                        f"name with `featurecache extract DATA --cache {cache.path} --model "
                        f"BACKBONE --name NAME {flags}`, or fit without "
                    )
                    + "{asked}.",
                    asked=asked,
                )  # fmt: skip
        variants[model] = Variant(
            views=views,
            n_views=sets.count("augment") if views != PLAIN else 1,
            tta=tta,
            n_tta=sets.count("tta") if tta != PLAIN else 1,
        )
        recorded[model] = sets.to_dict()
    return variants, recorded


def _check_extracted(cache: Cache, combos: list[tuple[str, str]]) -> None:
    n_ok = {(e.model, e.layer): e.n_ok for e in cache.entries}
    empty = [f"{m}/{layer}" for m, layer in combos if n_ok.get((m, layer), 0) == 0]
    if empty:
        raise InvalidArgumentError(
            f"{', '.join(empty)} of cache {str(cache.path)!r} hold no extracted rows yet; "
            "finish `featurecache extract` or leave them out of models/layers."
        )


def _selection(cache: Cache) -> str:
    """``"val"`` or ``"cv"``: how hyper-parameters are chosen, after checking the labels."""
    _check_classes(cache)
    labeled = (cache.labels >= 0) & ~cache.removed
    return "val" if (labeled & (cache.splits == "val")).any() else "cv"


# -- the rows a fit can use: pending, failed, and classes left without training rows ---


def _check_rows(
    cache: Cache, combos: list[tuple[str, str]], selection: str, cv: int, allow_partial: bool
) -> dict[tuple[str, str], RowStatus]:
    """The status of each row of each combination, after refusing pending rows (unless
    ``allow_partial``) and usable rows too few for the selection."""
    entries = {(e.model, e.layer): e for e in cache.entries}
    rows = {combo: row_status(cache, entries[combo]) for combo in combos}
    partial = {combo: status for combo, status in rows.items() if status.counts()["pending"]}
    if partial and not allow_partial:
        raise AdviceError(
            AdviceError.literal(_pending_text(cache, partial))
            + " Finish the extraction (re-run the same `featurecache extract` command), or pass "
            "{fix} to fit on the rows done (the report states the counts).",
            fix=("allow_partial", True),
        )
    for status in rows.values():
        _check_usable(cache, status, selection, cv)
    return rows


def _pending_text(cache: Cache, partial: dict[tuple[str, str], RowStatus]) -> str:
    """``cache 'c.h5' has pending rows (...): resnet18 (layers a, b): 44 of 300 (train 30,
    test 14)``, the layers of a model grouped when their counts agree."""
    groups: dict[tuple[str, str], list[str]] = {}
    for (model, layer), status in partial.items():
        by_split = status.by_split(cache.splits)
        counts = ", ".join(
            f"{split or '(no split)'} {n['pending']}"
            for split, n in by_split.items()
            if n["pending"]
        )
        text = f"{status.counts()['pending']} of {cache.n_samples} rows ({counts})"
        groups.setdefault((model, text), []).append(layer)
    parts = [
        f"{model} (layer{'s' if len(layers) > 1 else ''} {', '.join(layers)}): {text}"
        for (model, text), layers in groups.items()
    ]
    return (
        f"cache {str(cache.path)!r} has pending rows, not extracted yet (an extraction still "
        f"running or stopped): {'; '.join(parts)}."
    )


def _check_usable(cache: Cache, status: RowStatus, selection: str, cv: int) -> None:
    """Refuse a combination whose usable (ok, labeled) rows leave a class without training
    rows, the val split empty, or a class with fewer rows than CV folds."""
    labeled = (cache.labels >= 0) & ~cache.removed
    usable = labeled & status.ok
    where = f"{status.model}/{status.layer} of cache {str(cache.path)!r}"
    train_all = labeled & (cache.splits == "train")
    train = usable & train_all
    lost = sorted(set(cache.labels[train_all].tolist()) - set(cache.labels[train].tolist()))
    if lost:
        raise InvalidArgumentError(_lost_text(cache, status, lost, where))
    if selection == "val":
        val = labeled & (cache.splits == "val")
        if not (usable & val).any():
            raise InvalidArgumentError(
                f"the val split of {where} has no usable rows ({_why(status, val)}); "
                f"{_fix(status, val)}"
            )
        return
    counts = np.bincount(cache.labels[train], minlength=len(cache.class_names))
    present = np.flatnonzero(counts)
    k = int(present[np.argmin(counts[present])])
    n = int(counts[k])
    if n >= cv:
        return
    name = cache.class_names[k]
    rows_text = f"{n} usable train row{'s' if n != 1 else ''}"
    missing = train_all & (cache.labels == k) & ~status.ok
    also = f" ({_why(status, missing)})" if missing.any() else ""
    if n >= 2:
        detail = f" needs at least {cv} train rows per class; class {name!r} has {rows_text} in "
        raise AdviceError(
            "{asked}" + AdviceError.literal(f"{detail}{where}{also}. Use ") + "{fix} (or fewer "
            "folds), " + AdviceError.literal(f"add training images of {name!r}, or leave the "
                                             "class out."),
            asked=("cv", cv), fix=("cv", n),
        )  # fmt: skip
    raise InvalidArgumentError(
        f"class {name!r} has {rows_text} in {where}{also}, and cross-validation needs at least "
        f"2 per class (fewer than 2 folds is impossible): add training images of {name!r}, "
        "leave the class out, or give the data a val split (a val/ folder or a split column) "
        "to choose hyper-parameters on."
    )


def _lost_text(cache: Cache, status: RowStatus, lost: list[int], where: str) -> str:
    names = ", ".join(repr(cache.class_names[k]) for k in lost)
    rows = (cache.labels >= 0) & ~cache.removed & (cache.splits == "train")
    rows &= np.isin(cache.labels, lost)
    plural = "es" if len(lost) > 1 else ""
    return (
        f"class{plural} {names} {'have' if plural else 'has'} no usable train rows in {where}: "
        f"{'their' if plural else 'its'} {int(rows.sum())} train rows are {_why(status, rows)}; "
        f"a head cannot learn {'them' if plural else 'it'}. {_fix(status, rows)}"
    )


def _why(status: RowStatus, rows: np.ndarray) -> str:
    """``3 pending, 1 failed`` for the non-ok rows among ``rows``."""
    counts = RowStatus(status.model, status.layer, status.status[rows]).counts()
    parts = [f"{counts[kind]} {kind}" for kind in ("pending", "failed") if counts[kind]]
    return ", ".join(parts) or "0 usable"


def _fix(status: RowStatus, rows: np.ndarray) -> str:
    counts = RowStatus(status.model, status.layer, status.status[rows]).counts()
    if counts["pending"]:
        return "Finish the extraction (re-run the same `featurecache extract` command) first."
    return (
        "Replace the unreadable images (`featurecache ls CACHE` lists them with their reason) "
        "and extract into a new cache, or leave the class out."
    )


def _rows_summary(cache: Cache, rows: dict[tuple[str, str], RowStatus], allow_partial: bool):
    """What ``run.json`` records of the rows each combination could use, split by split:
    :meth:`Cache.counts`, the one count ``extract`` and ``ls`` print too."""
    combinations = []
    for model, layer in rows:
        counts = cache.counts(model, layer)
        splits = {split: found for split, found in counts.items() if split != "all"}
        combinations.append(
            {"model": model, "layer": layer, "n_samples": int(cache.n_samples),
             **counts["all"], "splits": splits}
        )  # fmt: skip
    return {"allow_partial": allow_partial, "combinations": combinations}


def _check_classes(cache: Cache) -> None:
    """Train holds at least 2 classes, and every class of val and test."""
    labeled = (cache.labels >= 0) & ~cache.removed
    where = f"cache {str(cache.path)!r}"
    train = labeled & (cache.splits == "train")
    if not train.any():
        present = sorted(set(cache.splits[labeled].tolist()))
        shown = ", ".join(repr(s) for s in present) or "none"
        raise InvalidArgumentError(
            f"fit needs labeled rows in split 'train'; {where} has labeled rows in splits "
            f"{shown}; extract with a dataset that defines a train split."
        )
    train_classes = set(np.unique(cache.labels[train]).tolist())
    if len(train_classes) < 2:
        name = cache.class_names[next(iter(train_classes))]
        raise InvalidArgumentError(
            f"the train split of {where} holds one class ({name!r}); a classifier needs at least 2."
        )
    for split in ("val", "test"):
        rows = labeled & (cache.splits == split)
        only = sorted(set(np.unique(cache.labels[rows]).tolist()) - train_classes)
        if only:
            names = ", ".join(repr(cache.class_names[k]) for k in only)
            raise InvalidArgumentError(
                f"classes {names} have labels only in the {split} split of {where}, none in "
                "train; a head cannot learn them. Move some of those samples to train."
            )


def _check_backend(backend: str) -> None:
    needs = {"dask": ("distributed", "dask"), "ray": ("ray", "ray")}
    if backend not in needs:
        return
    module, extra = needs[backend]
    try:
        __import__(module)
    except ImportError as error:
        raise InvalidArgumentError(
            f"backend {backend!r} needs the {module!r} package, which is not installed; "
            f"pip install 'featurecache[{extra}]' or use backend 'loky'."
        ) from error


@contextlib.contextmanager
def _parallel_backend(backend: str, address: str | None) -> Iterator[None]:
    """Run joblib calls inside on ``backend``; dask and ray are imported only here."""
    from joblib import parallel_config

    if backend == "dask":
        client = _dask_client(address)
        try:
            with parallel_config(backend="dask"):
                yield
        finally:
            client.close()
        return
    if backend == "ray":
        import ray
        from ray.util.joblib import register_ray

        register_ray()
        started = not ray.is_initialized()
        if started:
            _ray_init(ray, address)
        try:
            with parallel_config(backend="ray"):
                yield
        finally:
            if started:  # shut down only the instance this call started
                ray.shutdown()
        return
    # Workers of this machine end with the fit: a fit killed with SIGKILL leaves none running
    # (holding its stdout, so that `featurecache fit ... | tee log` would never end).
    extra = {"initializer": die_with_parent, "initargs": (os.getpid(),)}
    with parallel_config(backend=backend, **(extra if backend in _WORKER_PROCESSES else {})):
        yield


#: Backends whose workers are processes started by this one.
_WORKER_PROCESSES = ("loky", "multiprocessing")


DASK_ADVICE = DASK_START + ", or give no address to fit on a local Dask cluster"
RAY_ADVICE = RAY_START + ", or give no address to fit on a local Ray instance"


def _dask_client(address: str | None):
    """A Dask client of the scheduler at ``address`` (a local cluster without one)."""
    from distributed import Client

    if not address:
        return Client()
    check_reachable(address, "Dask scheduler", DASK_ADVICE)
    try:
        return Client(address)
    except (OSError, TimeoutError) as error:  # something answered that is not a scheduler
        raise cluster_unreachable(
            address, "Dask scheduler", _first_line(error), DASK_ADVICE
        ) from error


def _ray_init(ray, address: str | None) -> None:
    """Connect to the Ray cluster at ``address`` (a local instance without one), quietly unless -v."""
    quiet = {} if logger.isEnabledFor(logging.INFO) else {"logging_level": logging.ERROR}
    if address and address != "local":
        check_reachable(address, "Ray cluster", RAY_ADVICE)
    try:
        ray.init(address=address, include_dashboard=False, **quiet)
    except ConnectionError as error:  # `auto` with no cluster on this node
        reason = "none runs on this node" if address == "auto" else _first_line(error)
        raise cluster_unreachable(address or "auto", "Ray cluster", reason, RAY_ADVICE) from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


# -- one layer ------------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerData:
    """The rows of one layer a fit uses: the fitting rows with their selection splits,
    and the test rows.

    With views, ``X_fit`` holds the plain view of every fitting row first (row ``i`` is
    sample ``fit_samples[i]``), then the other views; ``splits`` are grouped by sample.
    With TTA, ``tta_views[j]`` holds the test-time views of test row ``tta_positions[j]``.
    """

    X_fit: np.ndarray
    y_fit: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    X_test: np.ndarray
    y_test: np.ndarray
    ids_test: np.ndarray
    counts: dict[str, int]
    train_rows: np.ndarray  # rows of X_fit in the train split: the pool of few-shot draws
    fit_samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test_samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tta_views: np.ndarray | None = None
    tta_positions: np.ndarray | None = None

    @classmethod
    def load(
        cls, cache: Cache, plan: _Plan, entry: Entry, variant: Variant | None = None
    ) -> _LayerData:
        """The plain rows, with the views and test-time views ``variant`` asks for."""
        data = cls._load_plain(cache, plan, entry)
        variant = variant or Variant()
        if variant.views != PLAIN:
            data = data._with_views(cache, entry)
        if variant.tta != PLAIN:
            data = data._with_tta(cache, entry)
        return data

    @classmethod
    def _load_plain(cls, cache: Cache, plan: _Plan, entry: Entry) -> _LayerData:
        # Exactly the rows the combination's key names (features_digest), even if more rows
        # were committed since the plan (an extraction still running, --allow-partial).
        if isinstance(entry, FeatureSet):
            wanted = np.logical_and.reduce(
                [fit_rows(cache, plan.rows[part.model, part.layer]) for part in entry.parts]
            )
            X, rows = load_set_rows(cache, entry, wanted)
        else:
            wanted = fit_rows(cache, plan.rows[entry.model, entry.layer])
            X, rows = cache.load_rows(entry.model, entry.layer, wanted)
        y, ids, split = cache.labels[rows], cache.ids[rows], cache.splits[rows]
        fitting = (split == "train") | (split == "val") if plan.uses_val else split == "train"
        test = split == "test"
        return cls(
            X_fit=X[fitting],
            y_fit=y[fitting],
            splits=_selection_splits(plan, entry, split[fitting], y[fitting]),
            X_test=X[test],
            y_test=y[test],
            ids_test=ids[test],
            counts={
                "n_train": int(np.sum(split == "train")),
                "n_val": int(np.sum(split == "val")),
                "n_test": int(np.sum(test)),
                "n_features": int(entry.n_features),
            },
            train_rows=np.flatnonzero(split[fitting] == "train"),
            fit_samples=rows[fitting],
            test_samples=rows[test],
        )

    def _with_views(self, cache: Cache, entry: Entry) -> _LayerData:
        """Every augmented view of the fitting rows that have them, folds grouped by sample."""
        views, positions = _views_of(
            cache, entry, "augment", self.fit_samples,
            "training rows have no augmented views (failed or pending): they train on their "
            "plain view only",
        )  # fmt: skip
        X, y, groups = expand_views(self.X_fit, self.y_fit, views, positions)
        return dataclasses.replace(
            self, X_fit=X, y_fit=y, splits=expand_splits(self.splits, groups)
        )

    def _with_tta(self, cache: Cache, entry: Entry) -> _LayerData:
        """The test-time views of the test rows that have them."""
        views, positions = _views_of(
            cache, entry, "tta", self.test_samples,
            "test rows have no test-time views (failed or pending): they are scored on their "
            "plain view",
        )  # fmt: skip
        return dataclasses.replace(self, tta_views=views, tta_positions=positions)


def _views_of(
    cache: Cache, entry: Entry, kind: str, samples: np.ndarray, missing_text: str
) -> tuple[np.ndarray, np.ndarray]:
    """The ``kind`` views of those of ``samples`` that have them, and their positions in
    ``samples``; how many have none is logged (``"%d " + missing_text``)."""
    views, rows = cache.load_views(entry.model, entry.layer, kind)
    positions, found = _positions(samples, rows)
    missing = len(samples) - int(found.sum())
    if missing:
        logger.info("%s/%s: %d " + missing_text, entry.model, entry.layer, missing)
    return views[found], positions[found]


def _positions(samples: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``rows`` (sample indices), its position in ``samples`` and whether it is
    there at all."""
    order = np.argsort(samples, kind="stable")
    at = np.minimum(np.searchsorted(samples, rows, sorter=order), max(len(samples) - 1, 0))
    positions = order[at] if len(samples) else np.zeros(len(rows), np.int64)
    found = samples[positions] == rows if len(samples) else np.zeros(len(rows), bool)
    return positions, found


def _selection_splits(plan: _Plan, entry: Entry, split: np.ndarray, y: np.ndarray) -> list:
    """The (train, score) index pairs candidates are compared on: the val split, or CV folds."""
    if not plan.uses_val:
        return stratified_splits(y, plan.cv, plan.seed)
    is_val = split == "val"
    if not is_val.any() or is_val.all():
        raise InvalidArgumentError(
            f"{entry.model}/{entry.layer}: no ok rows left in train or val; re-run "
            "`featurecache extract`."
        )
    return [(np.flatnonzero(~is_val), np.flatnonzero(is_val))]


class _Refit(NamedTuple):
    estimator: Any
    y_pred: np.ndarray
    seconds: float
    converged: bool
    confidence: np.ndarray
    predict_seconds_per_1000: float | None


def _fit_layer(
    cache: Cache, plan: _Plan, results: ResultsFolder, model: str, layer: str,
    keys: Mapping[tuple[str, str, str], _Key],
    feature_set: FeatureSet | None = None,
) -> None:  # fmt: skip
    entry = feature_set or cache.entry(model, layer)
    variant = plan.variant(model) if feature_set is None else Variant()
    scale = feature_set.scaler(plan.seed) if feature_set is not None else None
    # Feature sets are fitted in memory (their parts are read whole: not streamed yet).
    streamed = feature_set is None and not plan.budget.fits_in_memory(
        _rows_held(cache, plan, entry), entry.n_features
    )
    keys = {head.name: keys[model, layer, head.name] for head in plan.heads}
    if streamed:  # the budget changes how a head is chosen: part of its key out of core
        keys = {name: _budget_key(key, plan.budget) for name, key in keys.items()}
    pending = [
        head
        for head in plan.heads
        if not results.is_done(model, layer, head.name, keys[head.name].key, variant.name)
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
    data = _LayerData.load(cache, plan, entry, variant)
    found = search_heads(
        pending, plan.grids, data.X_fit, data.y_fit, data.splits, seed=plan.seed,
        n_jobs=plan.n_jobs, scale=scale,
    )  # fmt: skip
    tta = (
        None
        if variant.tta == PLAIN
        else _TestViews(variant.tta, data.tta_views, data.tta_positions)
    )
    refits = Parallel(n_jobs=plan.n_jobs)(
        delayed(_refit)(head, found[head.name].params, data.X_fit, data.y_fit, data.X_test,
                        plan.seed, tta, scale)
        for head in pending
    )  # fmt: skip
    strategy = Strategy(IN_MEMORY, len(data.y_fit), len(data.y_fit))
    for head, refit in zip(pending, refits, strict=True):
        curve = _curve(plan, head, data) if feature_set is None else []
        _write_combo(results, cache, plan, entry, data, head, keys[head.name], found[head.name],
                     refit, curve, variant=variant, strategy=strategy)  # fmt: skip
    results.write_table()


def _rows_held(cache: Cache, plan: _Plan, entry: Entry) -> int:
    """The rows an in-memory fit of ``entry`` holds: every labeled ok row, times its views."""
    status = plan.rows[(entry.model, entry.layer)]
    labeled = (cache.labels >= 0) & status.ok & np.isin(cache.splits, fmt.SPLITS)
    variant = plan.variant(entry.model)
    fitting = labeled & (cache.splits != "test")
    return int(labeled.sum() + fitting.sum() * (variant.n_views - 1)
               + (labeled & ~fitting).sum() * (variant.n_tta - 1))  # fmt: skip


def _budget_key(key: _Key, budget: Budget) -> _Key:
    """A combination's key out of core: the budget changes how its head is chosen."""
    return _Key.of({**key.fields, "memory": budget.memory, "select_rows": budget.select_rows})


class _TestRows(NamedTuple):
    """What a record needs of the test rows when the layer is streamed."""

    ids_test: np.ndarray
    y_test: np.ndarray
    counts: dict[str, int]
    rows: np.ndarray


def _fit_layer_streamed(
    cache: Cache, plan: _Plan, results: ResultsFolder, entry: Entry, variant: Variant,
    pending: list[Head], keys: dict[str, _Key],
) -> None:  # fmt: skip
    """Fit ``pending`` out of core (:mod:`pipelines._ooc`), its test rows predicted in windows."""
    rows, test = _streamed_rows(cache, plan, entry)
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
        y_pred, scores, per_1000 = _predict_streamed(cache, plan, entry, variant, streamed.estimator,
                                                     test.rows)  # fmt: skip
        refit = _Refit(streamed.estimator, y_pred, streamed.seconds, streamed.converged, scores,
                       per_1000)  # fmt: skip
        found = streamed.found
        if plan.shots:
            note = "No learning curve: the layer was fitted out of core."
            found = dataclasses.replace(found, warnings=(*found.warnings, note))
        _write_combo(results, cache, plan, entry, test, head, keys[head.name], found, refit, [],
                     variant=variant, strategy=streamed.strategy)  # fmt: skip
    results.write_table()


def _streamed_rows(cache: Cache, plan: _Plan, entry: Entry) -> tuple[FitRows, _TestRows]:
    """The fitting rows and the test rows of ``entry``, as :meth:`_LayerData.load` takes them,
    without their features."""
    status = plan.rows[(entry.model, entry.layer)]
    labeled = (cache.labels >= 0) & ~cache.removed & status.ok
    split = cache.splits
    fitting = labeled & (
        (split == "train") | (split == "val") if plan.uses_val else split == "train"
    )
    rows = np.flatnonzero(fitting)
    y = cache.labels[rows]
    splits = _selection_splits(plan, entry, split[rows], y)
    test_rows = np.flatnonzero(labeled & (split == "test"))
    counts = {
        "n_train": int(np.sum(labeled & (split == "train"))),
        "n_val": int(np.sum(labeled & (split == "val"))),
        "n_test": len(test_rows),
        "n_features": int(entry.n_features),
    }
    fit_rows = FitRows(rows, y, split[rows] == "val", splits)
    return fit_rows, _TestRows(cache.ids[test_rows], cache.labels[test_rows], counts, test_rows)


@single_blas_thread
def _predict_streamed(
    cache: Cache, plan: _Plan, entry: Entry, variant: Variant, estimator, rows: np.ndarray
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
    cache: Cache, plan: _Plan, results: ResultsFolder, model: str, layer: str, name: str,
    keys: Mapping[tuple[str, str, str], _Key],
) -> None:  # fmt: skip
    """Score a fixed head like a fitted one: on the selection folds, then once on test."""
    entry = cache.entry(model, layer)
    classifier = stored_classifier(cache, model, FIXED_HEADS[name])
    key = keys[model, layer, name]
    if results.is_done(model, layer, name, key.key):
        logger.info("%s/%s: %s already scored, reusing", model, layer, name)
        return
    estimator = fixed_pipeline(classifier, entry.n_features)
    if plan.budget.fits_in_memory(_rows_held(cache, plan, entry), entry.n_features):
        data = _LayerData.load(cache, plan, entry)
        start = time.perf_counter()
        fold_scores = [
            float(np.mean(estimator.predict(data.X_fit[score]) == data.y_fit[score]))
            for _, score in data.splits
        ]
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        y_pred = estimator.predict(data.X_test) if len(data.X_test) else np.zeros(0, np.int64)
        n_test = len(data.X_test)
        per_1000 = (time.perf_counter() - start) * 1000 / n_test if n_test else None
        scores = confidence(estimator, data.X_test)
        splits, how = data.splits, IN_MEMORY
    else:  # streamed: the same scores, window by window
        rows, data = _streamed_rows(cache, plan, entry)
        start = time.perf_counter()
        fold_scores = _fixed_fold_scores(cache, plan, entry, estimator, rows)
        seconds = time.perf_counter() - start
        y_pred, scores, per_1000 = _predict_streamed(
            cache, plan, entry, Variant(), estimator, data.rows
        )
        splits, how = rows.splits, "fixed, scored streamed"
    found = SearchResult(
        head=name, params={}, cv_mean=float(np.mean(fold_scores)),
        cv_std=float(np.std(fold_scores)) if len(fold_scores) > 1 else _binomial_se(
            fold_scores[0], len(splits[0][1])),
        candidates=({"params": {}, "scores": fold_scores, "mean": float(np.mean(fold_scores)),
                     "std": float(np.std(fold_scores))},),
        n_splits=len(fold_scores), n_not_converged=0, seconds=seconds, warnings=(),
    )  # fmt: skip
    refit = _Refit(
        estimator, np.asarray(y_pred, dtype=np.int64), 0.0, True, scores, per_1000,
    )  # fmt: skip
    n_scored = sum(len(score) for _, score in splits)
    _write_combo(results, cache, plan, entry, data, _Named(name), key, found, refit, [],
                 selection="fixed", strategy=Strategy(how, n_scored, 0))  # fmt: skip
    results.write_table()


def _fixed_fold_scores(
    cache: Cache, plan: _Plan, entry: Entry, estimator, rows: FitRows
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


class _Named(NamedTuple):
    name: str


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else math.nan


class _Key(NamedTuple):
    """What a combination's result depends on (``fields``) and its digest (``key``)."""

    key: str
    fields: dict

    @classmethod
    def of(cls, fields: dict) -> _Key:
        fields = jsonable(fields)
        return cls(hashlib.sha256(fmt.canonical_json(fields).encode()).hexdigest(), fields)


def _keys(cache: Cache, plan: _Plan) -> dict[tuple[str, str, str], _Key]:
    """The :class:`_Key` of every (model, layer, head) this fit writes."""
    keys = {}
    for model, layer in plan.combos:
        entry = cache.entry(model, layer)
        if plan.heads:
            digest = features_digest(cache, plan.rows[model, layer], plan.variant(model))
            for head in plan.heads:
                keys[model, layer, head.name] = _combo_key(cache, plan, entry, head, digest)
        for name in plan.fixed.get((model, layer), ()):
            classifier = stored_classifier(cache, model, FIXED_HEADS[name])
            digest = features_digest(cache, plan.rows[model, layer])
            keys[model, layer, name] = _fixed_key(cache, plan, entry, name, classifier, digest)
    for feature_set in plan.feature_sets if plan.heads else ():
        digest = _set_digest(cache, plan, feature_set)
        for head in plan.heads:
            keys[(*_set_names(feature_set), head.name)] = _combo_key(
                cache, plan, feature_set, head, digest
            )
    return keys


def _set_digest(cache: Cache, plan: _Plan, feature_set: FeatureSet) -> str:
    """The features a set reads: the digest of each part's features, in the set's order."""
    parts = [features_digest(cache, plan.rows[p.model, p.layer]) for p in feature_set.parts]
    return hashlib.sha256(fmt.canonical_json(parts).encode()).hexdigest()


def _fixed_key(
    cache: Cache, plan: _Plan, entry: Entry, name: str, classifier: StoredClassifier,
    digest: str,
) -> _Key:  # fmt: skip
    """Everything that changes a fixed head's scores."""
    return _Key.of(
        {**_key_fields(cache, plan, entry, name, digest), "classifier": classifier.digest()}
    )


def _key_fields(cache: Cache, plan: _Plan, entry: Entry, head: str, digest: str) -> dict:
    """What every result key holds: the data, the features, the head and the protocol.

    ``features_digest`` names the exact feature rows read (:func:`pipelines._rows.features_digest`):
    a layer extracted again from other pixels, or rows added or left out, change it.
    """
    provenance = entry.provenance
    features = provenance.get("config_digest") or fmt.canonical_json(jsonable(provenance))
    return {
        "version": RECORD_VERSION,
        "samples_digest": cache.samples_digest,
        "model": entry.model,
        "layer": entry.layer,
        "features": features,
        "features_digest": digest,
        "n_ok": entry.n_ok,
        "head": head,
        "selection": plan.selection,
        "cv": plan.cv if plan.selection == "cv" else None,
        "seed": plan.seed,
    }


def _say_refits(results: ResultsFolder, keys: Mapping[tuple[str, str, str], _Key]) -> None:
    """Log one line per reason why finished combinations are fitted again."""
    reasons: dict[str, int] = {}
    for (model, layer, head), key in keys.items():
        variant = _key_variant(key)
        why = _refit_reason(results.record(model, layer, head, variant), key, results)
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
    for why, n in reasons.items():
        logger.warning("%d head%s refitted: %s", n, "s" if n > 1 else "", why)


def _key_variant(key: _Key) -> str:
    return Variant(**key.fields["variant"]).name if "variant" in key.fields else ""


#: How the fields of a key are named when they changed.
_FIELD_WORDS = {
    "samples_digest": "the sample table",
    "features": "the feature configuration",
    "n_ok": "the number of ok rows",
    "n_failed": "the number of failed rows",
    "n_features": "the layer's width",
    "selection": "the selection (val or CV)",
    "cv": "the number of CV folds",
    "seed": "the seed",
    "grid": "the grid",
    "shots": "the learning-curve shots",
    "draws": "the learning-curve draws",
    "views": "the views",
    "variant": "the variant",
    "classifier": "the stored classifier",
}


def _refit_reason(record: Mapping | None, key: _Key, results: ResultsFolder) -> str | None:
    """Why the combination of ``record`` is fitted again under ``key``; ``None`` when it is
    new or reused."""
    if record is None:
        return None
    if record.get("key") == key.key:
        if (results.root / record.get("head_file", "")).is_file():
            return None
        return "their head files are missing"
    old = record.get("key_fields")
    if not isinstance(old, Mapping) or "features_digest" not in old:
        return (
            "they were fitted by an earlier featurecache, which did not record the features "
            "they read"
        )
    fields = key.fields
    if old.get("features_digest") != fields["features_digest"]:
        return f"the features of {fields['model']}/{fields['layer']} changed since they were fitted"
    changed = [k for k in sorted(set(old) | set(fields)) if old.get(k) != fields.get(k)]
    return f"{', '.join(_FIELD_WORDS.get(k, k) for k in changed)} changed since they were fitted"


class _TestViews(NamedTuple):
    """Test-time augmentation: ``mode``, and the views of the test rows at ``positions``."""

    mode: str
    views: np.ndarray  # (n_with_views, n_tta, n_features)
    positions: np.ndarray  # their rows among the test rows


@single_blas_thread
def _refit(
    head: Head, params: dict, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int,
    tta: _TestViews | None = None, scale=None,
) -> _Refit:  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator = build_pipeline(head, params, X, y, seed=seed, scale=scale)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    y_pred = estimator.predict(X_test) if len(X_test) else np.zeros(0, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    scores = confidence(estimator, X_test)
    if tta is not None and len(tta.positions):
        # Rows without test-time views keep their plain prediction.
        y_pred[tta.positions], scores[tta.positions] = tta_predict(estimator, tta.views, tta.mode)
    per_1000 = (time.perf_counter() - start) * 1000 / len(X_test) if len(X_test) else None
    return _Refit(
        estimator, y_pred, seconds, converged(estimator[-1]), scores, per_1000
    )  # fmt: skip


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


def _curve(plan: _Plan, head: Head, data: _LayerData) -> list[dict]:
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
    results: ResultsFolder, cache: Cache, plan: _Plan, entry: Entry, data: _LayerData,
    head: Head, key: _Key, found: SearchResult, refit: _Refit, curve: list[dict],
    selection: str | None = None, variant: Variant | None = None,
    strategy: Strategy | None = None,
) -> None:  # fmt: skip
    """Write the head, its test predictions, and last the record that marks it finished."""
    model, layer = entry.model, entry.layer
    variant = variant or Variant()
    head_file = results.write_head(
        estimator=refit.estimator, model=model, layer=layer, head=head.name, params=found.params,
        class_names=cache.class_names, samples_digest=cache.samples_digest,
        provenance=entry.provenance, variant=variant.name,
    )  # fmt: skip
    predictions_file = results.write_predictions(
        model, layer, head.name, ids=data.ids_test, y_true=data.y_test, y_pred=refit.y_pred,
        class_names=cache.class_names, confidence=refit.confidence, variant=variant.name,
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
            **_scores(found, refit, data.y_test),
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


def _scores(found: SearchResult, refit: _Refit, y_test: np.ndarray) -> dict[str, Any]:
    """What the search found and what the refitted head scored on test."""
    metrics = heldout_metrics(y_test, refit.y_pred)
    return {
        "params": found.params,
        "cv_mean": found.cv_mean,
        "cv_std": found.cv_std,
        "candidates": list(found.candidates),
        "test_accuracy": metrics["accuracy"],
        "test_balanced_accuracy": metrics["balanced_accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "fit_seconds": found.seconds + refit.seconds,
        "n_not_converged": found.n_not_converged + (0 if refit.converged else 1),
        "warnings": " ".join(found.warnings),
        "predict_seconds_per_1000": refit.predict_seconds_per_1000,
    }


def _combo_key(cache: Cache, plan: _Plan, entry: Entry, head: Head, digest: str) -> _Key:
    """Everything that changes a combination's result."""
    key = {
        **_key_fields(cache, plan, entry, head.name, digest),
        "n_features": entry.n_features,
        "n_failed": entry.n_failed,
        "grid": jsonable(plan.grids[head.name]),
    }
    if plan.shots:  # without a curve the key stays what it was
        key["shots"], key["draws"] = list(plan.shots), plan.draws
    variant = plan.variant(entry.model)
    if not variant.is_plain:  # nor without views
        key["variant"] = variant.columns()
        key["views"] = plan.views_digest[entry.model]
    return _Key.of(key)


# -- metrics --------------------------------------------------------------------------


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


# -- feature sets and named protocols (logic in pipelines._feature_sets, _protocols) ------


def _set_names(feature_set: FeatureSet) -> tuple[str, str]:
    return feature_set.model, feature_set.name


def _with_ok_rows(feature_set: FeatureSet, rows: Mapping[tuple[str, str], RowStatus]) -> FeatureSet:
    """``feature_set`` with ``n_ok``: the rows ok in every part."""
    ok = np.logical_and.reduce([rows[(p.model, p.layer)].ok for p in feature_set.parts])
    return dataclasses.replace(feature_set, n_ok=int(ok.sum()))


def _fit_protocol(cache: Cache, plan: _Plan, results: ResultsFolder, entry) -> None:
    """Evaluate one layer (or feature set) with the named protocol and record it."""
    protocol = get_protocol(plan.named_protocol)
    digest = (
        _set_digest(cache, plan, entry)
        if isinstance(entry, FeatureSet)
        else features_digest(cache, plan.rows[entry.model, entry.layer])
    )
    key = _Key.of(
        {**_key_fields(cache, plan, entry, protocol.name, digest), "n_features": entry.n_features}
    )
    if results.is_done(entry.model, entry.layer, protocol.name, key.key):
        logger.info("%s/%s: %s already done, reusing", entry.model, entry.layer, protocol.name)
        return
    data = _LayerData.load(cache, plan, entry)
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
    start = time.perf_counter()
    y_pred = (chosen.estimator.predict(data.X_test) if len(data.X_test)
              else np.zeros(0, dtype=np.int64))  # fmt: skip
    per_1000 = (time.perf_counter() - start) * 1000 / len(data.X_test) if len(data.X_test) else None
    refit = _Refit(
        chosen.estimator, np.asarray(y_pred, dtype=np.int64), 0.0, True,
        confidence(chosen.estimator, data.X_test), per_1000,
    )  # fmt: skip
    _write_combo(results, cache, plan, entry, data, _Named(protocol.name), key, found, refit, [],
                 selection=protocol.selection)  # fmt: skip
    results.write_table()
