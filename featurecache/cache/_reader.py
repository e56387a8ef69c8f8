"""The reader side of the cache (``docs/cache-format.md``), without torch.

The HDF5 file is opened for each call and closed before it returns, so a writer
may replace the index between two calls; every call sees one consistent index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featurecache._validation import check_choice
from featurecache.cache import _format as fmt
from featurecache.cache._classifiers import StoredClassifier, read_classifiers
from featurecache.cache._config import VIEW_KINDS, ViewSets
from featurecache.cache._folder import (
    FolderView,
    ShardReadError,
    config_provenance,
    has_folder,
    plain_attrs,
    read_layer,
    read_views,
)
from featurecache.cache._folder import (
    decode as _decode,
)
from featurecache.cache._format import STATUS_FAILED, STATUS_OK, STATUS_PENDING
from featurecache.cache._log import read_runs
from featurecache.cache._stream import Batch, iter_batches
from featurecache.exceptions import (
    CacheCorruptError,
    InvalidArgumentError,
    UnknownNameError,
    suggest,
)

__all__ = ["Cache", "Entry", "open_cache"]

logger = logging.getLogger(__name__)

# Rows read per chunk when a feature matrix is read without shard files.
_CHUNK_BYTES = 64 << 20
_LS_HINT = "run `featurecache ls {path}` to see what the cache holds"


@dataclass(frozen=True)
class Entry:
    """One ``(model, layer)`` feature matrix of a cache.

    ``provenance`` holds the layer dataset's attributes (the model configuration,
    ``layer``, ``depth``, library versions) decoded to Python types.
    """

    model: str
    layer: str
    n_features: int
    dtype: str
    n_ok: int
    n_failed: int
    n_pending: int
    depth: float | None
    n_removed: int = 0
    provenance: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class _Shard:
    file: Path
    name: str  # as listed in the index, for messages
    start: int
    stop: int
    sha256: str


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a cache index for reading.

    Parameters
    ----------
    path : str or path
        The index file ``CACHE.h5`` written by ``featurecache extract``, or any HDF5
        file that follows ``docs/cache-format.md``.

    Returns
    -------
    Cache

    Raises
    ------
    InvalidArgumentError
        ``path`` is missing, a directory, or not a featurecache file.
    """
    return Cache(path)


