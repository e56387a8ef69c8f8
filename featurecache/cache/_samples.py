"""The sample table of a cache, and how it follows a dataset that grows and changes.

Rows are never renumbered: new samples are appended, samples no longer in the dataset are
marked removed (their features stay), changed labels and splits are updated in place, and
a file moved to another class folder keeps its row. See ``docs/cache-format.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from featurecache.cache import _format as fmt
from featurecache.exceptions import InvalidArgumentError

__all__ = ["SampleChanges", "SampleTable", "check_aligned", "write_samples"]

_STR = h5py.string_dtype()


@dataclass(frozen=True)
class SampleChanges:
    """How a dataset differs from a cache's sample table (rows of the table, ids of the dataset)."""

    added: tuple[str, ...] = ()
    removed: tuple[int, ...] = ()
    relabelled: tuple[int, ...] = ()
    moved: tuple[tuple[int, str], ...] = ()  # (row, new id): same file, new folder
    restored: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return any((self.added, self.removed, self.relabelled, self.moved, self.restored))

    def describe(self) -> str:
        parts = [
            (len(self.added), "new"),
            (len(self.removed), "removed"),
            (len(self.relabelled), "relabelled"),
            (len(self.moved), "moved to another class or split folder"),
            (len(self.restored), "restored"),
        ]
        return (
            ", ".join(f"{n} {what}" for n, what in parts if n) + " samples" if self else "no change"
        )


def check_aligned(ids, labels, splits) -> None:
    """Refuse ids, labels and splits of different lengths (one row per sample)."""
    n = len(ids)
    if not (len(labels) == len(splits) == n):
        raise InvalidArgumentError(
            f"ids, labels and splits must have the same length; got {n}, "
            f"{len(labels)} and {len(splits)}."
        )


@dataclass(frozen=True, eq=False)
class SampleTable:
    """The samples of a cache: one id, label and split per row, and the class names.

    Stage 1's datasets carry the same attributes, so :meth:`Store.create_samples` takes either.
    A cache whose dataset grew also has ``removed`` rows (kept, never deleted: row numbers
    never change), ``fingerprints`` of the image files, and the ``starts`` of its shards.
    """

    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...]
    source: str = "arrays"
    removed: np.ndarray | None = None
    fingerprints: np.ndarray | None = None
    starts: np.ndarray | None = None
    shard_size: int = 0

    def __post_init__(self) -> None:
        check_aligned(self.ids, self.labels, self.splits)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def removed_mask(self) -> np.ndarray:
        return np.zeros(len(self), bool) if self.removed is None else np.asarray(self.removed, bool)

    @property
    def samples_digest(self) -> str:
        """SHA-256 of ids, labels and splits (a removed row's split counts as ``removed``)."""
        splits = np.asarray(self.splits, dtype=object)
        if self.removed is not None and np.any(self.removed):
            splits = np.where(self.removed_mask, "removed", splits).astype(object)
        return fmt.samples_digest(self.ids, self.labels, splits)

    def shard_ranges(self) -> list[tuple[int, int]]:
        """``[start, stop)`` of every shard, in shard order."""
        n = len(self)
        if self.starts is None:
            size = max(1, self.shard_size)
            return [(start, min(start + size, n)) for start in range(0, n, size)]
        starts = [int(s) for s in self.starts]
        return list(zip(starts, [*starts[1:], n], strict=True))

    def changes_to(self, dataset) -> SampleChanges:
        """What differs between this table and ``dataset`` (ids, labels by name, splits)."""
        wanted = _rows_of(dataset)
        removed = self.removed_mask
        gone, relabelled, restored = [], [], []
        for row, sample_id in enumerate(self.ids.tolist()):
            found = wanted.get(sample_id)
            if found is None:
                if not removed[row]:
                    gone.append(row)
                continue
            if removed[row]:
                restored.append(row)
            elif (self._label_name(row), str(self.splits[row])) != found[:2]:
                relabelled.append(row)
        known = set(self.ids.tolist())
        new = [i for i in wanted if i not in known]
        moved = self._moves(gone, new, wanted)
        taken_rows, taken_ids = {r for r, _ in moved}, {i for _, i in moved}
        return SampleChanges(
            added=tuple(i for i in new if i not in taken_ids),
            removed=tuple(r for r in gone if r not in taken_rows),
            relabelled=tuple(relabelled),
            moved=tuple(moved),
            restored=tuple(restored),
        )

    def updated_to(self, dataset) -> SampleTable:
        """This table brought up to ``dataset``: rows appended, removed, relabelled, moved."""
        changes = self.changes_to(dataset)
        wanted = _rows_of(dataset)
        names = list(self.class_names)
        names += sorted({w[0] for w in wanted.values() if w[0] and w[0] not in names})
        index = {name: k for k, name in enumerate(names)}
        ids, labels = self.ids.copy(), self.labels.copy()
        splits, removed = self.splits.copy(), self.removed_mask.copy()
        prints = (
            self.fingerprints.copy()
            if self.fingerprints is not None
            else np.full(len(self), "", dtype=object)
        )
        moved_to = dict(changes.moved)
        for row, sample_id in enumerate(self.ids.tolist()):
            current = moved_to.get(row, sample_id)
            found = wanted.get(current)
            if found is None:
                removed[row] = True
                continue
            ids[row], removed[row] = current, False
            labels[row] = index[found[0]] if found[0] else -1
            splits[row], prints[row] = found[1], found[2]
        added = list(changes.added)
        n_old, size = len(self), max(1, self.shard_size)
        starts = [s for s, _ in self.shard_ranges()] + list(range(n_old, n_old + len(added), size))
        return SampleTable(
            ids=np.concatenate([ids, np.array(added, dtype=object)]).astype(object),
            labels=np.concatenate(
                [labels, [index[wanted[i][0]] if wanted[i][0] else -1 for i in added]]
            ).astype(np.int64),
            splits=np.concatenate([splits, [wanted[i][1] for i in added]]).astype(object),
            class_names=tuple(names),
            source=getattr(dataset, "source", self.source),
            removed=np.concatenate([removed, np.zeros(len(added), bool)]),
            fingerprints=np.concatenate([prints, [wanted[i][2] for i in added]]).astype(object),
            starts=np.asarray(starts, dtype=np.int64),
            shard_size=self.shard_size,
        )

    def _label_name(self, row: int) -> str:
        label = int(self.labels[row])
        return self.class_names[label] if label >= 0 else ""

    def _moves(self, gone: list[int], new: list[str], wanted: dict) -> list[tuple[int, str]]:
        """Pair a removed row and a new id with the same file name and fingerprint."""
        if self.fingerprints is None:
            return []
        by_key: dict[tuple, list[str]] = {}
        for sample_id in new:
            if wanted[sample_id][2]:
                by_key.setdefault((_name(sample_id), wanted[sample_id][2]), []).append(sample_id)
        moves = []
        for row in gone:
            key = (_name(str(self.ids[row])), str(self.fingerprints[row]))
            if key[1] and len(by_key.get(key, ())) == 1:
                moves.append((row, by_key.pop(key)[0]))
        return moves


