"""The reader side of the cache (``docs/cache-format.md``), without torch.

The HDF5 file is opened for each call and closed before it returns, so a writer
may replace the index between two calls; every call sees one consistent index.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from featurecache.cache import _format as fmt
from featurecache.cache._classifiers import StoredClassifier, read_classifiers
from featurecache.cache._config import VIEW_KINDS, ViewSets
from featurecache.cache._folder import LayerSummary, check_finite, layer_order
from featurecache.cache._folder import decode as _decode
from featurecache.cache._format import STATUS_FAILED, STATUS_OK, STATUS_PENDING
from featurecache.cache._legacy import open_view, read_table
from featurecache.cache._samples import STATE_LIVE, STATE_REMOVED, STATE_STALE, SampleColumns
from featurecache.cache._stream import Batch, stream_windows
from featurecache.core._validation import check_choice
from featurecache.exceptions import (
    CacheCorruptError,
    InvalidArgumentError,
    UnknownNameError,
    suggest,
)

__all__ = ["Cache", "Entry", "open_cache"]

logger = logging.getLogger(__name__)

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
    n_stale: int = 0
    provenance: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


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


class Cache(SampleColumns):
    """A featurecache file, read one call at a time.

    The sample table (:attr:`samples`, a :class:`~featurecache.cache.SampleTable`; its
    columns ``ids``, ``labels``, ``splits``, ``class_names``, ``source``, ``state`` are also
    attributes of the reader) is read once, when the cache is opened. Everything else is
    read from the cache's folder (its commit logs) on each call, through one interface
    (:class:`~featurecache.cache._folder.FolderView`'s); a version-1 cache is read through
    the one adapter that answers it for older layouts (:mod:`featurecache.cache._legacy`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not fmt.samples_file(self.path).is_file() or self.path.is_dir():
            self._check_path()
        try:
            self._view = open_view(self.path, self._open)
            with self._view.samples_group() as f:
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

    def _read_samples(self, f: h5py.File) -> None:
        link = f.get("samples", getlink=True)
        if isinstance(link, h5py.ExternalLink) and not fmt.data_dir(self.path).is_dir():
            raise CacheCorruptError(
                f"CACHE {str(self.path)!r} is an index without its folder "
                f"{fmt.data_dir(self.path).name}/, which holds the samples and features; keep "
                f"{self.path.name} and {fmt.data_dir(self.path).name} together (copy or move both)."
            )
        found = _decode(f.attrs.get("format", fmt.FORMAT))
        version = int(f.attrs.get("format_version", 1))
        missing = [k for k in fmt.SAMPLE_FIELDS if fmt.sample_path(k) not in f]
        if found != fmt.FORMAT or missing or not self._view.complete(f):
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
        table = read_table(f, identity=False)
        #: The sample table (:class:`~featurecache.cache.SampleTable`, without the digest
        #: and stat columns): ids, labels, splits, class names, source, row states.
        self.samples = table
        digest = f.attrs.get("samples_digest")
        self.samples_digest = (
            str(_decode(digest))
            if digest is not None
            else fmt.samples_digest(self.ids, self.labels, self.splits)
        )
        if len(self.state) != len(self.ids):
            raise CacheCorruptError(
                f"the sample table of {str(self.path)!r} is inconsistent: {len(self.ids)} ids, "
                f"{len(self.labels)} labels, {len(self.splits)} splits."
            )

    @cached_property
    def class_names(self) -> list[str]:
        """The class names, as a list (the reader's type for them)."""
        return list(self.samples.class_names)

    @property
    def state(self) -> np.ndarray:
        """``STATE_*`` of each row: live, removed (no longer in the dataset) or stale (its
        sample's content changed and it has a newer row)."""
        return self.samples.state_codes

    @property
    def removed(self) -> np.ndarray:
        """Rows left out of every read and of ``fit``: removed samples and stale rows."""
        return self.samples.removed_mask

    @property
    def n_samples(self) -> int:
        return len(self.ids)

    # -- discovery ------------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        """Model names, sorted."""
        return self._view.models()

    def layers(self, model: str) -> list[str]:
        """Layer names of ``model``, from input to output (by ``depth`` where present)."""
        return _order(self._layers(model))

    @property
    def entries(self) -> list[Entry]:
        """Every ``(model, layer)`` matrix with its shape, row counts and provenance."""
        return [self.entry(model, layer) for model in self.models for layer in self.layers(model)]

    def entry(self, model: str, layer: str) -> Entry:
        """The :class:`Entry` of one ``(model, layer)``."""
        summary = self._layer(model, layer)
        status = self._view.status(model, layer, self.n_samples)
        provenance = {**self._view.provenance(model, layer, summary), "layer": layer}
        depth = provenance.get("depth")
        return Entry(
            model=model,
            layer=layer,
            n_features=summary.n_features,
            dtype=summary.dtype,
            depth=None if depth is None else float(depth),
            provenance=provenance,
            **_entry_counts(count_rows(status, self.state)),
        )

    def status(self, model: str, layer: str) -> np.ndarray:
        """``STATUS_*`` of every row of ``(model, layer)``, shape ``(n_samples,)``, int8."""
        self._layer(model, layer)  # raises UnknownNameError with suggestions
        return self._view.status(model, layer, self.n_samples)

    def counts(self, model: str, layer: str | Sequence[str]) -> dict[str, dict[str, int]]:
        """The one count of a layer's rows, per split (``""``: no split) and ``"all"``.

        Each holds ``ok``, ``failed`` and ``pending`` (of live rows), ``removed`` (samples
        no longer in the dataset) and ``stale`` (rows superseded by a newer row of the same
        sample). ``extract``, ``ls``, ``fit`` and the report all count with it. With several
        layers, a row is ok when it is ok in every one of them, failed when it failed in any,
        and pending otherwise.
        """
        names = [layer] if isinstance(layer, str) else list(layer)
        status = joint_status([self.status(model, name) for name in names])
        found = {"all": count_rows(status, self.state)}
        for split in self.samples.ordered_splits():
            rows = self.splits == split
            found[split] = count_rows(status[rows], self.state[rows])
        return found

    def failures(self, model: str) -> list[tuple[str, str]]:
        """``(id, reason)`` of each live sample that failed for ``model``."""
        self._layers(model)  # raises UnknownNameError with suggestions
        return [
            (str(self.ids[row]), reason)
            for row, reason in self._view.failures(model)
            if not self.removed[row]
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
        return self._read(model, layer, wanted)

    def row_digests(self, model: str, layer: str) -> list[tuple[int, int, str]]:
        """``(start, stop, sha256)`` of each committed row range of a layer, in row order.

        Each range is one shard as its commit recorded it: the SHA-256 of the feature bytes
        of rows ``[start, stop)`` as stored (C order). Compaction keeps them, so a digest
        built from them is the same before and after.

        Raises
        ------
        UnknownNameError
            Unknown model or layer.
        """
        self._layer(model, layer)  # raises UnknownNameError with suggestions
        return sorted(self._view.range_digests(model, layer))

    def features_digest(
        self,
        model: str,
        layer: str,
        rows: np.ndarray,
        views: Sequence[str] = (),
    ) -> str:
        """SHA-256 naming the exact feature rows ``rows`` of ``(model, layer)``.

        Built from what the cache already records, without reading a feature: the SHA-256
        of each committed row range holding one of ``rows`` (as its shard's commit recorded
        it: compaction keeps them), the ranges' bounds, the layer's width and stored dtype,
        and the rows themselves. Committed rows are never rewritten, so two equal digests
        mean the same numbers; a re-extraction, a row added or left out changes it. A
        version-1 index of arrays, which records no digests, has its layer read once.

        Parameters
        ----------
        model, layer : str
            Names as listed by :attr:`entries`.
        rows : ndarray of int or bool
            The sample rows (indices, or a mask over every row) the features were read for.
        views : sequence of {'augment', 'tta'}
            Also name these extra views of the ranges (a fit on views, or with TTA).

        Returns
        -------
        str
            64 hex digits.

        Raises
        ------
        UnknownNameError
            Unknown model or layer.
        InvalidArgumentError
            ``views`` holds a kind that is not ``augment`` or ``tta``.
        """
        for kind in views:
            check_choice(kind, "views", "features_digest", VIEW_KINDS)
        summary = self._layer(model, layer)  # raises UnknownNameError with suggestions
        rows = _sorted_rows(rows)
        parts = sorted(self._view.range_parts(model, layer), key=lambda part: part.start)
        starts = np.array([part.start for part in parts], dtype=np.int64)
        stops = np.array([part.stop for part in parts], dtype=np.int64)
        # A range holds one of the rows when some row lies in [start, stop).
        held = np.searchsorted(rows, stops) > np.searchsorted(rows, starts)
        digest = hashlib.sha256()
        head = {"n_features": summary.n_features, "dtype": summary.dtype, "views": sorted(views)}
        digest.update(fmt.canonical_json(head).encode())
        for i in np.flatnonzero(held):
            part = parts[int(i)]
            extra = {kind: part.views.get(kind, {}).get(layer, "") for kind in views}
            digest.update(
                fmt.canonical_json([part.start, part.stop, part.digests[layer], extra]).encode()
            )
        digest.update(b"\0rows\0" + rows.astype("<i8").tobytes())
        return digest.hexdigest()

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

        ``(X, y, rows)`` of each batch are aligned, as :meth:`load_rows` would return them.

        Parameters
        ----------
        model, layer : str
        rows : ndarray, optional
            A boolean mask of shape ``(n_samples,)`` or row numbers (any order); default every
            row. Removed, failed and pending rows are left out, as :meth:`load_rows`
            leaves them.
        batch_rows : int, optional
            Consecutive row numbers per window (default: the power of two whose float32 window
            holds about 64 MiB). A batch holds at most this many rows, fewer where ``rows``
            skips some; windows without a kept row are not read.
        dtype : {float32, float64}
            The type of ``X``.
        view : {"plain", "augment", "tta"}
            ``plain``: the features, ``X`` of shape ``(n, n_features)``; ``augment`` or
            ``tta``: every view of the rows whose views of that kind are all ok, ``X`` of
            shape ``(n, n_views, n_features)`` (see :meth:`load_views`).

        Yields
        ------
        Batch

        Raises
        ------
        InvalidArgumentError
            A bad ``rows``, ``batch_rows``, ``dtype`` or ``view``.
        """
        return stream_windows(self, model, layer, rows, batch_rows, dtype, view)

    def verify(self, model: str | None = None) -> None:
        """Read every committed feature matrix and check it against its digests.

        Raises
        ------
        CacheCorruptError
            Naming the first file that is unreadable or whose digest differs.
        """
        models = self.models if model is None else [model]
        for name in models:
            for layer in self.layers(name):
                self._read(name, layer, None, force=True)

    # -- internals ------------------------------------------------------------------

    @contextmanager
    def _open(self, path: Path | None = None) -> Iterator[h5py.File]:
        # best-effort: a cache on a read-only disk (or one whose locks fail) is still read.
        kwargs = {"locking": "best-effort"} if fmt.locking_enabled() else {"locking": False}
        with h5py.File(self.path if path is None else path, "r", **kwargs) as f:
            yield f

    def _read(
        self, model: str, layer: str, wanted: np.ndarray | None, force: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        summary = self._layer(model, layer)
        keep = self._view.status(model, layer, self.n_samples) == STATUS_OK
        if wanted is not None:
            keep &= wanted
        return self._view.read(model, layer, summary.n_features, keep, force=force)

    def _layers(self, model: str) -> dict[str, LayerSummary]:
        self._check_model(model)
        return self._view.layers(model)

    def _check_model(self, model: str) -> None:
        models = self.models
        if model not in models:
            raise UnknownNameError(
                f"model {model!r} is not in cache {str(self.path)!r}; it has "
                f"{', '.join(models) or 'no models'}.{suggest(model, models)} "
                f"Hint: {_LS_HINT.format(path=self.path)}."
            )

    def _layer(self, model: str, layer: str) -> LayerSummary:
        layers = self._layers(model)
        if layer not in layers:
            names = _order(layers)
            raise UnknownNameError(
                f"layer {layer!r} of model {model!r} is not in cache {str(self.path)!r}; it has "
                f"{', '.join(names) or 'no layers'}.{suggest(layer, names)} "
                f"Hint: {_LS_HINT.format(path=self.path)}."
            )
        return layers[layer]

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
        n_features = self._layer(model, layer).n_features
        dropped = self.removed if wanted is None else self.removed | ~np.asarray(wanted, bool)
        parts = self._view.read_views(model, layer, kind, dropped)
        if parts:
            X = np.concatenate([values for values, _ in parts])
            rows = np.concatenate([found for _, found in parts]).astype(np.int64)
            order = np.argsort(rows, kind="stable")
            X, rows = X[order].astype(np.float32, copy=False), rows[order]
        else:
            X, rows = np.zeros((0, count, n_features), np.float32), np.zeros(0, np.int64)
        check_finite(X.reshape(len(X), -1), f"{kind} views of {model}/{layer}", self.path)
        return X, rows

    def _view_mapping(self, model: str) -> dict:
        """``FeatureConfig.views`` of ``model``, as recorded (``{}`` for none)."""
        self._layers(model)  # raises UnknownNameError with suggestions
        return self._view.view_mapping(model)

    # -- stored classifiers (issue 11) ------------------------------------------------

    def classifiers(self, model: str) -> dict[str, StoredClassifier]:
        """The fixed classifiers stored beside ``model``'s features, by kind.

        ``imagenet``: the backbone's own classifier (reads ``embedding``); ``zeroshot``: the
        text embeddings of the class names (reads ``embedding.proj``). Empty when none.
        See :class:`featurecache.cache.StoredClassifier`.
        """
        self._check_model(model)
        return read_classifiers(self.path, model, self.class_names)


def joint_status(statuses: Sequence[np.ndarray]) -> np.ndarray:
    """One ``STATUS_*`` per row for several layers: failed in any, else pending in any, else ok."""
    stacked = np.stack(statuses)
    joint = np.full(stacked.shape[1], STATUS_OK, dtype=stacked.dtype)
    joint[(stacked == STATUS_PENDING).any(axis=0)] = STATUS_PENDING
    joint[(stacked == STATUS_FAILED).any(axis=0)] = STATUS_FAILED
    return joint


def count_rows(status: np.ndarray, state: np.ndarray) -> dict[str, int]:
    """``ok``, ``failed``, ``pending`` of live rows, and the ``removed`` and ``stale`` rows."""
    live = state == STATE_LIVE
    return {
        "ok": int(np.sum((status == STATUS_OK) & live)),
        "failed": int(np.sum((status == STATUS_FAILED) & live)),
        "pending": int(np.sum((status == STATUS_PENDING) & live)),
        "removed": int(np.sum(state == STATE_REMOVED)),
        "stale": int(np.sum(state == STATE_STALE)),
    }


def _entry_counts(counts: dict[str, int]) -> dict[str, int]:
    return {f"n_{kind}": n for kind, n in counts.items()}


def _order(layers: dict[str, LayerSummary]) -> list[str]:
    """Layer names of a view, from input to output."""
    return layer_order({name: summary.attrs for name, summary in layers.items()})


def _sorted_rows(rows: np.ndarray) -> np.ndarray:
    """Row indices (or a boolean mask's) as ascending unique int64, sorted only if needed."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        return np.flatnonzero(rows).astype(np.int64)
    rows = rows.astype(np.int64, copy=False).reshape(-1)
    return rows if np.all(rows[1:] > rows[:-1]) else np.unique(rows)
