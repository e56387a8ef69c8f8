"""The rows of one layer or feature set that a fit reads, and how they split.

:class:`LayerData` holds them in memory: the fitting rows (``train``, plus ``val`` when
hyper-parameters are chosen on it) with their selection splits, and the test rows, with
the augmented and test-time views a :class:`~pipelines.rows._views.Variant` asks for.
:func:`streamed_rows` names the same rows without their features, for a layer fitted out
of core (:mod:`pipelines.fitting._ooc`). Both read exactly the rows the plan counted ok
(:func:`pipelines.rows._rows.fit_rows`), even if more were committed since.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from featurecache.cache import Cache, Entry
from featurecache.cache._format import SPLITS
from featurecache.exceptions import InvalidArgumentError
from pipelines.fitting._ooc import FitRows
from pipelines.fitting._plan import Plan
from pipelines.heads._search import stratified_splits
from pipelines.results._feature_sets import FeatureSet, load_set_rows
from pipelines.rows._rows import fit_rows
from pipelines.rows._views import PLAIN, Variant, expand_splits, expand_views

__all__ = ["LayerData", "TestRows", "rows_held", "streamed_rows"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerData:
    """The rows of one layer a fit uses: the fitting rows with their selection splits,
    and the test rows.

    With views, ``X_fit`` holds the plain view of every fitting row first (row ``i`` is
    sample ``fit_samples[i]``), then the other views; ``splits`` are grouped by sample.
    With TTA, ``tta_views[j]`` holds the test-time views of test row ``tta_positions[j]``.
    """

    X_fit: np.ndarray
    y_fit: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    X_test: np.ndarray
    y_test: np.ndarray
    ids_test: np.ndarray
    counts: dict[str, int]
    train_rows: np.ndarray  # rows of X_fit in the train split: the pool of few-shot draws
    fit_samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test_samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tta_views: np.ndarray | None = None
    tta_positions: np.ndarray | None = None

    @classmethod
    def load(
        cls, cache: Cache, plan: Plan, entry: Entry, variant: Variant | None = None
    ) -> LayerData:
        """The plain rows, with the views and test-time views ``variant`` asks for."""
        data = cls._load_plain(cache, plan, entry)
        variant = variant or Variant()
        if variant.views != PLAIN:
            data = data._with_views(cache, entry)
        if variant.tta != PLAIN:
            data = data._with_tta(cache, entry)
        return data

    @classmethod
    def _load_plain(cls, cache: Cache, plan: Plan, entry: Entry) -> LayerData:
        # Exactly the rows the combination's key names (features_digest), even if more rows
        # were committed since the plan (an extraction still running, --allow-partial).
        if isinstance(entry, FeatureSet):
            wanted = np.logical_and.reduce(
                [fit_rows(cache, plan.rows[part.model, part.layer]) for part in entry.parts]
            )
            X, rows = load_set_rows(cache, entry, wanted)
        else:
            wanted = fit_rows(cache, plan.rows[entry.model, entry.layer])
            X, rows = cache.load_rows(entry.model, entry.layer, wanted)
        y, ids, split = cache.labels[rows], cache.ids[rows], cache.splits[rows]
        fitting, test = _is_fitting(plan, split), split == "test"
        return cls(
            X_fit=X[fitting],
            y_fit=y[fitting],
            splits=_selection_splits(plan, entry, split[fitting], y[fitting]),
            X_test=X[test],
            y_test=y[test],
            ids_test=ids[test],
            counts=_counts(split, entry),
            train_rows=np.flatnonzero(split[fitting] == "train"),
            fit_samples=rows[fitting],
            test_samples=rows[test],
        )

    def _with_views(self, cache: Cache, entry: Entry) -> LayerData:
        """Every augmented view of the fitting rows that have them, folds grouped by sample."""
        views, positions = _views_of(
            cache, entry, "augment", self.fit_samples,
            "training rows have no augmented views (failed or pending): they train on their "
            "plain view only",
        )  # fmt: skip
        X, y, groups = expand_views(self.X_fit, self.y_fit, views, positions)
        return dataclasses.replace(
            self, X_fit=X, y_fit=y, splits=expand_splits(self.splits, groups)
        )

    def _with_tta(self, cache: Cache, entry: Entry) -> LayerData:
        """The test-time views of the test rows that have them."""
        views, positions = _views_of(
            cache, entry, "tta", self.test_samples,
            "test rows have no test-time views (failed or pending): they are scored on their "
            "plain view",
        )  # fmt: skip
        return dataclasses.replace(self, tta_views=views, tta_positions=positions)


def _views_of(
    cache: Cache, entry: Entry, kind: str, samples: np.ndarray, missing_text: str
) -> tuple[np.ndarray, np.ndarray]:
    """The ``kind`` views of those of ``samples`` that have them, and their positions in
    ``samples``; how many have none is logged (``"%d " + missing_text``)."""
    views, rows = cache.load_views(entry.model, entry.layer, kind)
    positions, found = _positions(samples, rows)
    missing = len(samples) - int(found.sum())
    if missing:
        logger.info("%s/%s: %d " + missing_text, entry.model, entry.layer, missing)
    return views[found], positions[found]


def _positions(samples: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``rows`` (sample indices), its position in ``samples`` and whether it is
    there at all."""
    order = np.argsort(samples, kind="stable")
    at = np.minimum(np.searchsorted(samples, rows, sorter=order), max(len(samples) - 1, 0))
    positions = order[at] if len(samples) else np.zeros(len(rows), np.int64)
    found = samples[positions] == rows if len(samples) else np.zeros(len(rows), bool)
    return positions, found