def _rows_of(dataset) -> dict[str, tuple[str, str, str]]:
    """``id -> (class name or "", split, fingerprint or "")`` of a dataset."""
    names = list(dataset.class_names)
    prints = getattr(dataset, "fingerprints", None)
    return {
        str(sample_id): (
            names[int(label)] if int(label) >= 0 else "",
            str(split),
            "" if prints is None else str(prints[i]),
        )
        for i, (sample_id, label, split) in enumerate(
            zip(
                dataset.ids.tolist(),
                np.asarray(dataset.labels).tolist(),
                dataset.splits.tolist(),
                strict=True,
            )  # fmt: skip
        )
    }


def _name(sample_id: str) -> str:
    return sample_id.rsplit("/", 1)[-1]


def write_samples(f: h5py.File, table) -> None:
    """``/samples`` of ``table`` (a :class:`SampleTable` or a dataset) into an open file."""
    f.create_dataset(fmt.sample_path("ids"), data=np.asarray(table.ids, dtype=object), dtype=_STR)
    f.create_dataset(fmt.sample_path("labels"), data=np.asarray(table.labels, dtype=np.int64))
    f.create_dataset(
        fmt.sample_path("splits"), data=np.asarray(table.splits, dtype=object), dtype=_STR
    )
    removed = getattr(table, "removed", None)
    if removed is not None:
        f.create_dataset(fmt.sample_path("removed"), data=np.asarray(removed, dtype=np.int8))
    prints = getattr(table, "fingerprints", None)
    if prints is not None:
        f.create_dataset(
            fmt.sample_path("fingerprint"), data=np.asarray(prints, dtype=object), dtype=_STR
        )
    group = f["samples"]
    group.attrs["class_names"] = np.array(table.class_names, dtype=object)
    group.attrs["root"] = table.source
