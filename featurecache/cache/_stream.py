"""Stream a layer of a cache in row order, a bounded window of rows at a time.

:meth:`Cache.iter_batches <featurecache.cache.Cache.iter_batches>` cuts the row numbers of
a cache into windows of ``batch_rows`` consecutive rows and reads each window through the
public reader (:meth:`~featurecache.cache.Cache.load_rows`, or
:meth:`~featurecache.cache.Cache.load_views` for the extra views), which reads only the
shards holding a kept row. Windows are powers of two in rows, so with the writer's
power-of-two shard sizes (1,024 by default) a shard is read once. The next window is read
on a background thread while the caller works on the current one: at most two windows are
held at once, whatever the size of the layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, Protocol

import numpy as np

from featurecache.core._validation import ParameterError, check_choice, check_int

__all__ = ["Batch", "DEFAULT_BATCH_BYTES", "STREAM_VIEWS", "default_batch_rows", "stream_windows"]

#: The float32 bytes of one window by default (two are held: the current and the next).
DEFAULT_BATCH_BYTES = 64 << 20
#: What ``view`` of :meth:`Cache.iter_batches` accepts: the plain rows, or one kind of extra view.
STREAM_VIEWS = ("plain", "augment", "tta")


class RowReader(Protocol):
    """What :func:`stream_windows` asks of a reader (:class:`~featurecache.cache.Cache`)."""

    n_samples: int
    labels: np.ndarray

    def entry(self, model: str, layer: str) -> Any: ...

    def views(self, model: str) -> Any: ...

    def load_rows(self, model: str, layer: str, wanted: np.ndarray) -> tuple: ...

    def load_views(self, model: str, layer: str, kind: str, wanted: np.ndarray) -> tuple: ...


class Batch(NamedTuple):
    """One window of a stream, aligned row by row.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features), or (n_rows, n_views, n_features) for views
    y : ndarray of shape (n_rows,), int64
        Labels (index into ``class_names``; ``-1``: none).
    rows : ndarray of shape (n_rows,), int64
        Row numbers (sample indices), ascending.
    """

    X: np.ndarray
    y: np.ndarray
    rows: np.ndarray


def default_batch_rows(n_features: int, n_views: int = 1, batch_bytes: int = DEFAULT_BATCH_BYTES):
    """The largest power of two of rows whose float32 window fits ``batch_bytes`` (>= 1)."""
    rows = max(1, int(batch_bytes) // max(1, 4 * int(n_features) * int(n_views)))
    return 1 << (rows.bit_length() - 1)


def stream_windows(
    cache: RowReader, model, layer, rows, batch_rows, dtype, view
) -> Iterator[Batch]:
    """The batches of :meth:`Cache.iter_batches <featurecache.cache.Cache.iter_batches>`,
    whose parameters this checks, read ahead one window at a time; ``cache`` is anything
    with :class:`RowReader`'s methods."""
    view = check_choice(view, "view", "iter_batches", STREAM_VIEWS)
    dtype = _check_dtype(dtype)
    mask = _mask(cache, rows)
    entry = cache.entry(model, layer)  # unknown names fail here, before any thread starts
    if batch_rows is None:
        count = 1 if view == "plain" else max(1, cache.views(model).count(view))
        batch_rows = default_batch_rows(entry.n_features, count)
    batch_rows = check_int(batch_rows, "batch_rows", "iter_batches", low=1)
    windows = [
        (start, start + batch_rows)
        for start in range(0, cache.n_samples, batch_rows)
        if mask[start : start + batch_rows].any()
    ]

    def read(window: tuple[int, int]) -> Batch:
        wanted = np.zeros(cache.n_samples, dtype=bool)
        wanted[window[0] : window[1]] = mask[window[0] : window[1]]
        if view == "plain":
            X, found = cache.load_rows(model, layer, wanted)
        else:
            X, found = cache.load_views(model, layer, view, wanted)
        found = np.asarray(found, dtype=np.int64)
        return Batch(X.astype(dtype, copy=False), cache.labels[found], found)

    if not windows:
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, windows[0])
        for window in windows[1:]:
            batch = pending.result()
            pending = pool.submit(read, window)
            if len(batch.rows):
                yield batch
        batch = pending.result()
        if len(batch.rows):
            yield batch


def _check_dtype(dtype) -> np.dtype:
    try:
        value = np.dtype(dtype)
    except TypeError:
        value = None
    if value not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ParameterError("dtype", "iter_batches", "float32 or float64", dtype)
    return value


def _mask(cache: RowReader, rows) -> np.ndarray:
    """``rows`` (None, a boolean mask or ascending row numbers) as a boolean mask."""
    n = cache.n_samples
    if rows is None:
        return np.ones(n, dtype=bool)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise ParameterError(
                "rows", "iter_batches", f"a boolean mask of shape ({n},) or row numbers",
                f"a mask of shape {rows.shape}",
            )  # fmt: skip
        return rows
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ParameterError(
            "rows", "iter_batches", "a boolean mask or a 1-D array of row numbers",
            f"an array of dtype {rows.dtype} and shape {rows.shape}",
        )  # fmt: skip
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise ParameterError(
            "rows", "iter_batches", f"row numbers in 0..{n - 1}",
            f"{int(rows.min())}..{int(rows.max())}",
        )  # fmt: skip
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask
