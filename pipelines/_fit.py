"""Fit every (model, layer, head) of a cache into a results folder.

Protocol: hyper-parameters are chosen on training data only (stratified k-fold
CV on ``train``, or the ``val`` split when the cache has one), the chosen head
is refitted on ``train`` (+ ``val``) and scored once on ``test``. Nothing is
selected on ``test``.

Results folder::

    RESULTS/
      run.json                               cache, samples digest, arguments, data summary
      results.csv                            one row per finished (model, layer, head)
      combos/<model>/<layer>/<head>.json     the full record of one combination (written last)
      heads/<model>/<layer>/<head>.joblib    the fitted head and its provenance
      predictions/<model>/<layer>/<head>.csv test predictions, one row per sample

Every file is written to a temporary name in the same folder and renamed into
place; a combination counts as finished when its record exists and its key
(features, grid, folds, seed) matches, so a re-run skips it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score

from featurecache.cache._reader import Cache, open_cache
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest
from pipelines._heads import Head, build_pipeline, get_head, list_heads, load_grid, resolve_grids
from pipelines._search import (
    SearchResult,
    converged,
    search_heads,
    single_blas_thread,
    stratified_splits,
)

__all__ = ["fit", "load_head", "DEFAULT_HEADS", "BACKENDS", "RESULT_COLUMNS", "HEAD_KEYS"]

logger = logging.getLogger(__name__)

DEFAULT_HEADS = ("logreg", "linsvm")
BACKENDS = ("loky", "threading", "multiprocessing", "dask", "ray")
HEAD_KEYS = (
    "estimator",
    "model",
    "layer",
    "head",
    "params",
    "class_names",
    "samples_digest",
    "provenance",
    "featurecache_version",
)
RESULT_COLUMNS = (
    "model",
    "layer",
    "depth",
    "head",
    "params",
    "selection",
    "cv_mean",
    "cv_std",
    "test_accuracy",
    "test_balanced_accuracy",
    "test_macro_f1",
    "fit_seconds",
    "n_train",
    "n_val",
    "n_test",
    "n_features",
    "n_not_converged",
    "head_file",
    "predictions_file",
)
FLOAT_COLUMNS = (
    "depth",
    "cv_mean",
    "cv_std",
    "test_accuracy",
    "test_balanced_accuracy",
    "test_macro_f1",
    "fit_seconds",
)
_RECORD_VERSION = 1


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
) -> pd.DataFrame:
    """Choose, refit and score every (model, layer, head) and write ``out``.

    Parameters
    ----------
    cache : str, path or Cache
    out : str or path
        The results folder; created, or reused when it was made from the same
        samples (same ``samples_digest``).
    models, layers : sequence of str, optional
        Restrict to these models and layer names (default: all). A layer name
        applies to every model that has it.
    heads : sequence of str
        Names from :func:`~pipelines.list_heads`.
    grid : mapping or path, optional
        ``{head: {param: [values]}}`` (or a JSON/YAML file of it) updating the
        default grids.
    cv : int
        Folds of the stratified CV on ``train`` (ignored when there is a ``val`` split).
    seed : int
        Seeds the folds and the estimators.
    n_jobs : int or None
        joblib workers (``-1``: all cores).
    pca : int, optional
        Add a PCA step with this many components to layers wider than that.
    backend : {"loky", "threading", "multiprocessing", "dask", "ray"}
        joblib backend. ``dask`` connects ``distributed.Client(address)``;
        ``ray`` registers ``ray.util.joblib`` and connects to ``address``.
        Results do not depend on the backend.
    address : str, optional
        Scheduler (dask) or cluster (ray) address.

    Returns
    -------
    pandas.DataFrame
        The rows of ``results.csv``.

    Raises
    ------
    InvalidArgumentError
        Bad arguments or data (nothing is written), or ``out`` was made from
        another cache.
    """
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    plan = _Plan.build(
        cache, models, layers, heads, grid, cv, seed, pca, n_jobs, backend, address, out
    )
    results = _ResultsFolder(Path(out))
    results.check(cache)
    _check_backend(backend)
    results.write_run(plan.run_record(cache))
    with _parallel_backend(backend, address):
        for model, layer in plan.combos:
            _fit_layer(cache, plan, results, model, layer)
    return results.write_table()


def load_head(path: str | os.PathLike) -> dict:
    """Load a head file written by :func:`fit` and check its keys.

    Only load files you trust: a ``.joblib`` file is a pickle.

    Returns
    -------
    dict
        ``estimator`` (fitted Pipeline), ``model``, ``layer``, ``head``, ``params``,
        ``class_names``, ``samples_digest``, ``provenance``, ``featurecache_version``.

    Raises
    ------
    InvalidArgumentError
        The file is missing or is not a head file.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(
            f"HEAD must be a .joblib file written by `featurecache fit`; {str(path)!r} does not "
            "exist (heads are in RESULTS/heads/<model>/<layer>/<head>.joblib)."
        )
    try:
        record = joblib.load(path)
    except Exception as error:  # a pickle can fail in many ways; all mean "not a head file"
        raise InvalidArgumentError(
            f"HEAD {str(path)!r} cannot be loaded as a head file ({type(error).__name__}: "
            f"{error}); pass a .joblib file written by `featurecache fit`."
        ) from error
    missing = [k for k in HEAD_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        raise InvalidArgumentError(
            f"HEAD {str(path)!r} is not a head file: it lacks {', '.join(missing)}; pass a "
            ".joblib file written by `featurecache fit`."
        )
    if not hasattr(record["estimator"], "predict"):
        raise InvalidArgumentError(
            f"HEAD {str(path)!r} holds no fitted estimator; re-run `featurecache fit`."
        )
    return record


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

    @classmethod
    def build(
        cls, cache, models, layers, heads, grid, cv, seed, pca, n_jobs, backend, address, out
    ) -> _Plan:
        head_names = list(dict.fromkeys(_names(heads, "heads")))
        if not head_names:
            raise InvalidArgumentError(
                f"heads must name at least one of {', '.join(list_heads())}."
            )
        head_objects = [get_head(name) for name in head_names]
        grid_source = str(grid) if isinstance(grid, (str, os.PathLike)) else None
        user_grid = load_grid(grid) if grid_source is not None else grid
        if pca is not None and (isinstance(pca, bool) or not isinstance(pca, int) or pca < 1):
            raise InvalidArgumentError(f"pca must be a positive number of components; got {pca!r}.")
        grids = resolve_grids(head_names, user_grid, pca=pca)
        if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
            raise InvalidArgumentError(f"cv must be an integer >= 2; got {cv!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidArgumentError(f"seed must be an integer; got {seed!r}.")
        if backend not in BACKENDS:
            raise UnknownNameError(
                f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}.{suggest(backend, BACKENDS)}"
            )
        combos = _combos(cache, models, layers)
        n_ok = {(e.model, e.layer): e.n_ok for e in cache.entries}
        empty = [f"{m}/{layer}" for m, layer in combos if n_ok.get((m, layer), 0) == 0]
        if empty:
            raise InvalidArgumentError(
                f"{', '.join(empty)} of cache {str(cache.path)!r} hold no extracted rows yet; "
                "finish `featurecache extract` or leave them out with --models/--layers."
            )
        selection = _check_samples(cache, cv)
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
        )

    def run_record(self, cache: Cache) -> dict:
        labeled = cache.labels >= 0
        counts = {}
        rank = {"train": 0, "val": 1, "test": 2}
        for split in sorted(set(cache.splits.tolist()), key=lambda s: (rank.get(s, 3), s)):
            in_split = (cache.splits == split) & labeled
            counts[split or "(none)"] = {
                cache.class_names[k]: int(np.sum(in_split & (cache.labels == k)))
                for k in range(len(cache.class_names))
            }
        return {
            "cache": str(Path(cache.path).resolve()),
            "samples_digest": cache.samples_digest,
            "featurecache_version": _version(),
            "arguments": {
                "models": sorted({m for m, _ in self.combos}),
                "layers": list(dict.fromkeys(layer for _, layer in self.combos)),
                "heads": [h.name for h in self.heads],
                "grid": _jsonable(self.grids),
                "grid_file": self.grid_source,
                "cv": self.cv,
                "seed": self.seed,
                "pca": self.pca,
                "n_jobs": self.n_jobs,
                "backend": self.backend,
                "address": self.address,
            },
            "protocol": self.protocol,
            "data": {
                "class_names": list(cache.class_names),
                "n_samples": int(cache.n_samples),
                "n_unlabeled": int(np.sum(~labeled)),
                "counts": counts,
                "has_test": bool(np.any((cache.splits == "test") & labeled)),
                "failed": {
                    model: [[str(i), str(r)] for i, r in cache.failures(model)]
                    for model in sorted({m for m, _ in self.combos})
                },
            },
        }

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
        return {"selection": selection, "refit": refit}


