"""The derived index ``CACHE.h5``: every committed shard, mapped for plain h5py.

See ``docs/cache-format.md``. The index is built from the commit logs alone (virtual
datasets over the shard and segment files, the failures, the table of row ranges and
their SHA-256) and renamed into place, so it can always be rebuilt and never holds a row
that was not committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featurecache.cache import _format as fmt
from featurecache.cache._atomic import atomic_write, new_h5
from featurecache.cache._config import VIEW_KINDS, FeatureConfig
from featurecache.cache._folder import layer_order
from featurecache.cache._format import STATUS_PENDING
from featurecache.cache._log import ShardMeta
from featurecache.cache._shard_file import STR_DTYPE

__all__ = [
    "ModelIndex",
    "config_attrs",
    "listed_files",
    "write_failures",
    "write_index",
    "write_shard_table",
]


@dataclass(frozen=True)
class ModelIndex:
    """What the index records of one model: its configuration, committed files and runs."""

    name: str
    config: FeatureConfig
    metas: Sequence[ShardMeta]
    runs: Mapping


def write_index(
    index: Path, samples: Path, root_attrs: Mapping, models: Sequence[ModelIndex]
) -> None:
    """Write the index ``index`` atomically from the sample file and the models' records.

    Parameters
    ----------
    index : Path
        ``CACHE.h5``.
    samples : Path
        The sample table's file, linked as ``/samples``.
    root_attrs : mapping
        The sample file's root attributes, copied to the index's root.
    models : sequence of ModelIndex
        Every model, with its committed files in log order.
    """
    n_samples = int(root_attrs["n_samples"])

    def write(tmp: Path) -> None:
        with new_h5(tmp) as f:
            f.attrs.update(root_attrs)
            f["samples"] = h5py.ExternalLink(os.path.relpath(samples, index.parent), "/samples")
            f.create_group(fmt.features_path())
            for model in models:
                _write_model_index(f, model.name, model.config, model.metas, n_samples)
                if model.runs and fmt.features_path(model.name) in f:
                    f[fmt.features_path(model.name)].attrs.update(model.runs)

    atomic_write(index, write)


def listed_files(index: Path, opener: Callable) -> dict[str, set[str]] | None:
    """The files the index lists, per model; ``None`` when it cannot be read."""
    if not index.exists():
        return None
    try:
        with opener(index) as f:
            root = fmt.features_path()
            models = sorted(f[root].keys()) if root in f else []
            return {m: set(f[fmt.shards_path(m, "file")].asstr()[:]) for m in models}
    except (OSError, KeyError):
        return None


def _write_model_index(
    f: h5py.File, model: str, config: FeatureConfig, metas: Sequence[ShardMeta], n_samples: int
) -> None:
    group = f.create_group(fmt.features_path(model))
    group.attrs.update(config_attrs(config))
    by_layer: dict[str, dict[int, ShardMeta]] = {}
    for meta in metas:  # sorted by file name: the first file with a layer wins
        for layer in meta.layers:
            by_layer.setdefault(layer, {}).setdefault(meta.shard, meta)
    table = []
    order = layer_order({layer: _first(by_layer[layer]).layer_attrs[layer] for layer in by_layer})
    dtype = np.dtype(config.dtype)
    for layer in order:
        shards = by_layer[layer]
        first = _first(shards)
        n_features = first.n_features[layer]
        features = h5py.VirtualLayout((n_samples, n_features), dtype)
        status = h5py.VirtualLayout((n_samples,), np.int8)
        for shard in sorted(shards):
            meta = shards[shard]
            rows = meta.stop - meta.start
            features[meta.start : meta.stop] = h5py.VirtualSource(
                meta.file, fmt.shard_features_path(layer), shape=(rows, n_features), dtype=dtype
            )
            status[meta.start : meta.stop] = h5py.VirtualSource(
                meta.file, "status", shape=(rows,), dtype=np.int8
            )
            table += [
                (meta.file, layer, part.start, part.stop, part.digests[layer])
                for part in meta.ranges()
            ]
        dataset = group.create_virtual_dataset(layer, features, fillvalue=np.nan)
        attrs = {k: v for k, v in first.layer_attrs[layer].items() if v is not None}
        attrs.pop("dtype_stored", None)
        dataset.attrs.update({**config_attrs(config), **attrs, "layer": layer})
        f.create_virtual_dataset(fmt.status_path(model, layer), status, fillvalue=STATUS_PENDING)
        _write_views_index(f, model, layer, config, shards, n_samples, n_features, dtype)
    failures = sorted({row: reason for meta in metas for row, reason in meta.reasons}.items())
    write_failures(f, model, [r for r, _ in failures], [r for _, r in failures])
    write_shard_table(f, model, table)


def _write_views_index(
    f: h5py.File, model: str, layer: str, config: FeatureConfig,
    shards: Mapping[int, ShardMeta], n_samples: int, n_features: int, dtype: np.dtype,
) -> None:  # fmt: skip
    """``/views/<model>/<layer>`` and ``/tta/...`` with their statuses, mapped onto the shards."""
    sets = config.view_sets()
    for kind in VIEW_KINDS:
        count = 0 if sets is None else sets.count(kind)
        holding = [shards[s] for s in sorted(shards) if layer in shards[s].views.get(kind, {})]
        if not count or not holding:
            continue
        features = h5py.VirtualLayout((n_samples, count, n_features), dtype)
        status = h5py.VirtualLayout((n_samples, count), np.int8)
        for meta in holding:
            rows = meta.stop - meta.start
            features[meta.start : meta.stop] = h5py.VirtualSource(
                meta.file, fmt.shard_views_path(kind, layer), shape=(rows, count, n_features),
                dtype=dtype,
            )  # fmt: skip
            status[meta.start : meta.stop] = h5py.VirtualSource(
                meta.file, fmt.shard_view_status_path(kind), shape=(rows, count), dtype=np.int8
            )
        f.create_virtual_dataset(fmt.views_path(kind, model, layer), features, fillvalue=np.nan)
        f.create_virtual_dataset(
            fmt.view_status_path(kind, model, layer), status, fillvalue=STATUS_PENDING
        )


def write_failures(f: h5py.File, model: str, rows: Sequence[int], reasons: Sequence[str]) -> None:
    """``/failures/<model>/{row,reason}``: the rows that failed, with their reasons."""
    f.create_dataset(fmt.failures_path(model, "row"), data=np.asarray(rows, dtype=np.int64))
    f.create_dataset(
        fmt.failures_path(model, "reason"),
        data=np.array(list(reasons), dtype=object),
        dtype=STR_DTYPE,
    )


def write_shard_table(f: h5py.File, model: str, table: Sequence[tuple]) -> None:
    """``/shards/<model>``: one row per (file, layer) with its rows and SHA-256."""
    columns = list(zip(*table, strict=True)) if table else [[], [], [], [], []]
    group = f.create_group(fmt.shards_path(model))
    for name, values in zip(("file", "layer"), columns[:2], strict=True):
        group.create_dataset(name, data=np.array(values, dtype=object), dtype=STR_DTYPE)
    for name, values in zip(("start", "stop"), columns[2:4], strict=True):
        group.create_dataset(name, data=np.array(values, dtype=np.int64))
    group.create_dataset("sha256", data=np.array(columns[4], dtype=object), dtype=STR_DTYPE)


def _first(shards: Mapping[int, ShardMeta]) -> ShardMeta:
    """The first file listed holding a layer: the one whose attributes the layer shows."""
    return next(iter(shards.values()))


def config_attrs(config: FeatureConfig) -> dict:
    """The index attributes of a model group (see :meth:`FeatureConfig.attrs`)."""
    return config.attrs()
