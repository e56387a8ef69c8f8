"""``featurecache upgrade``: a version-1 cache rewritten as version 2, crash-safe and idempotent.

Version 2 is one layout: a folder with the sample table (fixed-width columns), and per model
a configuration, a commit log and immutable shard and segment files, with the index
``CACHE.h5`` derived from it. Version-1 caches come in three shapes, all read (never written)
by this featurecache until upgraded:

- a folder with commit logs (extracted before version 2): its shards are compacted and its
  sample table is rewritten in format 2;
- a folder whose shard files were never logged (extracted before commit logs existed): each
  file is logged from what it records first (the model's writer recovery does it);
- an index holding plain datasets, without a folder (``write_arrays`` before version 2): the
  folder is built beside it from its arrays, then moved into place.

Each step leaves a cache that reads the same; the sample table, rewritten last (a new file
renamed over the old one), marks the cache as version 2. A second run finds version 2 and
only brings a stale index up to date.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from featurecache.cache import _format as fmt
from featurecache.cache._arrays import ModelArrays, Pass, build_folder
from featurecache.cache._atomic import atomic_write, fsync_dir
from featurecache.cache._config import VIEW_KINDS, FeatureConfig
from featurecache.cache._folder import decode
from featurecache.cache._legacy import read_table
from featurecache.cache._writer import Store
from featurecache.exceptions import CacheCorruptError, InvalidArgumentError

__all__ = ["cache_version", "upgrade"]


def cache_version(index: Path, locking: bool | None = None) -> int | None:
    """The format version of the cache at ``index`` (its sample table's, else its index's);
    ``None`` when there is no cache there yet."""
    samples = fmt.samples_file(index)
    target = samples if samples.is_file() else index if index.is_file() else None
    if target is None:
        return None
    lock = "best-effort" if fmt.locking_enabled(locking) else False
    with h5py.File(target, "r", locking=lock) as f:
        return int(f.attrs.get("format_version", 1))


def upgrade(path: str | os.PathLike, locking: bool | None = None) -> bool:
    """Rewrite the version-1 cache at ``path`` as version 2; ``False`` if it already is.

    Parameters
    ----------
    path : str or path
        The cache's index ``CACHE.h5``.
    locking : bool, optional
        As for :class:`Store`.

    Returns
    -------
    bool
        ``True`` when the cache was upgraded, ``False`` when it already was version 2.

    Raises
    ------
    InvalidArgumentError
        ``path`` is not a featurecache cache.
    CacheReadOnlyError, CacheLockedError
        The cache cannot be written, or another process writes one of its models.
    """
    store = Store(path, locking=locking)
    version = cache_version(store.path, locking)
    if version is None:
        raise InvalidArgumentError(
            f"CACHE must be an existing featurecache cache; {str(store.path)!r} does not exist; "
            "pass the CACHE.h5 index written by `featurecache extract`."
        )
    if version >= fmt.FORMAT_VERSION:
        if not store.index_is_current():
            store.check_writable()
            store.rebuild_index()
        return False
    store.check_writable()
    if not store.has_samples():
        _build_folder_from_index(store)
    for model in store.models():
        with store.lock_model(model):  # which logs shard files written before commit logs
            store.compact_held(model)
    with store._index_lock():
        table = store.read_samples()
        atomic_write(store.samples_path, lambda tmp: store._write_table(tmp, table))
    store.rebuild_index()
    return True


def _build_folder_from_index(store: Store) -> None:
    """A version-1 index of plain datasets: write its folder beside it, then move it in."""
    with h5py.File(store.path, "r", locking=store.locking) as f:
        table = read_table(f)
        models = {model: _model_arrays(f, model, len(table)) for model in f[fmt.features_path()]}
    staging = build_folder(store.path, table, models)
    try:
        os.rename(fmt.data_dir(staging), store.data_dir)
        fsync_dir(store.path.parent)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)


def _model_arrays(f: h5py.File, model: str, n: int) -> ModelArrays:
    group = f[fmt.features_path(model)]
    try:
        config = FeatureConfig.from_dict(json.loads(decode(group.attrs["config"])))
    except (KeyError, ValueError, TypeError) as error:
        raise CacheCorruptError(
            f"model {model!r} of {f.filename!r} has no readable configuration ({error}); "
            "write this cache again with `featurecache.cache.write_arrays`."
        ) from error
    reasons = np.full(n, "", dtype=object)
    if fmt.failures_path(model, "row") in f:
        rows = f[fmt.failures_path(model, "row")][:]
        reasons[rows] = f[fmt.failures_path(model, "reason")].asstr()[:]
    config_keys = set(group.attrs)
    by_status: dict[bytes, dict] = {}
    for layer, dataset in group.items():
        status = (
            f[fmt.status_path(model, layer)][:].astype(np.int8)
            if fmt.status_path(model, layer) in f
            else np.full(n, fmt.STATUS_OK, np.int8)
        )
        one = by_status.setdefault(status.tobytes(), {"status": status, "layers": {}})
        attrs = {k: decode(v) for k, v in dataset.attrs.items() if k not in config_keys}
        attrs.pop("layer", None)
        one["layers"][layer] = (dataset[:], attrs, _views(f, model, layer))
    passes = []
    for one in by_status.values():
        layers = one["layers"]
        views: dict[str, tuple] = {}
        for layer, (_, _, found) in layers.items():
            for kind, (status, values) in found.items():
                views.setdefault(kind, (status, {}))[1][layer] = values
        status = one["status"]
        failed = np.where(status == fmt.STATUS_FAILED, reasons, "")
        failed[(status == fmt.STATUS_FAILED) & (failed == "")] = "failed"
        passes.append(
            Pass(
                features={layer: X for layer, (X, _, _) in layers.items()},
                attrs={layer: attrs for layer, (_, attrs, _) in layers.items()},
                status=status,
                reasons=failed.astype(object),
                views=views,
            )
        )
    return ModelArrays(config, passes)


def _views(f: h5py.File, model: str, layer: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    found = {}
    for kind in VIEW_KINDS:
        path, status = fmt.views_path(kind, model, layer), fmt.view_status_path(kind, model, layer)
        if path in f and status in f:
            found[kind] = (f[status][:].astype(np.int8), f[path][:])
    return found