class Cache:
    """A featurecache file, read one call at a time.

    The sample table (``ids``, ``labels``, ``splits``, ``class_names``) is read
    once, when the cache is opened: it is written once and never modified.
    Everything else is read from the current index on each call.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        folder = has_folder(self.path) and not self.path.is_dir()
        self._folder = FolderView(self.path, self._open) if folder else None
        if self._folder is None:
            self._check_path()
        try:
            with self._open_samples() as f:
                self._read_samples(f)
        except CacheCorruptError:
            raise
        except (OSError, KeyError) as error:
            raise CacheCorruptError(
                f"cannot read the sample table of {str(self.path)!r} ({error}); the index or "
                f"{self.path.name}.d/samples.h5 is damaged or missing. Keep the index and its "
                "folder together, or re-run `featurecache extract` into a new cache."
            ) from error

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, n_samples={len(self.ids)}, models={self.models})"

    # -- the sample table -----------------------------------------------------------

    def _check_path(self) -> None:
        fix = "pass the CACHE.h5 index written by `featurecache extract`"
        if not self.path.exists():
            raise InvalidArgumentError(
                f"CACHE must be an existing featurecache HDF5 file; {str(self.path)!r} does "
                f"not exist; {fix}."
            )
        if self.path.is_dir():
            raise InvalidArgumentError(
                f"CACHE must be a featurecache HDF5 file, not a directory; got {str(self.path)!r}; "
                f"{fix} (not its .d folder)."
            )
        if not h5py.is_hdf5(self.path):
            raise InvalidArgumentError(
                f"CACHE must be a featurecache HDF5 file; {str(self.path)!r} is not HDF5; {fix}."
            )

    def _open_samples(self):
        return self._open() if self._folder is None else self._folder.samples_group()

    def _read_samples(self, f: h5py.File) -> None:
        found = _decode(f.attrs.get("format", fmt.FORMAT))
        version = int(f.attrs.get("format_version", fmt.FORMAT_VERSION))
        missing = [k for k in fmt.SAMPLE_FIELDS if fmt.sample_path(k) not in f]
        no_features = self._folder is None and fmt.features_path() not in f
        if found != fmt.FORMAT or missing or no_features:
            what = (
                f"format {found!r}"
                if found != fmt.FORMAT
                else "no /samples/{ids,labels,splits} or /features"
            )
            raise InvalidArgumentError(
                f"CACHE must be a featurecache file; {str(self.path)!r} has {what}; pass the "
                "CACHE.h5 index written by `featurecache extract` (see docs/cache-format.md)."
            )
        if version > fmt.FORMAT_VERSION:
            raise InvalidArgumentError(
                f"CACHE {str(self.path)!r} has format_version {version}; this reader knows "
                f"version {fmt.FORMAT_VERSION}; upgrade featurecache."
            )
        samples = f["samples"]
        removed = samples["removed"][:] if "removed" in samples else None
        self.ids = _read_strings(samples["ids"])
        self.labels = samples["labels"][:].astype(np.int64)
        self.splits = _read_strings(samples["splits"])
        names = samples.attrs.get("class_names")
        if names is None:
            n_classes = int(self.labels.max()) + 1 if self.labels.size else 0
            self.class_names = [str(k) for k in range(n_classes)]
        else:
            self.class_names = [str(_decode(n)) for n in np.asarray(names).tolist()]
        # Where the images came from ("folder:/abs/root", "builtin:digits", ...); "" if unknown.
        self.source = str(_decode(samples.attrs.get("root", "")))
        digest = f.attrs.get("samples_digest")
        self.samples_digest = (
            str(_decode(digest))
            if digest is not None
            else fmt.samples_digest(self.ids, self.labels, self.splits)
        )
        #: Samples the dataset no longer has: kept in the table, left out of every read.
        self.removed = np.zeros(len(self.ids), bool) if removed is None else removed.astype(bool)
        if not (len(self.ids) == len(self.labels) == len(self.splits) == len(self.removed)):
            raise CacheCorruptError(
                f"the sample table of {str(self.path)!r} is inconsistent: {len(self.ids)} ids, "
                f"{len(self.labels)} labels, {len(self.splits)} splits."
            )

    @property
    def n_samples(self) -> int:
        return len(self.ids)

    # -- discovery ------------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        """Model names, sorted."""
        if self._folder is not None:
            return self._folder.models()
        with self._open() as f:
            return sorted(f[fmt.features_path()].keys())

    def layers(self, model: str) -> list[str]:
        """Layer names of ``model``, from input to output (by ``depth`` where present)."""
        if self._folder is not None:
            return _order(self._folder_layers(model))
        with self._open() as f:
            return _layer_order(self._model_group(f, model))

    @property
    def entries(self) -> list[Entry]:
        """Every ``(model, layer)`` matrix with its shape, row counts and provenance."""
        if self._folder is not None:
            return [self._folder_entry(m, layer) for m in self.models for layer in self.layers(m)]
        with self._open() as f:
            return [
                self._entry(f, model, layer)
                for model in sorted(f[fmt.features_path()].keys())
                for layer in _layer_order(f[fmt.features_path(model)])
            ]

    def entry(self, model: str, layer: str) -> Entry:
        """The :class:`Entry` of one ``(model, layer)``."""
        if self._folder is not None:
            self._folder_layer(model, layer)  # raises UnknownNameError with suggestions
            return self._folder_entry(model, layer)
        with self._open() as f:
            self._dataset(f, model, layer)  # raises UnknownNameError with suggestions
            return self._entry(f, model, layer)

    def _entry(self, f: h5py.File, model: str, layer: str) -> Entry:
        group = f[fmt.features_path(model)]
        dataset = group[layer]
        status = self._status(f, model, layer)
        provenance = {k: _decode(v) for k, v in group.attrs.items()}
        provenance.update({k: _decode(v) for k, v in dataset.attrs.items()})
        provenance.setdefault("layer", layer)
        depth = provenance.get("depth")
        return Entry(
            model=model,
            layer=layer,
            n_features=int(dataset.shape[1]),
            dtype=str(dataset.dtype),
            n_ok=int(np.sum((status == STATUS_OK) & ~self.removed)),
            n_failed=int(np.sum((status == STATUS_FAILED) & ~self.removed)),
            n_pending=int(np.sum((status == STATUS_PENDING) & ~self.removed)),
            depth=None if depth is None else float(depth),
            provenance=provenance,
            n_removed=int(self.removed.sum()),
        )

    def failures(self, model: str) -> list[tuple[str, str]]:
        """``(id, reason)`` of each sample that failed for ``model``."""
        if self._folder is not None:
            self._folder_layers(model)
            return [(str(self.ids[row]), reason) for row, reason in self._folder.failures(model)]
        with self._open() as f:
            self._model_group(f, model)
            if fmt.failures_path(model, "row") not in f:
                return []
            rows = f[fmt.failures_path(model, "row")][:]
            reasons = f[fmt.failures_path(model, "reason")].asstr()[:]
        return [
            (str(self.ids[int(r)]), str(reason)) for r, reason in zip(rows, reasons, strict=True)
        ]

    # -- reading features -----------------------------------------------------------

    def load(
        self, model: str, layer: str, split: str | Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, labels and ids of the rows whose status is ok.

        Parameters
        ----------
        model, layer : str
            Names as listed by :attr:`entries` (``featurecache ls CACHE``).
        split : str, sequence of str or None
            Keep only rows of these splits (``"train"``, ``"val"``, ``"test"``);
            ``None`` keeps every split.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features), float32
            float16 caches are upcast.
        y : ndarray of shape (n_samples,), int64
            Index into :attr:`class_names`; ``-1`` means no label.
        ids : ndarray of shape (n_samples,), str

        Raises
        ------
        UnknownNameError
            Unknown model, layer or split.
        CacheCorruptError
            A shard file is unreadable or does not match its SHA-256.
        """
        X, rows = self.load_rows(model, layer, self._split_mask(split))
        return X, self.labels[rows], self.ids[rows]

    def load_rows(
        self, model: str, layer: str, wanted: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features of the ok rows among ``wanted`` (a boolean mask) and their row indices."""
        if wanted is None:
            wanted = np.ones(self.n_samples, dtype=bool)
        wanted = wanted & ~self.removed  # removed samples are never read
        if self._folder is not None:
            return self._read_folder(model, layer, wanted)
        with self._open() as f:
            dataset = self._dataset(f, model, layer)
            n_features = int(dataset.shape[1])
            shards = self._shards(f, model, layer)
            if shards is None:
                return self._read_dataset(
                    dataset, self._status(f, model, layer) == STATUS_OK, wanted
                )
        return self._read_shards(model, layer, shards, n_features, wanted)

    def iter_batches(
        self,
        model: str,
        layer: str,
        rows: np.ndarray | None = None,
        *,
        batch_rows: int | None = None,
        dtype: str | np.dtype = np.float32,
        view: str = "plain",
    ) -> Iterator[Batch]:
        """Stream the ok rows among ``rows`` in row order, a bounded window at a time.

        See :func:`featurecache.cache._stream.iter_batches` (parameters, memory);
        ``(X, y, rows)`` of each batch are aligned, as :meth:`load_rows` would return them.
        """
        return iter_batches(self, model, layer, rows, batch_rows=batch_rows, dtype=dtype, view=view)

    def verify(self, model: str | None = None) -> None:
        """Read every committed feature matrix and check it against the index.

        Raises
        ------
        CacheCorruptError
            Naming the first file that is unreadable or whose SHA-256 differs.
        """
        models = self.models if model is None else [model]
        for name in models:
            for layer in self.layers(name):
                if self._folder is not None:
                    self._read_folder(name, layer, None, force=True)
                    continue
                with self._open() as f:
                    dataset = self._dataset(f, name, layer)
                    n_features = int(dataset.shape[1])
                    shards = self._shards(f, name, layer)
                    if shards is None:
                        ok = self._status(f, name, layer) == STATUS_OK
                        self._read_dataset(dataset, ok, ok)
                        continue
                for shard in shards:
                    self._read_shard(name, layer, shard, n_features)

    # -- internals ------------------------------------------------------------------

    @contextmanager
    def _open(self, path: Path | None = None) -> Iterator[h5py.File]:
        # best-effort: a cache on a read-only disk (or one whose locks fail) is still read.
        kwargs = {"locking": "best-effort"} if fmt.locking_enabled() else {"locking": False}
        with h5py.File(self.path if path is None else path, "r", **kwargs) as f:
            yield f

    def _model_group(self, f: h5py.File, model: str) -> h5py.Group:
        models = sorted(f[fmt.features_path()].keys())
        if model not in models:
            raise UnknownNameError(
                f"model {model!r} is not in cache {str(self.path)!r}; it has "
                f"{', '.join(models) or 'no models'}.{suggest(model, models)} "
                f"Hint: {_LS_HINT.format(path=self.path)}."
            )
        return f[fmt.features_path(model)]

    def _dataset(self, f: h5py.File, model: str, layer: str) -> h5py.Dataset:
        group = self._model_group(f, model)
        layers = _layer_order(group)
        if layer not in layers:
            raise UnknownNameError(
                f"layer {layer!r} of model {model!r} is not in cache {str(self.path)!r}; it has "
                f"{', '.join(layers) or 'no layers'}.{suggest(layer, layers)} "
                f"Hint: {_LS_HINT.format(path=self.path)}."
            )
        dataset = group[layer]
        if dataset.ndim != 2 or dataset.shape[0] != self.n_samples:
            raise CacheCorruptError(
                f"/features/{model}/{layer} in {str(self.path)!r} has shape {dataset.shape}; "
                f"expected ({self.n_samples}, n_features), one row per sample."
            )
        return dataset

    def _split_mask(self, split: str | Sequence[str] | None) -> np.ndarray:
        if split is None:
            return np.ones(self.n_samples, dtype=bool)
        names = [split] if isinstance(split, str) else list(split)
        present = sorted(set(self.splits.tolist()))
        for name in names:
            if name not in present:
                shown = ", ".join(repr(s) for s in present)
                raise UnknownNameError(
                    f"split {name!r} is not in cache {str(self.path)!r}; its samples have "
                    f"splits {shown}.{suggest(name, present)} "
                    f"Hint: {_LS_HINT.format(path=self.path)}."
                )
        return np.isin(self.splits, names)

    def _shards(self, f: h5py.File, model: str, layer: str) -> list[_Shard] | None:
        if fmt.shards_path(model) not in f:
            return None
        table = f[fmt.shards_path(model)]
        files = table["file"].asstr()[:]
        layers = table["layer"].asstr()[:]
        starts, stops = table["start"][:], table["stop"][:]
        digests = table["sha256"].asstr()[:]
        return [
            _Shard(self._shard_path(name), name, int(start), int(stop), str(digest))
            for name, lay, start, stop, digest in zip(
                files, layers, starts, stops, digests, strict=True
            )
            if lay == layer
        ]

    def _shard_path(self, name: str) -> Path:
        # Listed relative to the index's directory; older writers used the .d folder.
        beside = self.path.parent / name
        inside = fmt.data_dir(self.path) / name
        return inside if not beside.exists() and inside.exists() else beside

    def _status(self, f: h5py.File, model: str, layer: str) -> np.ndarray:
        shards = self._shards(f, model, layer)
        if shards is not None:
            status = np.zeros(self.n_samples, dtype=np.int8)
            for shard in shards:
                status[shard.start : shard.stop] = self._shard_status(model, layer, shard)
            return status
        if fmt.status_path(model, layer) in f:
            return f[fmt.status_path(model, layer)][:].astype(np.int8)
        return np.full(self.n_samples, STATUS_OK, dtype=np.int8)

    def _shard_status(self, model: str, layer: str, shard: _Shard) -> np.ndarray:
        try:
            with self._open(shard.file) as g:
                status = g["status"][:]
        except (OSError, KeyError) as error:
            raise self._corrupt(model, layer, shard, f"it cannot be read ({error})") from error
        if status.shape != (shard.stop - shard.start,):
            raise self._corrupt(model, layer, shard, f"its status has shape {status.shape}")
        return status

    def _read_shard(self, model: str, layer: str, shard: _Shard, n_features: int) -> np.ndarray:
        """Features of one shard as stored, after checking their SHA-256."""
        try:
            with self._open(shard.file) as g:
                data = np.ascontiguousarray(g[fmt.shard_features_path(layer)][:])
        except (OSError, KeyError) as error:
            raise self._corrupt(model, layer, shard, f"it cannot be read ({error})") from error
        if data.shape != (shard.stop - shard.start, n_features):
            raise self._corrupt(model, layer, shard, f"layer {layer!r} has shape {data.shape}")
        digest = hashlib.sha256(data.tobytes()).hexdigest()
        if digest != shard.sha256:
            raise self._corrupt(
                model,
                layer,
                shard,
                f"the SHA-256 of layer {layer!r} is {digest[:12]}…, the index records "
                f"{shard.sha256[:12]}…",
            )
        return data

    def _read_shards(
        self, model: str, layer: str, shards: list[_Shard], n_features: int, wanted: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # Two passes: statuses first (small), so the output is allocated once.
        keep = []
        for shard in shards:
            ok = self._shard_status(model, layer, shard) == STATUS_OK
            keep.append(ok & wanted[shard.start : shard.stop])
        n_rows = int(sum(int(k.sum()) for k in keep))
        X = np.empty((n_rows, n_features), dtype=np.float32)
        rows = np.empty(n_rows, dtype=np.int64)
        at = 0
        for shard, mask in zip(shards, keep, strict=True):
            if not mask.any():
                continue
            data = self._read_shard(model, layer, shard, n_features)
            n = int(mask.sum())
            X[at : at + n] = data[mask]
            rows[at : at + n] = shard.start + np.flatnonzero(mask)
            at += n
        order = np.argsort(rows, kind="stable")
        if np.any(order != np.arange(n_rows)):
            X, rows = X[order], rows[order]
        _check_finite(X, f"{model}/{layer}", self.path)
        return X, rows

    def _read_dataset(
        self, dataset: h5py.Dataset, ok: np.ndarray, wanted: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        keep = ok & wanted
        rows = np.flatnonzero(keep)
        n_features = int(dataset.shape[1])
        X = np.empty((len(rows), n_features), dtype=np.float32)
        step = max(1, _CHUNK_BYTES // max(1, n_features * dataset.dtype.itemsize))
        at = 0
        for start in range(0, self.n_samples, step):
            mask = keep[start : start + step]
            if not mask.any():
                continue
            try:
                chunk = dataset[start : start + len(mask)]
            except OSError as error:
                raise CacheCorruptError(
                    f"rows {start}..{start + len(mask)} of {dataset.name} in {str(self.path)!r} "
                    f"cannot be read ({error}); recompute them with the same `featurecache "
                    "extract` command, or rewrite the file."
                ) from error
            n = int(mask.sum())
            X[at : at + n] = chunk[mask]
            at += n
        _check_finite(X, dataset.name.removeprefix("/features/"), self.path)
        return X, rows

    def _read_folder(
        self, model: str, layer: str, wanted: np.ndarray | None, force: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        summary = self._folder_layer(model, layer)
        keep = self._folder.status(model, layer, self.n_samples) == STATUS_OK
        if wanted is not None:
            keep &= wanted
        try:
            X, rows = read_layer(
                self._folder.shards(model, layer), summary.n_features, keep, force=force
            )
        except ShardReadError as error:
            raise self._corrupt(model, layer, error.shard, error.what) from error
        # No NaN check: every shard matched the digest of what the writer checked was finite.
        return X, rows

    def _folder_layers(self, model: str) -> dict:
        models = self._folder.models()
        if model not in models:
            raise UnknownNameError(
                f"model {model!r} is not in cache {str(self.path)!r}; it has "
                f"{', '.join(models) or 'no models'}.{suggest(model, models)} "
                f"Hint: {_LS_HINT.format(path=self.path)}."
            )
        return self._folder.layers(model)

    def _folder_layer(self, model: str, layer: str):
        layers = self._folder_layers(model)
        if layer not in layers:
            names = _order(layers)
            raise UnknownNameError(
                f"layer {layer!r} of model {model!r} is not in cache {str(self.path)!r}; it has "
                f"{', '.join(names) or 'no layers'}.{suggest(layer, names)} "
                f"Hint: {_LS_HINT.format(path=self.path)}."
            )
        return layers[layer]

    def _folder_entry(self, model: str, layer: str) -> Entry:
        summary = self._folder_layer(model, layer)
        status = self._folder.status(model, layer, self.n_samples)
        attrs = plain_attrs(summary.attrs)
        runs = read_runs(fmt.run_log(self.path, model))
        provenance = {
            **config_provenance(self._folder.config(model)),
            **runs,
            **attrs,
            "layer": layer,
        }
        depth = provenance.get("depth")
        return Entry(
            model=model,
            layer=layer,
            n_features=summary.n_features,
            dtype=summary.dtype,
            n_ok=int(np.sum((status == STATUS_OK) & ~self.removed)),
            n_failed=int(np.sum((status == STATUS_FAILED) & ~self.removed)),
            n_pending=int(np.sum((status == STATUS_PENDING) & ~self.removed)),
            depth=None if depth is None else float(depth),
            provenance=provenance,
            n_removed=int(self.removed.sum()),
        )

    def _corrupt(self, model: str, layer: str, shard: _Shard, what: str) -> CacheCorruptError:
        return CacheCorruptError(
            f"shard file {str(shard.file)!r} of {model}/{layer} is corrupt: {what}; delete "
            f"{str(shard.file)!r} and re-run the same `featurecache extract` command to "
            "recompute it."
        )

    # -- extra views (issue 14) -------------------------------------------------------

    def views(self, model: str) -> ViewSets | None:
        """The extra views stored for ``model`` (counts, specs, seed), or ``None``.

        Raises
        ------
        UnknownNameError
            Unknown model.
        """
        return ViewSets.from_mapping(self._view_mapping(model))

    def load_views(
        self, model: str, layer: str, kind: str = "augment", wanted: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every view of the rows that have views of ``kind``, all of them ok.

        Parameters
        ----------
        model, layer : str
            Names as listed by :attr:`entries`.
        kind : {'augment', 'tta'}
            ``augment``: the training views of the train and val rows; ``tta``: the
            test-time views of every split's rows.
        wanted : ndarray of shape (n_samples,), bool, optional
            Keep only these rows (default: every row); only the shards holding one are read.

        Returns
        -------
        X : ndarray of shape (n_rows, n_views, n_features), float32
            View 0 is the plain view: ``X[:, 0]`` equals :meth:`load_rows` of these rows.
        rows : ndarray of shape (n_rows,), int64
            Sample indices (ascending) of rows whose every view of ``kind`` is ok; removed
            samples are left out.

        Raises
        ------
        InvalidArgumentError
            ``kind`` is not one of ``augment``, ``tta``, or the model has no views of it.
        UnknownNameError
            Unknown model or layer.
        CacheCorruptError
            A shard file is unreadable or does not match its SHA-256.
        """
        check_choice(kind, "kind", "load_views", VIEW_KINDS)
        sets = self.views(model)
        count = 0 if sets is None else sets.count(kind)
        if not count:
            flags = "--views K --augment SPEC" if kind == "augment" else "--tta SPEC"
            raise InvalidArgumentError(
                f"model {model!r} in cache {str(self.path)!r} has no {kind} views; extract them "
                f"under another model name with `featurecache extract DATA --cache "
                f"{self.path.name} --model BACKBONE --name NAME {flags}`."
            )
        if self._folder is not None:
            self._folder_layer(model, layer)  # raises UnknownNameError with suggestions
            X, rows = self._read_folder_views(model, layer, kind, count, wanted)
        else:
            with self._open() as f:
                n_features = int(self._dataset(f, model, layer).shape[1])
                X, rows = self._read_index_views(f, model, layer, kind, count, n_features, wanted)
        _check_finite(X.reshape(len(X), -1), f"{kind} views of {model}/{layer}", self.path)
        return X, rows

    def _view_mapping(self, model: str) -> dict:
        """``FeatureConfig.views`` of ``model``, as recorded (``{}`` for none)."""
        if self._folder is not None:
            self._folder_layers(model)  # raises UnknownNameError with suggestions
            return dict(self._folder.config(model).views)
        with self._open() as f:
            value = _decode(self._model_group(f, model).attrs.get("views", "{}"))
        try:
            return dict(json.loads(value) if isinstance(value, str) else value)
        except (ValueError, TypeError) as error:
            raise CacheCorruptError(
                f"the views attribute of model {model!r} in {str(self.path)!r} is not a JSON "
                f"object ({error}); re-run the same `featurecache extract` command."
            ) from error

    def _read_index_views(
        self, f: h5py.File, model: str, layer: str, kind: str, count: int, n_features: int,
        wanted: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        path, status_path = (
            fmt.views_path(kind, model, layer),
            fmt.view_status_path(kind, model, layer),
        )
        if path not in f or status_path not in f:
            return np.zeros((0, count, n_features), np.float32), np.zeros(0, np.int64)
        status = f[status_path][:]
        keep = np.all(status == STATUS_OK, axis=1) & ~self.removed
        rows = np.flatnonzero(keep if wanted is None else keep & wanted)
        if not len(rows):
            return np.zeros((0, count, n_features), np.float32), rows.astype(np.int64)
        try:
            X = f[path][rows.min() : rows.max() + 1][rows - rows.min()]
        except OSError as error:
            raise CacheCorruptError(
                f"/{path} in {str(self.path)!r} cannot be read ({error}); recompute it with the "
                "same `featurecache extract` command, or rewrite the file."
            ) from error
        return X.astype(np.float32, copy=False), rows.astype(np.int64)

    def _read_folder_views(
        self, model: str, layer: str, kind: str, count: int, wanted: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        parts, found = [], []
        for shard in self._folder.view_shards(model, layer, kind):
            if wanted is not None and not wanted[shard.start : shard.stop].any():
                continue
            try:
                status, values = read_views(shard, kind, self._open)
            except ShardReadError as error:
                raise self._corrupt(model, layer, error.shard, error.what) from error
            keep = np.all(status == STATUS_OK, axis=1) & ~self.removed[shard.start : shard.stop]
            if wanted is not None:
                keep &= wanted[shard.start : shard.stop]
            parts.append(values[keep])
            found.append(shard.start + np.flatnonzero(keep))
        n_features = self._folder_layer(model, layer).n_features
        if not parts:
            return np.zeros((0, count, n_features), np.float32), np.zeros(0, np.int64)
        X, rows = np.concatenate(parts), np.concatenate(found).astype(np.int64)
        order = np.argsort(rows, kind="stable")
        return X[order].astype(np.float32, copy=False), rows[order]

    # -- stored classifiers (issue 11) ------------------------------------------------

    def classifiers(self, model: str) -> dict[str, StoredClassifier]:
        """The fixed classifiers stored beside ``model``'s features, by kind.

        ``imagenet``: the backbone's own classifier (reads ``embedding``); ``zeroshot``: the
        text embeddings of the class names (reads ``embedding.proj``). Empty when none.
        See :class:`featurecache.cache.StoredClassifier`.
        """
        if model not in self.models:
            raise UnknownNameError(
                f"model {model!r} is not in cache {str(self.path)!r}; it has "
                f"{', '.join(self.models) or 'no models'}.{suggest(model, self.models)}"
            )
        return read_classifiers(self.path, model)


def _read_strings(dataset: h5py.Dataset) -> np.ndarray:
    """A string dataset as a NumPy unicode array.

    ASCII text (ids and splits almost always) is converted in one C loop, not one
    ``bytes.decode`` per row: opening a cache of millions of samples stays a matter of
    seconds. Anything else is decoded as UTF-8, row by row.
    """
    raw = dataset[:]
    fixed = np.asarray(raw, dtype=bytes) if raw.dtype == object else raw
    if fixed.dtype.kind == "S" and (fixed.size == 0 or fixed.view(np.uint8).max() < 128):
        return fixed.astype(str)
    return dataset.asstr()[:].astype(str)


def _order(layers: dict) -> list[str]:
    """Layer names of a folder view, from input to output."""

    def key(name: str) -> tuple:
        attrs = layers[name].attrs
        depth, index = attrs.get("depth"), attrs.get("depth_index")
        return (depth is None, float(depth or 0.0), int(index or 0), name)

    return sorted(layers, key=key)


def _layer_order(group: h5py.Group) -> list[str]:
    names = [name for name in group.keys() if isinstance(group[name], h5py.Dataset)]

    def key(name: str) -> tuple:
        attrs = group[name].attrs
        depth = attrs.get("depth")
        index = attrs.get("depth_index")
        return (
            depth is None,
            float(depth) if depth is not None else 0.0,
            int(index) if index is not None else 0,
            name,
        )

    return sorted(names, key=key)


def _check_finite(X: np.ndarray, name: str, path: Path) -> None:
    # Rows marked ok must hold numbers; NaN means the index and the data disagree.
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise CacheCorruptError(
            f"{int(bad.sum())} rows of {name} in {str(path)!r} are marked ok but hold NaN or "
            "Inf; re-run the same `featurecache extract` command to recompute them."
        )
