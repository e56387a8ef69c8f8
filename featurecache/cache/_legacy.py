"""The one adapter for version-1 caches: the reader's questions answered for old layouts.

:func:`open_view` gives the reader its view of a cache: :class:`FolderView` for the one
layout (version 2), or for a version-1 cache the view answering the same questions
(:class:`FolderView`'s interface) from what that version wrote:

- :class:`IndexView`: an index of plain datasets without a folder (``write_arrays`` wrote
  such an index before format 2, and a cache written by hand with plain h5py is one);
- :class:`UnloggedFolderView`: a folder whose models may hold shard files but no commit
  log (extracted before commit logs existed).

:func:`read_table` reads a sample table of either version (version 1: string ids and
splits, an optional ``removed`` column, no digests).

Nothing writes these layouts: ``featurecache upgrade`` turns them into the one layout.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from featurecache.cache import _format as fmt
from featurecache.cache._folder import (
    FolderView,
    LayerSummary,
    check_finite,
    decode,
    read_shard_meta,
)
from featurecache.cache._format import STATUS_OK
from featurecache.cache._log import Part, ShardMeta
from featurecache.cache._samples import (
    STATE_LIVE,
    STATE_REMOVED,
    SampleTable,
    SplitSpec,
    read_samples,
)
from featurecache.exceptions import CacheCorruptError

__all__ = ["IndexView", "UnloggedFolderView", "open_view", "read_table"]

# Bytes read per step when a feature matrix is read from the index.
_CHUNK_BYTES = 64 << 20
#: What shard files without a log line record: (path, inode, size, mtime) -> ShardMeta.
_UNLOGGED: dict[tuple, ShardMeta] = {}


def open_view(index: Path, opener: Callable) -> FolderView | IndexView:
    """The reader's view of the cache at ``index``: its folder, or this adapter's view of a
    version-1 cache (``opener(path)`` opens an HDF5 file for reading).

    Raises
    ------
    OSError
        The sample table cannot be opened.
    """
    samples = fmt.samples_file(index)
    if not samples.is_file():
        return IndexView(index, opener)
    with opener(samples) as f:
        version = int(f.attrs.get("format_version", 1))
    return (FolderView if version >= fmt.FORMAT_VERSION else UnloggedFolderView)(index, opener)


def read_table(f: h5py.File | h5py.Group, identity: bool = True) -> SampleTable:
    """The sample table of an open cache or sample file, format 2 or version 1.

    ``identity=False`` leaves out the digest and stat columns of a format-2 table (readers
    need neither); a version-1 table has none.
    """
    group = f["samples"]
    if "state" in group:
        return read_samples(f, identity)
    return _read_v1_table(f, group)


def _read_v1_table(f: h5py.File | h5py.Group, group: h5py.Group) -> SampleTable:
    """Version 1: string ids and splits, an optional ``removed`` column, no digests.

    Its first writing run hashes the current files and trusts the stored features for them.
    """
    removed = group["removed"][:].astype(bool) if "removed" in group else None
    names = group.attrs.get("class_names")
    labels = group["labels"][:].astype(np.int64)
    if names is None:
        names = [str(k) for k in range(int(labels.max()) + 1 if labels.size else 0)]
    return SampleTable(
        ids=_read_strings(group["ids"]),
        labels=labels,
        splits=_read_strings(group["splits"]),
        class_names=tuple(str(decode(c)) for c in np.asarray(names).tolist()),
        source=str(decode(group.attrs.get("root", ""))),
        state=None if removed is None else np.where(removed, STATE_REMOVED, STATE_LIVE),
        split=SplitSpec("unknown"),
        starts=f[fmt.LAYOUT_STARTS][:] if fmt.LAYOUT_STARTS in f else None,
        shard_size=int(f.attrs.get("shard_size", max(len(labels), 1))),
    )


def _read_strings(dataset: h5py.Dataset) -> np.ndarray:
    """A version-1 string column as a NumPy unicode array (ASCII in one C loop)."""
    raw = dataset[:]
    fixed = np.asarray(raw, dtype=bytes) if raw.dtype == object else raw
    if fixed.dtype.kind == "S" and (fixed.size == 0 or fixed.view(np.uint8).max() < 128):
        return fixed.astype(str)
    return dataset.asstr()[:].astype(str)


class UnloggedFolderView(FolderView):
    """A version-1 folder: a model without a commit log has what its shard files record."""

    def metas(self, model: str) -> list[ShardMeta]:
        if fmt.commit_log(self.index, model).exists():
            return super().metas(model)
        found = []
        for path in sorted(fmt.model_dir(self.index, model).glob(fmt.SHARD_GLOB)):
            if fmt.TMP_MARK in path.name:
                continue
            stat = path.stat()
            key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if key not in _UNLOGGED:  # shard files are never written again
                _UNLOGGED[key] = read_shard_meta(path, self.index.parent, self._open)
            found.append(_UNLOGGED[key])
        return found


class IndexView:
    """An index of plain datasets, read one call at a time."""

    def __init__(self, index: Path, opener: Callable) -> None:
        self.index = index
        self._open = opener

    def samples_group(self):
        """An open handle on the file holding ``/samples`` (a context manager)."""
        return self._open(self.index)

    def complete(self, f: h5py.File) -> bool:
        """Whether the open index ``f`` holds ``/features`` besides its samples."""
        return fmt.features_path() in f

    def models(self) -> list[str]:
        with self._open(self.index) as f:
            return sorted(f[fmt.features_path()].keys()) if fmt.features_path() in f else []

    def layers(self, model: str) -> dict[str, LayerSummary]:
        with self._open(self.index) as f:
            group = f[fmt.features_path(model)]
            return {
                name: LayerSummary(
                    int(item.shape[1]) if item.ndim == 2 else 0,
                    str(item.dtype),
                    {k: decode(v) for k, v in item.attrs.items()},
                )
                for name, item in group.items()
                if isinstance(item, h5py.Dataset)
            }

    def provenance(self, model: str, layer: str, summary: LayerSummary) -> dict:
        with self._open(self.index) as f:
            attrs = {k: decode(v) for k, v in f[fmt.features_path(model)].attrs.items()}
        return {**attrs, **summary.attrs}

    def view_mapping(self, model: str) -> dict:
        with self._open(self.index) as f:
            value = decode(f[fmt.features_path(model)].attrs.get("views", "{}"))
        try:
            return dict(json.loads(value) if isinstance(value, str) else value)
        except (ValueError, TypeError) as error:
            raise CacheCorruptError(
                f"the views attribute of model {model!r} in {str(self.index)!r} is not a JSON "
                f"object ({error}); write the cache again."
            ) from error

    def status(self, model: str, layer: str, n_samples: int) -> np.ndarray:
        with self._open(self.index) as f:
            if fmt.status_path(model, layer) in f:
                return f[fmt.status_path(model, layer)][:].astype(np.int8)
        return np.full(n_samples, STATUS_OK, dtype=np.int8)

    def failures(self, model: str) -> list[tuple[int, str]]:
        with self._open(self.index) as f:
            if fmt.failures_path(model, "row") not in f:
                return []
            rows = f[fmt.failures_path(model, "row")][:]
            reasons = f[fmt.failures_path(model, "reason")].asstr()[:]
        return [(int(r), str(reason)) for r, reason in zip(rows, reasons, strict=True)]

    def range_digests(self, model: str, layer: str) -> list[tuple[int, int, str]]:
        return []  # an index of arrays records no digests

    def range_parts(self, model: str, layer: str) -> list[Part]:
        """One range over every row, its SHA-256 (and its views') computed by reading the
        datasets once: an index of arrays records no digests. Upgrade the cache to skip it."""
        with self._open(self.index) as f:
            dataset = f[fmt.features_path(model, layer)]
            views = {
                kind: {layer: _sha256_of(f[fmt.views_path(kind, model, layer)])}
                for kind in ("augment", "tta")
                if fmt.views_path(kind, model, layer) in f
            }
            return [Part(0, 0, int(dataset.shape[0]), {layer: _sha256_of(dataset)}, views)]

    def read(
        self, model: str, layer: str, n_features: int, keep: np.ndarray, force: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The kept rows of a layer, a step of about 64 MiB at a time."""
        rows = np.flatnonzero(keep)
        X = np.empty((len(rows), n_features), dtype=np.float32)
        with self._open(self.index) as f:
            dataset = f[fmt.features_path(model, layer)]
            if dataset.ndim != 2 or dataset.shape[0] != len(keep):
                raise CacheCorruptError(
                    f"/{fmt.features_path(model, layer)} in {str(self.index)!r} has shape "
                    f"{dataset.shape}; expected ({len(keep)}, n_features), one row per sample."
                )
            step = max(1, _CHUNK_BYTES // max(1, n_features * dataset.dtype.itemsize))
            at = 0
            for start in range(0, len(keep), step):
                mask = keep[start : start + step]
                if not mask.any():
                    continue
                try:
                    chunk = dataset[start : start + len(mask)]
                except OSError as error:
                    raise CacheCorruptError(
                        f"rows {start}..{start + len(mask)} of {dataset.name} in "
                        f"{str(self.index)!r} cannot be read ({error}); rewrite the file."
                    ) from error
                n = int(mask.sum())
                X[at : at + n] = chunk[mask]
                at += n
        check_finite(X, f"{model}/{layer}", self.index)  # no digest checked these rows
        return X, rows

    def read_views(
        self, model: str, layer: str, kind: str, removed: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(X, rows)]``: the views of ``kind`` of the rows whose every view is ok."""
        path = fmt.views_path(kind, model, layer)
        status_path = fmt.view_status_path(kind, model, layer)
        with self._open(self.index) as f:
            if path not in f or status_path not in f:
                return []
            status = f[status_path][:]
            rows = np.flatnonzero(np.all(status == STATUS_OK, axis=1) & ~removed)
            if not len(rows):
                return []
            try:
                X = f[path][rows.min() : rows.max() + 1][rows - rows.min()]
            except OSError as error:
                raise CacheCorruptError(
                    f"/{path} in {str(self.index)!r} cannot be read ({error}); rewrite the file."
                ) from error
        return [(X, rows.astype(np.int64))]


def _sha256_of(dataset: h5py.Dataset) -> str:
    """SHA-256 of a dataset's bytes in C order, read about 64 MiB at a time."""
    digest = hashlib.sha256()
    row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))
    step = max(1, _CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, dataset.shape[0], step):
        digest.update(np.ascontiguousarray(dataset[start : start + step]).tobytes())
    return digest.hexdigest()
