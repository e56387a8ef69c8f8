"""A cache for features held in memory (made elsewhere), in the layout ``extract`` writes.

:func:`write_arrays` writes what an extraction writes: the sample table, each model's
``config.json`` and commit log, shard files packed into a segment, and the derived index
``CACHE.h5``. Every reader accepts it, so features computed by another tool are fitted and
reported on like extracted ones, and tests built on it test the layout that ships.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurecache.cache import _format as fmt
from featurecache.cache._atomic import fsync_dir, temporary_path
from featurecache.cache._config import VIEW_KINDS, FeatureConfig
from featurecache.cache._samples import SampleTable
from featurecache.cache._writer import ShardViews, Store
from featurecache.exceptions import InvalidArgumentError

__all__ = ["ModelArrays", "Pass", "build_folder", "write_arrays"]

#: Rows per shard file before compaction: :class:`featurecache.RunOptions`' default.
SHARD_ROWS = 1024
_REASON = "failed"


@dataclass(frozen=True)
class Pass:
    """Layers written together, as one extraction pass writes them (one status per row)."""

    features: Mapping[str, np.ndarray]
    attrs: Mapping[str, Mapping]
    status: np.ndarray
    reasons: np.ndarray  # (n_samples,) str: why each failed row failed, "" elsewhere
    #: ``views[kind] = (status (n, K) int8, {layer: (n, K, n_features)})``.
    views: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelArrays:
    config: FeatureConfig
    passes: Sequence[Pass]


def write_arrays(
    path: str | os.PathLike,
    samples: SampleTable,
    features: Mapping[str, Mapping[str, np.ndarray]],
    configs: Mapping[str, FeatureConfig],
    *,
    layer_attrs: Mapping[str, Mapping[str, Mapping]] | None = None,
    status: Mapping[str, np.ndarray] | None = None,
    failures: Mapping[str, Sequence[tuple[int, str]]] | None = None,
    views: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]] | None = None,
) -> Path:
    """Write a cache of features held in memory, in the layout ``extract`` writes.

    Parameters
    ----------
    path : str or path
        The new index file; its folder ``path.d`` is written beside it. An existing file
        is never replaced, and nothing is left behind when the call fails.
    samples : SampleTable
    features : mapping
        ``features[model][layer]`` of shape ``(n_samples, n_features)``.
    configs : mapping
        ``configs[model]``, the :class:`FeatureConfig` each model's features were made with.
    layer_attrs : mapping, optional
        ``layer_attrs[model][layer]``: attributes of each layer (``depth``, ``depth_index``…).
    status : mapping, optional
        ``status[model]`` of shape ``(n_samples,)`` (``STATUS_*`` codes), shared by the
        model's layers; without it every row is ok.
    failures : mapping, optional
        ``failures[model]``: ``(row, reason)`` of the rows that failed.
    views : mapping, optional
        ``views[model][layer]``: ``{"augment": array (n_samples, K, n_features), "tta":
        array (n_samples, T, n_features)}`` (either key optional), the extra views of
        each row, view 0 equal to the plain features; a row without views of a kind holds
        NaN there. ``configs[model].views`` must say ``k = K`` and ``tta_k = T``. A view
        is ok where it is finite (and the row not failed), pending elsewhere.

    Returns
    -------
    Path

    Raises
    ------
    InvalidArgumentError
        ``path`` exists, a matrix does not have one row per sample, or views do not
        match their model's features and config.
    """
    final = Path(path)
    n_samples = len(samples)
    for model, layers in features.items():
        for layer, values in layers.items():
            if np.ndim(values) != 2 or len(values) != n_samples:
                raise InvalidArgumentError(
                    f"features[{model!r}][{layer!r}] must have shape (n_samples, n_features) "
                    f"with n_samples={n_samples}; got {np.shape(values)}."
                )
    for model, layers in (views or {}).items():
        for layer, kinds in layers.items():
            for kind, values in kinds.items():
                _check_views(model, layer, kind, values, features, configs[model])
    if final.exists() or fmt.data_dir(final).exists():
        raise InvalidArgumentError(f"{str(final)!r} exists; write_arrays never replaces a file.")
    models = {
        model: ModelArrays(
            configs[model],
            [_pass(model, layers, n_samples, layer_attrs, status, failures, views)],
        )
        for model, layers in features.items()
    }
    staging = build_folder(final, samples, models)
    try:
        os.rename(fmt.data_dir(staging), fmt.data_dir(final))
        os.link(staging, final)  # never over an existing file
        fsync_dir(final.parent)
    except FileExistsError as error:
        raise InvalidArgumentError(
            f"{str(final)!r} exists; write_arrays never replaces a file."
        ) from error
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return final


def build_folder(final: Path, table: SampleTable, models: Mapping[str, ModelArrays]) -> Path:
    """Write a whole cache through :class:`Store` in a new folder beside ``final``, under
    the same file name (every path inside a cache is relative to the index's folder), and
    return its index: the caller moves the folder (and the index) into place."""
    staging = temporary_path(final)
    staging.mkdir()
    try:
        store = Store(staging / final.name)
        table = dataclasses.replace(table, starts=None, shard_size=SHARD_ROWS)
        store.data_dir.mkdir()
        store._write_table(store.samples_path, table)
        for model, arrays in models.items():
            store.register_model(model, arrays.config)
            with store.lock_model(model):
                for one in arrays.passes:
                    _write_pass(store, model, arrays.config, one, len(table))
                store.compact_held(model)
        store.rebuild_index()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return store.path


def _write_pass(store: Store, model: str, config: FeatureConfig, one: Pass, n: int) -> None:
    metas = []
    for shard, start in enumerate(range(0, n, SHARD_ROWS)):
        rows = slice(start, min(n, start + SHARD_ROWS))
        views = {
            kind: ShardViews(status[rows], {layer: v[rows] for layer, v in values.items()})
            for kind, (status, values) in one.views.items()
        }
        metas.append(
            store.write_shard(
                model,
                shard,
                start,
                one.status[rows],
                list(one.reasons[rows]),
                {layer: np.asarray(X)[rows] for layer, X in one.features.items()},
                {layer: dict(one.attrs.get(layer, {})) for layer in one.features},
                config,
                views=views,
            )  # fmt: skip
        )
    store.publish(model, metas)


def _pass(model, layers, n, layer_attrs, status, failures, views) -> Pass:
    """The one pass ``write_arrays`` writes of a model: every layer, one status."""
    state = np.full(n, fmt.STATUS_OK, np.int8)
    if status is not None and model in status:
        state = np.asarray(status[model], dtype=np.int8)
    reasons = np.full(n, "", dtype=object)
    reasons[state == fmt.STATUS_FAILED] = _REASON
    for row, reason in (failures or {}).get(model, ()):
        reasons[int(row)] = str(reason)
    by_kind: dict[str, dict[str, np.ndarray]] = {}
    for layer, kinds in (views or {}).get(model, {}).items():
        for kind, values in kinds.items():
            by_kind.setdefault(kind, {})[layer] = np.asarray(values)
    return Pass(
        features=layers,
        attrs=(layer_attrs or {}).get(model, {}),
        status=state,
        reasons=reasons,
        views={
            kind: (_view_status(next(iter(v.values())), state), v) for kind, v in by_kind.items()
        },
    )


def _view_status(values: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Ok where a view is finite, pending where it is NaN, failed on a failed row."""
    state = np.where(np.isfinite(values).all(axis=2), fmt.STATUS_OK, fmt.STATUS_PENDING)
    state = state.astype(np.int8)
    state[np.asarray(status) == fmt.STATUS_FAILED] = fmt.STATUS_FAILED
    return state


def _check_views(model, layer, kind, values, features, config) -> None:
    name = f"views[{model!r}][{layer!r}][{kind!r}]"
    if kind not in VIEW_KINDS:
        raise InvalidArgumentError(
            f"{name}: the kind must be one of {', '.join(VIEW_KINDS)}; got {kind!r}."
        )
    if layer not in features.get(model, {}):
        raise InvalidArgumentError(
            f"{name}: views need the plain features features[{model!r}][{layer!r}]; pass them too."
        )
    plain = np.asarray(features[model][layer])
    sets = config.view_sets()
    count = 0 if sets is None else sets.count(kind)
    expected = (len(plain), count, plain.shape[1])
    if not count or np.shape(values) != expected:
        raise InvalidArgumentError(
            f"{name} must have shape {expected} (n_samples, the config's "
            f"{'k' if kind == 'augment' else 'tta_k'}={count}, n_features); got "
            f"{np.shape(values)}. Set configs[{model!r}].views to match."
        )
    values = np.asarray(values)
    present = np.isfinite(values[:, 0]).all(axis=1)
    if not np.array_equal(values[present, 0], plain[present]):
        raise InvalidArgumentError(
            f"{name}: view 0 must equal the plain features of each row that has views; "
            "it differs. Put features[model][layer] in view 0."
        )
