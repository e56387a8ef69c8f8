"""What one ``fit`` call will do: the combinations, heads, grids, selection and variants.

:meth:`Plan.build` validates every argument and checks the cache's rows
(:mod:`pipelines.fitting._row_checks`) before anything is written; :meth:`Plan.run_record` is what
``run.json`` records of the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurecache import __version__
from featurecache.cache import Cache
from featurecache.core._validation import (
    AdviceError,
    check_choice,
    check_int,
    check_names,
    check_optional_int,
)
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest
from pipelines.fitting._budget import Budget
from pipelines.fitting._cluster import BACKENDS, check_n_jobs
from pipelines.fitting._row_checks import check_classes, check_extracted, check_rows
from pipelines.heads._fixed import FIXED_HEADS
from pipelines.heads._heads import Head, get_head, load_grid, resolve_grids
from pipelines.heads._protocols import get_protocol, list_protocols
from pipelines.heads._shots import ALL, parse_shots
from pipelines.results._feature_sets import FeatureSet, resolve_sets
from pipelines.results._results import jsonable
from pipelines.rows._rows import RowStatus
from pipelines.rows._views import PLAIN, TTA_MODES, VIEWS_MODES, Variant

__all__ = ["DEFAULT_HEADS", "Plan"]

DEFAULT_HEADS = ("logreg", "linsvm")


@dataclass(frozen=True)
class Plan:
    """What one ``fit`` call will do, fully validated: build it with :meth:`build`."""

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
              ) -> Plan:  # fmt: skip
        """Validate ``fit``'s arguments against ``cache`` and decide what to fit.

        Parameters
        ----------
        cache : Cache
        out : str or path
            The results folder (recorded only).
        models, layers, heads, grid, cv, seed, pca, n_jobs, backend, address, shots, draws,
        views, tta, allow_partial, combine, combine_pca, protocol
            As :func:`pipelines.fit` takes them.
        budget : Budget, optional
            What one layer's fit may hold (default: half of the machine's RAM).

        Returns
        -------
        Plan

        Raises
        ------
        InvalidArgumentError
            A bad argument, an unknown model or layer, or rows a fit cannot use (the
            messages of :mod:`pipelines.fitting._row_checks`).
        """
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
        check_extracted(cache, combos)
        draws = check_int(draws, "draws", "fit", low=1)
        few = tuple(k for k in parse_shots(shots) if k != ALL) if shots is not None else ()
        variants, view_sets = _variants(cache, combos, views, tta, few)
        selection = _selection(cache)
        rows = check_rows(cache, combos, selection, cv, allow_partial)
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
        """True when hyper-parameters are chosen on the val split (not by CV)."""
        return self.selection == "val"

    @property
    def protocol(self) -> dict:
        """How heads are chosen and refitted, in words: the ``protocol`` of ``run.json``."""
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


def _combos(
    cache: Cache, models: list[str] | None, layers: list[str] | None
) -> list[tuple[str, str]]:
    """Every (model, layer) of ``cache`` among ``models`` and ``layers`` (all by default),
    after refusing a name the cache does not have."""
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


def _selection(cache: Cache) -> str:
    """``"val"`` or ``"cv"``: how hyper-parameters are chosen, after checking the labels."""
    check_classes(cache)
    labeled = (cache.labels >= 0) & ~cache.removed
    return "val" if (labeled & (cache.splits == "val")).any() else "cv"


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


def _with_ok_rows(feature_set: FeatureSet, rows: Mapping[tuple[str, str], RowStatus]) -> FeatureSet:
    """``feature_set`` with ``n_ok``: the rows ok in every part."""
    ok = np.logical_and.reduce([rows[(p.model, p.layer)].ok for p in feature_set.parts])
    return dataclasses.replace(feature_set, n_ok=int(ok.sum()))
