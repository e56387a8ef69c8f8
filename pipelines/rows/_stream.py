"""Rows of a layer streamed with their selection folds, and the statistics summed over them.

A :class:`RowSource` walks the fitting rows of one layer through
:meth:`Cache.iter_batches <featurecache.cache.Cache.iter_batches>`, window by window,
each row tagged with its group: the selection fold that holds it out (``0..k-1``), or
``-1`` for rows that are never held out (the train rows when a val split chooses). With
``views`` the augmented views 1..K-1 of each row follow as rows of their own, in the
group of their sample, never scored (held-out samples are scored on their plain view).

:class:`GroupStats` sums, per group and in float64, what exact linear heads need:
counts, feature sums, the Gram matrix ``X^T X``, and ``X^T`` times the one-hot labels,
all about a shift (the first window's mean) so that centred sums keep their precision.
The statistics of any fold's training part are the total minus that fold's group;
:func:`scaler_of` turns them into the ``StandardScaler`` the in-memory fit would fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from sklearn.preprocessing import StandardScaler

from featurecache.cache import Cache

__all__ = ["Chunk", "RowSource", "GroupStats", "scaler_of", "fold_groups"]


class Chunk(NamedTuple):
    """Rows of a stream: features (float32), labels, groups, and whether each is scored."""

    X: np.ndarray
    y: np.ndarray
    group: np.ndarray
    scored: np.ndarray


def fold_groups(n_rows: int, splits) -> np.ndarray:
    """The group of each of ``n_rows`` rows: the index of the split that scores it, or -1."""
    group = np.full(n_rows, -1, dtype=np.int16)
    for k, (_, score) in enumerate(splits):
        group[score] = k
    return group


@dataclass
class RowSource:
    """The fitting rows of one layer, streamed with their groups.

    Attributes
    ----------
    cache : Cache
    model, layer : str
    rows : ndarray of shape (n_rows,), int64
        Ascending row numbers (ok rows only).
    group : ndarray of shape (n_rows,)
        The group of each row (see :func:`fold_groups`).
    batch_rows : int
    views : bool
        Also stream the augmented views 1..K-1 of the rows that have them.
    """

    cache: Cache
    model: str
    layer: str
    rows: np.ndarray
    group: np.ndarray
    batch_rows: int
    views: bool = False
    n_views: int = 1
    _by_row: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 2 if len(self.group) else 1

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        """The group of each of ``rows`` (row numbers among :attr:`rows`)."""
        return self.group[np.searchsorted(self.rows, rows)]

    def chunks(self, plain_only: bool = False) -> Iterator[Chunk]:
        """Every row, window by window: the plain rows first, then (``views``) the views."""
        for batch in self.cache.iter_batches(
            self.model, self.layer, self.rows, batch_rows=self.batch_rows
        ):
            scored = np.ones(len(batch.rows), dtype=bool)
            yield Chunk(batch.X, batch.y, self.group_of(batch.rows), scored)
        if plain_only or not self.views:
            return
        step = max(1, self.batch_rows // max(1, self.n_views))
        step = 1 << (step.bit_length() - 1)
        for batch in self.cache.iter_batches(
            self.model, self.layer, self.rows, batch_rows=step, view="augment"
        ):
            extra = batch.X[:, 1:, :]
            n_extra = extra.shape[1]
            yield Chunk(
                extra.reshape(-1, extra.shape[2]),
                np.repeat(batch.y, n_extra),
                np.repeat(self.group_of(batch.rows), n_extra),
                np.zeros(len(batch.rows) * n_extra, dtype=bool),
            )


@dataclass
class GroupStats:
    """Per-group float64 sums over a stream, about ``shift``.

    Attributes
    ----------
    count : ndarray of shape (n_groups,)
    sums : ndarray of shape (n_groups, n_features)
        Sum of ``x - shift``.
    squares : ndarray of shape (n_groups, n_features)
        Sum of ``(x - shift) ** 2``.
    gram : ndarray of shape (n_groups, n_features, n_features) or None
        Sum of ``(x - shift)(x - shift)^T``.
    cross : ndarray of shape (n_groups, n_features, n_classes) or None
        Sum of ``(x - shift)`` times the one-hot label.
    class_count : ndarray of shape (n_groups, n_classes)
    shift : ndarray of shape (n_features,)

    Group ``g`` of the arrays is the rows of group ``g - 1`` (row group ``-1`` is index 0).
    """

    count: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    gram: np.ndarray | None
    cross: np.ndarray | None
    class_count: np.ndarray
    shift: np.ndarray

    @classmethod
    def collect(
        cls, source: RowSource, classes: np.ndarray, *, gram: bool, n_features: int
    ) -> GroupStats:
        """One pass over ``source``."""
        n_groups, n_classes = source.n_groups, len(classes)
        stats = None
        for chunk in source.chunks():
            X = chunk.X.astype(np.float64)
            if stats is None:
                stats = cls(
                    count=np.zeros(n_groups),
                    sums=np.zeros((n_groups, n_features)),
                    squares=np.zeros((n_groups, n_features)),
                    gram=np.zeros((n_groups, n_features, n_features)) if gram else None,
                    cross=np.zeros((n_groups, n_features, n_classes)) if gram else None,
                    class_count=np.zeros((n_groups, n_classes)),
                    shift=X.mean(axis=0),
                )
            X -= stats.shift
            labels = np.searchsorted(classes, chunk.y)
            for g in np.unique(chunk.group):
                at = chunk.group == g
                part = X[at] if not at.all() else X
                index = int(g) + 1
                stats.count[index] += len(part)
                stats.sums[index] += part.sum(axis=0)
                stats.squares[index] += np.einsum("ij,ij->j", part, part)
                onehot = np.zeros((len(part), n_classes))
                onehot[np.arange(len(part)), labels[at]] = 1.0
                stats.class_count[index] += onehot.sum(axis=0)
                if gram:
                    stats.gram[index] += part.T @ part
                    stats.cross[index] += part.T @ onehot
        return stats

    def without(self, fold: int | None) -> GroupStats:
        """The sums of every row outside group ``fold`` (``None``: every row), one group."""
        keep = np.ones(len(self.count), dtype=bool)
        if fold is not None:
            keep[fold + 1] = False

        def total(values):
            return None if values is None else values[keep].sum(axis=0)[None]

        return GroupStats(
            count=total(self.count), sums=total(self.sums), squares=total(self.squares),
            gram=total(self.gram), cross=total(self.cross),
            class_count=total(self.class_count), shift=self.shift,
        )  # fmt: skip

    @property
    def n(self) -> float:
        return float(self.count[0])

    @property
    def mean(self) -> np.ndarray:
        """The mean of the (single-group) rows."""
        return self.shift + self.sums[0] / self.n

    @property
    def var(self) -> np.ndarray:
        """The population variance of the (single-group) rows."""
        centred = self.sums[0] / self.n
        return np.clip(self.squares[0] / self.n - centred**2, 0.0, None)

    def centred_gram(self) -> np.ndarray:
        """``Xc^T Xc`` of the (single-group) rows, ``Xc`` centred on their own mean."""
        centred = self.sums[0] / self.n
        return self.gram[0] - self.n * np.outer(centred, centred)

    def centred_cross(self, Y_sums: np.ndarray, Y_cross: np.ndarray) -> np.ndarray:
        """``Xc^T Yc`` given ``sum(Y)`` and ``sum((x - shift) Y^T)``."""
        centred = self.sums[0] / self.n
        return Y_cross - np.outer(centred, Y_sums)


def scaler_of(stats: GroupStats) -> StandardScaler:
    """The ``StandardScaler`` fitted on the (single-group) rows of ``stats``.

    Equal to ``StandardScaler().fit(X)`` up to float64 rounding (constant features keep a
    scale of 1, by scikit-learn's rule).
    """
    mean, var, n = stats.mean, stats.var, stats.n
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.sqrt(var)
    scale[constant | (scale < 10 * eps)] = 1.0
    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
    scaler.n_samples_seen_ = int(n)
    scaler.n_features_in_ = len(mean)
    return scaler