def _names(value, what: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if value is None:
        return []
    return [str(v) for v in value]


def _combos(cache: Cache, models, layers) -> list[tuple[str, str]]:
    available = cache.models
    chosen = available if models is None else list(dict.fromkeys(_names(models, "models")))
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
    wanted = list(dict.fromkeys(_names(layers, "layers")))
    everything = sorted({layer for names in by_model.values() for layer in names})
    for layer in wanted:
        if not any(layer in names for names in by_model.values()):
            raise UnknownNameError(
                f"layer {layer!r} is in none of the models {', '.join(chosen)}; they have "
                f"{', '.join(everything)}.{suggest(layer, everything)} "
                f"Hint: run `featurecache ls {cache.path}`."
            )
    return [(m, layer) for m in chosen for layer in by_model[m] if layer in wanted]


def _check_samples(cache: Cache, cv: int) -> str:
    """Check labels and splits; return ``"val"`` or ``"cv"`` (how parameters are chosen)."""
    labeled = cache.labels >= 0
    where = f"cache {str(cache.path)!r}"
    present = sorted(set(cache.splits[labeled].tolist()))
    train = labeled & (cache.splits == "train")
    if not train.any():
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
    if (labeled & (cache.splits == "val")).any():
        return "val"
    counts = np.bincount(cache.labels[train])
    counts = counts[counts > 0]
    if counts.min() < cv:
        raise InvalidArgumentError(
            f"cv={cv} needs at least {cv} train rows per class; the smallest class of {where} "
            f"has {int(counts.min())}; lower --cv."
        )
    return "cv"


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
        from distributed import Client

        client = Client(address) if address else Client()
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
            ray.init(address=address, include_dashboard=False)
        try:
            with parallel_config(backend="ray"):
                yield
        finally:
            if started:  # shut down only the instance this call started
                ray.shutdown()
        return
    with parallel_config(backend=backend):
        yield


# -- one layer ------------------------------------------------------------------------


def _fit_layer(cache: Cache, plan: _Plan, results: _ResultsFolder, model: str, layer: str) -> None:
    entry = cache.entry(model, layer)
    keys = {head.name: _combo_key(cache, plan, entry, head) for head in plan.heads}
    pending = [
        head for head in plan.heads if not results.is_done(model, layer, head.name, keys[head.name])
    ]
    if not pending:
        logger.info("%s/%s: every head already fitted, reusing", model, layer)
        return
    logger.info("%s/%s: fitting %s", model, layer, ", ".join(h.name for h in pending))
    wanted = (cache.labels >= 0) & np.isin(cache.splits, ["train", "val", "test"])
    X, rows = cache.load_rows(model, layer, wanted)
    y, ids, split = cache.labels[rows], cache.ids[rows], cache.splits[rows]
    fit_rows = (split == "train") | (split == "val") if plan.uses_val else split == "train"
    X_fit, y_fit = X[fit_rows], y[fit_rows]
    X_test, y_test, ids_test = X[split == "test"], y[split == "test"], ids[split == "test"]
    if plan.uses_val:
        is_val = split[fit_rows] == "val"
        splits = [(np.flatnonzero(~is_val), np.flatnonzero(is_val))]
        if not is_val.any() or is_val.all():
            raise InvalidArgumentError(
                f"{model}/{layer}: no ok rows left in train or val; re-run `featurecache extract`."
            )
    else:
        splits = stratified_splits(y_fit, plan.cv, plan.seed)
    del X
    found = search_heads(
        pending, plan.grids, X_fit, y_fit, splits, seed=plan.seed, n_jobs=plan.n_jobs
    )
    refits = Parallel(n_jobs=plan.n_jobs)(
        delayed(_refit)(head, found[head.name].params, X_fit, y_fit, X_test, plan.seed)
        for head in pending
    )
    counts = {
        "n_train": int(np.sum(split == "train")),
        "n_val": int(np.sum(split == "val")),
        "n_test": int(len(y_test)),
        "n_features": int(entry.n_features),
    }
    for head, (estimator, y_pred, seconds, refit_ok) in zip(pending, refits, strict=True):
        results.write_combo(
            cache=cache,
            plan=plan,
            entry=entry,
            head=head,
            key=keys[head.name],
            found=found[head.name],
            estimator=estimator,
            y_test=y_test,
            y_pred=y_pred,
            ids_test=ids_test,
            refit_seconds=seconds,
            refit_converged=refit_ok,
            counts=counts,
        )
    results.write_table()


@single_blas_thread
def _refit(
    head: Head, params: dict, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int
) -> tuple[Any, np.ndarray, float, bool]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator = build_pipeline(head, params, X, y, seed=seed)
    seconds = time.perf_counter() - start
    y_pred = estimator.predict(X_test) if len(X_test) else np.zeros(0, dtype=np.int64)
    return estimator, np.asarray(y_pred, dtype=np.int64), seconds, converged(estimator[-1])


def _combo_key(cache: Cache, plan: _Plan, entry, head: Head) -> str:
    """Everything that changes a combination's result, hashed."""
    provenance = entry.provenance
    features = provenance.get("config_digest") or json.dumps(_jsonable(provenance), sort_keys=True)
    key = {
        "version": _RECORD_VERSION,
        "samples_digest": cache.samples_digest,
        "model": entry.model,
        "layer": entry.layer,
        "features": features,
        "n_features": entry.n_features,
        "n_ok": entry.n_ok,
        "n_failed": entry.n_failed,
        "head": head.name,
        "grid": _jsonable(plan.grids[head.name]),
        "selection": plan.selection,
        "cv": plan.cv if plan.selection == "cv" else None,
        "seed": plan.seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


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


# -- the results folder ---------------------------------------------------------------


class _ResultsFolder:
    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self, cache: Cache) -> None:
        """Refuse a file, a foreign folder, or a folder made from other samples."""
        run = self.root / "run.json"
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgumentError(
                f"--out must be a results folder; {str(self.root)!r} is a file; choose a new folder."
            )
        if self.root.is_dir() and any(self.root.iterdir()) and not run.is_file():
            raise InvalidArgumentError(
                f"--out {str(self.root)!r} is a non-empty folder without run.json, not a results "
                "folder; choose a new or empty folder."
            )
        if run.is_file():
            try:
                recorded = json.loads(run.read_text())["samples_digest"]
            except (ValueError, KeyError) as error:
                raise InvalidArgumentError(
                    f"{str(run)!r} is unreadable ({error}); choose a new results folder."
                ) from error
            if recorded != cache.samples_digest:
                raise InvalidArgumentError(
                    f"results folder {str(self.root)!r} was made from other samples (samples "
                    f"digest {recorded[:12]}…, cache {str(cache.path)!r} has "
                    f"{cache.samples_digest[:12]}…); write into a new --out folder."
                )

    def write_run(self, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / "run.json", lambda p: p.write_text(json.dumps(record, indent=1)))

    def _path(self, kind: str, model: str, layer: str, head: str, suffix: str) -> Path:
        return self.root / kind / _safe(model) / _safe(layer) / f"{_safe(head)}{suffix}"

    def is_done(self, model: str, layer: str, head: str, key: str) -> bool:
        record = self._path("combos", model, layer, head, ".json")
        if not record.is_file():
            return False
        try:
            data = json.loads(record.read_text())
        except ValueError:
            return False
        return data.get("key") == key and (self.root / data.get("head_file", "")).is_file()

    def write_combo(
        self,
        *,
        cache,
        plan,
        entry,
        head,
        key,
        found: SearchResult,
        estimator,
        y_test,
        y_pred,
        ids_test,
        refit_seconds,
        refit_converged,
        counts,
    ) -> None:
        model, layer = entry.model, entry.layer
        head_path = self._path("heads", model, layer, head.name, ".joblib")
        record = {
            "estimator": estimator,
            "model": model,
            "layer": layer,
            "head": head.name,
            "params": dict(found.params),
            "class_names": list(cache.class_names),
            "samples_digest": cache.samples_digest,
            "provenance": dict(entry.provenance),
            "featurecache_version": _version(),
        }
        _atomic_write(head_path, lambda p: joblib.dump(record, p))
        predictions_file = ""
        if len(y_test):
            predictions_path = self._path("predictions", model, layer, head.name, ".csv")
            names = np.asarray(cache.class_names, dtype=object)
            table = pd.DataFrame(
                {
                    "id": ids_test,
                    "y_true": y_test,
                    "y_pred": y_pred,
                    "true_class": names[y_test],
                    "pred_class": names[y_pred],
                }
            )
            _atomic_write(predictions_path, lambda p: table.to_csv(p, index=False))
            predictions_file = str(predictions_path.relative_to(self.root))
        metrics = heldout_metrics(y_test, y_pred)
        combo = {
            "key": key,
            "model": model,
            "layer": layer,
            "depth": entry.depth,
            "head": head.name,
            "params": _jsonable(found.params),
            "selection": "val" if plan.uses_val else f"{plan.cv}-fold CV",
            "protocol": plan.protocol,
            "cv_mean": found.cv_mean,
            "cv_std": found.cv_std,
            "candidates": _jsonable(list(found.candidates)),
            "test_accuracy": metrics["accuracy"],
            "test_balanced_accuracy": metrics["balanced_accuracy"],
            "test_macro_f1": metrics["macro_f1"],
            "fit_seconds": found.seconds + refit_seconds,
            **counts,
            "n_not_converged": found.n_not_converged + (0 if refit_converged else 1),
            "head_file": str(head_path.relative_to(self.root)),
            "predictions_file": predictions_file,
            "provenance": _jsonable(entry.provenance),
        }
        record_path = self._path("combos", model, layer, head.name, ".json")
        text = json.dumps(_jsonable(combo), indent=1)
        _atomic_write(record_path, lambda p: p.write_text(text))

    def records(self) -> list[dict]:
        folder = self.root / "combos"
        found = []
        for path in sorted(folder.glob("*/*/*.json")) if folder.is_dir() else []:
            with contextlib.suppress(ValueError):
                found.append(json.loads(path.read_text()))
        return found

    def write_table(self) -> pd.DataFrame:
        records = self.records()
        order = {name: i for i, name in enumerate(list_heads())}
        records.sort(
            key=lambda r: (
                r["model"],
                r["depth"] if r["depth"] is not None else math.inf,
                r["layer"],
                order.get(r["head"], len(order)),
                r["head"],
            )
        )
        rows = [
            {
                c: (json.dumps(r[c], sort_keys=True) if c == "params" else r[c])
                for c in RESULT_COLUMNS
            }
            for r in records
        ]
        table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
        for column in FLOAT_COLUMNS:  # JSON null (no test split, no depth) -> NaN
            table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
        _atomic_write(self.root / "results.csv", lambda p: table.to_csv(p, index=False))
        return table


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _safe(name: str) -> str:
    """A path component for a model, layer or head name."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        return "_" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return name


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _version() -> str:
    from featurecache import __version__

    return str(__version__)