def _selection_splits(plan: Plan, entry: Entry, split: np.ndarray, y: np.ndarray) -> list:
    """The (train, score) index pairs candidates are compared on: the val split, or CV folds."""
    if not plan.uses_val:
        return stratified_splits(y, plan.cv, plan.seed)
    is_val = split == "val"
    if not is_val.any() or is_val.all():
        raise InvalidArgumentError(
            f"{entry.model}/{entry.layer}: no ok rows left in train or val; re-run "
            "`featurecache extract`."
        )
    return [(np.flatnonzero(~is_val), np.flatnonzero(is_val))]


def rows_held(cache: Cache, plan: Plan, entry: Entry) -> int:
    """The rows an in-memory fit of ``entry`` holds: every labeled ok row, times its views."""
    status = plan.rows[(entry.model, entry.layer)]
    labeled = (cache.labels >= 0) & status.ok & np.isin(cache.splits, SPLITS)
    variant = plan.variant(entry.model)
    fitting = labeled & (cache.splits != "test")
    return int(labeled.sum() + fitting.sum() * (variant.n_views - 1)
               + (labeled & ~fitting).sum() * (variant.n_tta - 1))  # fmt: skip


class TestRows(NamedTuple):
    """What a record needs of the test rows when the layer is streamed."""

    ids_test: np.ndarray
    y_test: np.ndarray
    counts: dict[str, int]
    rows: np.ndarray


def streamed_rows(cache: Cache, plan: Plan, entry: Entry) -> tuple[FitRows, TestRows]:
    """The fitting rows and the test rows of ``entry``, as :meth:`LayerData.load` takes them,
    without their features."""
    status = plan.rows[(entry.model, entry.layer)]
    labeled = (cache.labels >= 0) & ~cache.removed & status.ok
    split = cache.splits
    rows = np.flatnonzero(labeled & _is_fitting(plan, split))
    y = cache.labels[rows]
    splits = _selection_splits(plan, entry, split[rows], y)
    test_rows = np.flatnonzero(labeled & (split == "test"))
    fitting_rows = FitRows(rows, y, split[rows] == "val", splits)
    test = TestRows(
        cache.ids[test_rows], cache.labels[test_rows], _counts(split[labeled], entry), test_rows
    )
    return fitting_rows, test


def _is_fitting(plan: Plan, split: np.ndarray) -> np.ndarray:
    """Which of the rows of ``split`` a head is fitted on: ``train``, and ``val`` when
    candidates are compared on it."""
    return (split == "train") | (split == "val") if plan.uses_val else split == "train"


def _counts(split: np.ndarray, entry: Entry) -> dict[str, int]:
    """The ``n_train``, ``n_val``, ``n_test`` and ``n_features`` columns of a record whose
    rows have the splits ``split``."""
    return {
        "n_train": int(np.sum(split == "train")),
        "n_val": int(np.sum(split == "val")),
        "n_test": int(np.sum(split == "test")),
        "n_features": int(entry.n_features),
    }
