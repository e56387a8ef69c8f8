"""Which rows of a cache a fit can use: the status of each row of a (model, layer), by split.

A row is ``ok`` (features committed), ``failed`` (its image could not be read; never
computed again), ``pending`` (not computed yet: an extraction still running or stopped),
``removed`` (its sample left the dataset; never read) or ``stale`` (its sample's content
changed and has a newer row; never read). Fits use ok rows only; :func:`~pipelines.fit` refuses pending rows unless asked, and the
run's record states every count, which the report prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurecache.cache import (
    SPLITS,
    STATE_STALE,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    Cache,
    Entry,
    split_rank,
)
from pipelines.rows._views import PLAIN, Variant

__all__ = [
    "RowStatus", "row_status", "fit_rows", "features_digest", "SPLIT_ORDER", "REMOVED", "STALE",
]  # fmt: skip

#: Each split's rank in the one split order (:data:`featurecache.cache.SPLITS`).
SPLIT_ORDER = {name: rank for rank, name in enumerate(SPLITS)}
#: The status of a removed sample's row here (not a status the cache stores).
REMOVED = -1
#: The status of a stale row here: superseded by a newer row of the same sample.
STALE = -2


@dataclass(frozen=True)
class RowStatus:
    """The status of every sample row of one ``(model, layer)``.

    Attributes
    ----------
    model, layer : str
    status : ndarray of shape (n_samples,), int8
        ``STATUS_OK``, ``STATUS_FAILED``, ``STATUS_PENDING``, :data:`REMOVED` or
        :data:`STALE` per row.
    """

    model: str
    layer: str
    status: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        return self.status == STATUS_OK

    def counts(self) -> dict[str, int]:
        """``{"ok": n, "failed": n, "pending": n, "removed": n, "stale": n}`` over every row,
        as :meth:`featurecache.cache.Cache.counts` counts them."""
        return {
            "ok": int(np.sum(self.status == STATUS_OK)),
            "failed": int(np.sum(self.status == STATUS_FAILED)),
            "pending": int(np.sum(self.status == STATUS_PENDING)),
            "removed": int(np.sum(self.status == REMOVED)),
            "stale": int(np.sum(self.status == STALE)),
        }

    def by_split(self, splits: np.ndarray) -> dict[str, dict[str, int]]:
        """:meth:`counts` of each split (``""``: rows without a split), train, val, test first."""
        names = sorted(set(splits.tolist()), key=split_rank)
        return {
            name: RowStatus(self.model, self.layer, self.status[splits == name]).counts()
            for name in names
        }


def row_status(cache: Cache, entry: Entry) -> RowStatus:
    """The status of each row of ``entry``, read through the cache's public reader.

    A complete entry costs nothing; one with failed rows only reads the failure list; one
    with pending rows reads the row indices of its ok rows (and so its features once).
    """
    removed = cache.removed
    status = np.full(cache.n_samples, STATUS_OK, dtype=np.int8)
    status[removed] = REMOVED
    status[cache.state == STATE_STALE] = STALE
    if entry.n_ok == int(np.sum(~removed)):
        return RowStatus(entry.model, entry.layer, status)
    failed_ids = [sample_id for sample_id, _ in cache.failures(entry.model)]
    failed = np.isin(cache.ids, np.asarray(failed_ids, dtype=cache.ids.dtype)) & ~removed
    if entry.n_pending == 0 and int(failed.sum()) == entry.n_failed:
        status[failed] = STATUS_FAILED
        return RowStatus(entry.model, entry.layer, status)
    _, rows = cache.load_rows(entry.model, entry.layer)  # never removed or stale rows
    status[~removed] = STATUS_PENDING
    status[failed] = STATUS_FAILED
    status[rows] = STATUS_OK
    return RowStatus(entry.model, entry.layer, status)


def fit_rows(cache: Cache, status: RowStatus) -> np.ndarray:
    """The rows a fit reads: ok, labeled, not removed, in the train, val or test split."""
    return status.ok & (cache.labels >= 0) & ~cache.removed & np.isin(cache.splits, SPLITS)


def features_digest(cache: Cache, status: RowStatus, variant: Variant | None = None) -> str:
    """The digest of the exact features a fit of ``status``'s (model, layer) reads
    (:meth:`featurecache.cache.Cache.features_digest` of :func:`fit_rows`), with the
    augmented or test-time views ``variant`` uses."""
    variant = variant or Variant()
    kinds = [kind for kind, mode in (("augment", variant.views), ("tta", variant.tta))
             if mode != PLAIN]  # fmt: skip
    return cache.features_digest(status.model, status.layer, fit_rows(cache, status), kinds)
