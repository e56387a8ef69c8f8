"""The sample table of a cache, and how it follows a dataset that grows and changes.

A sample is identified by its content (:func:`content_digest`), never by its name: rows
are never renumbered and a row's features are never rewritten. Each run compares the
dataset with the table (:meth:`SampleTable.reconcile`):

- same id and same content: the same row (its label and split follow the data);
- content whose digest matches a row whose id is gone, or whose own content moved away:
  that row moves to the new id, with its features (one to one);
- anything else is a new row, appended; a row whose content changed is retired as
  ``stale`` (excluded by every reader) and its sample gets the new row;
- a row whose id is no longer in the dataset is marked ``removed``.

The layout (format 2, fixed-width columns) is in ``docs/cache-format.md``; a version-1
table is read by the version-1 adapter (:func:`featurecache.cache._legacy.read_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import h5py
import numpy as np
import xxhash

from featurecache.cache import _format as fmt
from featurecache.cache._identity import (
    DIGEST_SIZE,
    NO_DIGEST,
    RACY_NS,
    UNREADABLE,
    content_digest,
    file_digest,
    now_ns,
    stat_files,
)
from featurecache.cache._source import ARRAYS
from featurecache.exceptions import InvalidArgumentError

__all__ = [
    "STATE_LIVE",
    "STATE_REMOVED",
    "STATE_STALE",
    "STATE_NAMES",
    "SampleChanges",
    "SampleColumns",
    "SampleTable",
    "SplitSpec",
    "check_aligned",
    "read_samples",
    "write_samples",
]

#: Row states, in ``/samples/state``.
STATE_LIVE, STATE_REMOVED, STATE_STALE = 0, 1, 2
STATE_NAMES = {STATE_LIVE: "live", STATE_REMOVED: "removed", STATE_STALE: "stale"}
_EMPTY_DIGEST = content_digest(b"")


@dataclass(frozen=True)
class SplitSpec:
    """How a table's splits were made: ``given`` by the data (split folders, a split column,
    a built-in's own), ``random`` (stratified, of ``fraction``, seeded), or ``none``."""

    kind: str = "given"
    fraction: float = 0.0
    seed: int = 0

    def describe(self) -> str:
        if self.kind == "random":
            return f"random:{self.fraction:g} with seed {self.seed}"
        return "the data's own splits" if self.kind == "given" else "no split"

    def assign(self, ids: Sequence[str]) -> np.ndarray:
        """Splits of new samples under a stored random split, from the seed and each id
        alone: adding samples never moves an existing one."""
        limit = self.fraction * 2.0**64
        return np.array(
            [
                "test" if xxhash.xxh3_64_intdigest(f"{self.seed}:{i}".encode()) < limit else "train"
                for i in ids
            ],
            dtype=object,
        )


@dataclass(frozen=True)
class SampleChanges:
    """How a dataset differs from a cache's sample table (rows of the table, ids of the dataset)."""

    added: tuple[str, ...] = ()
    removed: tuple[int, ...] = ()
    relabelled: tuple[int, ...] = ()
    moved: tuple[tuple[int, str], ...] = ()  # (row, new id): the same content under a new id
    restored: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()  # rows retired as stale: their sample's content changed
    retried: tuple[int, ...] = ()  # failed rows retired on request, computed again
    #: Rows whose stat or digest columns were refreshed (no change to any sample).
    refreshed: int = field(default=0, compare=False)

    def __bool__(self) -> bool:
        return any(
            (self.added, self.removed, self.relabelled, self.moved, self.restored, self.changed,
             self.retried)
        )  # fmt: skip

    def describe(self) -> str:
        """``3 changed content, 1 moved, 2 new samples`` (or ``no change``)."""
        parts = [
            (len(self.changed), "changed content"),
            (len(self.retried), "failed retried"),
            (len(self.moved), "moved"),
            (len(self.added), "new"),
            (len(self.removed), "removed"),
            (len(self.relabelled), "relabelled or re-split"),
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
    """The samples of a cache: one id, label, split, state and content digest per row.

    The one sample-table type: the cache stores it (:func:`write_samples`), the reader
    exposes it (``Cache.samples``), and a stage-1 dataset is one plus a way to load each
    sample (``featurecache.Dataset.samples``), so :meth:`from_dataset` takes one.
    Rows are never deleted: a row of a sample no longer in the dataset is ``removed``, a
    row whose sample's content changed is ``stale`` (see :data:`STATE_NAMES`); both keep
    their features and are left out of every read.

    Attributes
    ----------
    ids, labels, splits : ndarray of shape (n_samples,)
        Ids (str), label indices into ``class_names`` (int64, ``-1``: none) and split names
        (``""``: none; :meth:`ordered_splits` lists them in their one order).
    class_names : tuple of str
    source : str
        Where the samples came from: a :class:`featurecache.cache.DataSource` string, or a
        name of the caller's for samples built in memory.
    state : ndarray of shape (n_samples,), int8, optional
        ``STATE_*`` codes; ``None`` means every row is live.
    digests : ndarray of shape (n_samples, 16), uint8, optional
        :func:`content_digest` of each row's content; zeros where never hashed.
    stats : ndarray of shape (n_samples, 4), int64, optional
        ``size, mtime_ns, ctime_ns, inode`` of each row's file when it was last checked
        (-1: unknown, or not a file); ``stat_time_ns`` is when.
    split : SplitSpec
        How the splits were made; later runs keep it.
    starts : ndarray, optional
        Where each shard starts, once the dataset has grown (else every ``shard_size``).
    """

    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...]
    source: str = ARRAYS
    state: np.ndarray | None = None
    digests: np.ndarray | None = field(default=None, repr=False)
    stats: np.ndarray | None = field(default=None, repr=False)
    stat_time_ns: int = 0
    split: SplitSpec = SplitSpec()
    starts: np.ndarray | None = None
    shard_size: int = 0

    def __post_init__(self) -> None:
        check_aligned(self.ids, self.labels, self.splits)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def state_codes(self) -> np.ndarray:
        """``STATE_*`` of each row, int8 (computed once: readers ask for it per call)."""
        if self.state is None:
            return np.full(len(self), STATE_LIVE, dtype=np.int8)
        return np.asarray(self.state, dtype=np.int8)

    @cached_property
    def removed_mask(self) -> np.ndarray:
        """Rows left out of every read: removed samples and stale rows."""
        return self.state_codes != STATE_LIVE

    def ordered_splits(self) -> list[str]:
        """The split names the rows have, in the one order (``_format.split_rank``)."""
        return sorted(set(np.asarray(self.splits).tolist()), key=fmt.split_rank)

    @property
    def samples_digest(self) -> str:
        """SHA-256 of ids, labels, splits (a retired row's split counts as its state) and
        content digests."""
        splits = np.asarray(self.splits, dtype=object)
        state = self.state_codes
        if np.any(state != STATE_LIVE):
            names = np.array([STATE_NAMES[k] for k in sorted(STATE_NAMES)], dtype=object)
            splits = np.where(state != STATE_LIVE, names[state], splits).astype(object)
        return fmt.samples_digest(self.ids, self.labels, splits, self.digests)

    def shard_ranges(self) -> list[tuple[int, int]]:
        """``[start, stop)`` of every shard, in shard order."""
        n = len(self)
        if self.starts is None:
            size = max(1, self.shard_size)
            return [(start, min(start + size, n)) for start in range(0, n, size)]
        starts = [int(s) for s in self.starts]
        return list(zip(starts, [*starts[1:], n], strict=True))

    @classmethod
    def from_dataset(cls, dataset, shard_size: int = 0) -> SampleTable:
        """The table of a new cache: every sample hashed, every file stat'ed."""
        if isinstance(dataset, SampleTable):
            return dataset
        stat_time = now_ns()
        stats = _stats(dataset)
        return cls(
            ids=np.asarray(dataset.ids, dtype=object),
            labels=np.asarray(dataset.labels, dtype=np.int64),
            splits=np.asarray(dataset.splits, dtype=object),
            class_names=tuple(dataset.class_names),
            source=dataset.source,
            state=np.zeros(len(dataset), np.int8),
            digests=_digests(dataset, range(len(dataset))),
            stats=stats,
            stat_time_ns=stat_time,
            split=getattr(dataset, "split_spec", SplitSpec()),
            shard_size=int(shard_size),
        )

    def reconcile(
        self,
        dataset,
        *,
        verify: bool = False,
        retry: Sequence[int] = (),
        keep_splits: bool = False,
    ) -> tuple[SampleTable, SampleChanges]:
        """This table brought up to ``dataset``, and what changed (see the module docstring).

        Files whose stat matches their row (and was not racy when recorded) are not read;
        the others, new ids, arrays and, with ``verify``, every file are hashed.

        Parameters
        ----------
        dataset : Dataset
            ``ids``, ``labels``, ``splits``, ``class_names``, ``source``, and ``paths`` or
            ``arrays``.
        verify : bool
            Hash every file, whatever its stat.
        retry : sequence of int
            Live rows to retire and compute again as new rows (failed rows, on request).
        keep_splits : bool
            A moved row keeps its stored split (a stored random split never moves a row).
        """
        n, ids = len(self), [str(i) for i in np.asarray(dataset.ids).tolist()]
        state, names = self.state_codes, list(dataset.class_names)
        stat_time = now_ns()
        stats = _stats(dataset)
        kept = np.flatnonzero(state != STATE_STALE)  # at most one such row per id
        row_of = dict(zip(self.ids[kept].astype(str).tolist(), kept.tolist(), strict=True))
        cand = np.array([row_of.get(i, -1) for i in ids], dtype=np.int64)
        has = cand >= 0
        old_digests = np.zeros((n, DIGEST_SIZE), np.uint8) if self.digests is None else self.digests
        unknown = has & ~old_digests[np.maximum(cand, 0)].any(axis=1)  # never hashed: trusted
        need = ~has | unknown | verify
        if stats is None or self.stats is None:
            need[:] = True
        else:
            old = self.stats[np.maximum(cand, 0)]
            racy = has & (old[:, 1] >= self.stat_time_ns - RACY_NS)
            need |= np.any(old != stats, axis=1) | racy | (stats[:, 0] < 0)
        digests = np.zeros((len(ids), DIGEST_SIZE), np.uint8)
        digests[has] = old_digests[cand[has]]
        hashed = np.flatnonzero(need)
        digests[hashed] = _digests(dataset, hashed)
        retry_rows = {int(r) for r in retry}
        same = has & (unknown | np.all(digests == old_digests[np.maximum(cand, 0)], axis=1))
        same &= ~np.isin(cand, list(retry_rows))
        claimed = {int(r): i for i, r in zip(np.flatnonzero(same), cand[same], strict=True)}
        moves = self._moves(ids, digests, np.flatnonzero(~same), claimed, retry_rows)
        table_ids = self.ids.astype(object).copy()
        labels, splits = self.labels.astype(np.int64).copy(), self.splits.astype(object).copy()
        new_state, new_digests = state.copy(), old_digests.copy()
        new_stats = np.full((n, 4), -1, np.int64) if self.stats is None else self.stats.copy()
        classes = list(self.class_names)
        classes += sorted({names[k] for k in dataset.labels if k >= 0} - set(classes))
        index = {name: k for k, name in enumerate(classes)}
        remap = np.array([index[name] for name in names] + [-1], dtype=np.int64)
        their_labels = remap[np.asarray(dataset.labels, dtype=np.int64)]  # -1 indexes the -1
        their_splits = np.asarray(dataset.splits, dtype=object)
        id_array = np.array(ids, dtype=object)
        # Rows kept by their own id: vectorised, as a re-run of millions of unchanged files is.
        mine = np.flatnonzero(same)
        rows = cand[mine]
        restored = rows[state[rows] == STATE_REMOVED].tolist()
        differs = (labels[rows] != their_labels[mine]) | (splits[rows] != their_splits[mine])
        relabelled = rows[differs & (state[rows] != STATE_REMOVED)].tolist()
        moved_rows = np.array(sorted(moves), dtype=np.int64)
        moved_from = np.array([moves[r] for r in moved_rows.tolist()], dtype=np.int64)
        for targets, sources, keep in ((rows, mine, False), (moved_rows, moved_from, keep_splits)):
            table_ids[targets] = id_array[sources]
            labels[targets] = their_labels[sources]
            if not keep:
                splits[targets] = their_splits[sources]
            new_state[targets], new_digests[targets] = STATE_LIVE, digests[sources]
            if stats is not None:
                new_stats[targets] = stats[sources]
        taken = np.zeros(n, bool)
        taken[rows], taken[moved_rows] = True, True
        is_fresh = ~same
        is_fresh[moved_from] = False
        fresh = np.flatnonzero(is_fresh)
        changed, retried = [], []
        superseded = cand[fresh]
        superseded = superseded[(superseded >= 0) & ~taken[np.maximum(superseded, 0)]]
        for row in superseded.tolist():
            new_state[row] = STATE_STALE
            if state[row] == STATE_LIVE:
                (retried if row in retry_rows else changed).append(row)
        left = np.flatnonzero((state == STATE_LIVE) & ~taken & (new_state == STATE_LIVE))
        present = np.isin(self.ids[left].astype(str), id_array.astype(str))
        removed = left[~present].tolist()
        new_state[removed] = STATE_REMOVED
        # Its sample's content moved to another row, and no file holds this row's content now.
        new_state[left[present]] = STATE_STALE
        changed += left[present].tolist()
        added = [ids[i] for i in fresh.tolist() if cand[i] < 0 or state[cand[i]] != STATE_LIVE]
        n_size = max(1, self.shard_size)
        starts = [s for s, _ in self.shard_ranges()] + list(range(n, n + len(fresh), n_size))
        table = SampleTable(
            ids=np.concatenate([table_ids, id_array[fresh]]),
            labels=np.concatenate([labels, their_labels[fresh]]),
            splits=np.concatenate([splits, their_splits[fresh]]),
            class_names=tuple(classes),
            source=getattr(dataset, "source", self.source),
            state=np.concatenate([new_state, np.zeros(len(fresh), np.int8)]),
            digests=np.concatenate([new_digests, digests[fresh].reshape(-1, DIGEST_SIZE)]),
            stats=None
            if stats is None
            else np.concatenate([new_stats, stats[fresh].reshape(-1, 4)]),
            stat_time_ns=stat_time,
            split=getattr(dataset, "split_spec", self.split),
            starts=np.asarray(starts, dtype=np.int64),
            shard_size=self.shard_size,
        )
        # Racy rows were hashed again but are not rewritten: a cache hit writes nothing.
        refreshed = int(
            np.any(new_stats != self._stats, axis=1).sum()
            + np.any(new_digests != old_digests, axis=1).sum()
        )
        changes = SampleChanges(
            added=tuple(added),
            removed=tuple(removed),
            relabelled=tuple(relabelled),
            moved=tuple((row, ids[i]) for row, i in sorted(moves.items())),
            restored=tuple(restored),
            changed=tuple(sorted(changed)),
            retried=tuple(sorted(retried)),
            refreshed=refreshed,
        )
        return table, changes

    @property
    def _stats(self) -> np.ndarray:
        return np.full((len(self), 4), -1, np.int64) if self.stats is None else self.stats

    def _moves(
        self,
        ids: list[str],
        digests: np.ndarray,
        unmatched: np.ndarray,
        claimed: dict[int, int],
        retry: set[int],
    ) -> dict[int, int]:
        """``row -> dataset index`` of content found again under another id, one to one.

        A row can move when it is not claimed by its own id, is not stale, and its digest is
        known (an unreadable or empty file never counts as a move). A row of the same file
        name is preferred, then the lowest row.
        """
        if self.digests is None or not len(unmatched):
            return {}
        wanted = {digests[i].tobytes() for i in unmatched.tolist()}
        wanted -= {NO_DIGEST, UNREADABLE, _EMPTY_DIGEST}
        if not wanted:
            return {}
        # Rows whose digest's first 8 bytes match one sought, found without a loop over rows.
        heads = np.ascontiguousarray(self.digests).view("<u8")[:, 0]
        sought = np.array([np.frombuffer(d[:8], "<u8")[0] for d in wanted], dtype=np.uint64)
        free = np.isin(heads, sought) & (self.state_codes != STATE_STALE)
        free[list(claimed)] = False
        free[list(retry)] = False
        by_digest: dict[bytes, list[int]] = {}
        for r in np.flatnonzero(free).tolist():
            key = self.digests[r].tobytes()
            if key in wanted:
                by_digest.setdefault(key, []).append(r)
        moves: dict[int, int] = {}
        for i in unmatched.tolist():
            rows = by_digest.get(digests[i].tobytes())
            if not rows:
                continue
            named = [r for r in rows if _name(str(self.ids[r])) == _name(ids[i])]
            row = (named or rows)[0]
            rows.remove(row)
            moves[row] = i
        return moves


class SampleColumns:
    """The columns of a sample table, read as attributes of what holds it in ``samples``
    (the reader, a stage-1 dataset)."""

    samples: SampleTable

    @property
    def ids(self) -> np.ndarray:
        return self.samples.ids

    @property
    def labels(self) -> np.ndarray:
        """Index into ``class_names`` of each row; ``-1``: no label."""
        return self.samples.labels

    @property
    def splits(self) -> np.ndarray:
        """The split of each row (``""``: none)."""
        return self.samples.splits

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.samples.class_names

    @property
    def source(self) -> str:
        """Where the samples came from: a :class:`~featurecache.cache.DataSource` string
        (``folder:/abs/root``, ``builtin:digits``...), ``""`` if unknown."""
        return self.samples.source


def _paths(dataset) -> np.ndarray | None:
    return getattr(dataset, "paths", None)


def _stats(dataset) -> np.ndarray | None:
    """The stat columns of the dataset's samples: its files' stat, the stamps its samples
    give (objects: size, ETag or time), or None (every digest is known or hashed)."""
    paths, members = _paths(dataset), getattr(dataset, "members", None)
    if paths is not None:
        return stat_files(paths)
    return None if members is None else members.stats()


def _digests(dataset, rows) -> np.ndarray:
    """``(len(rows), 16)`` content digests of the dataset's samples ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), DIGEST_SIZE), np.uint8)
    paths, arrays = _paths(dataset), getattr(dataset, "arrays", None)
    members = getattr(dataset, "members", None)  # tar shards, parquet: hashed when scanned
    found_in_members = members.content_digests(rows.tolist()) if members is not None else ()
    for k, row in enumerate(rows.tolist()):
        if paths is not None:
            found = file_digest(paths[row])
        elif members is not None:
            found = found_in_members[k] or NO_DIGEST
        elif arrays is not None:
            found = content_digest(arrays[row])
        else:
            found = NO_DIGEST
        out[k] = np.frombuffer(found, np.uint8)
    return out


def _name(sample_id: str) -> str:
    return sample_id.rsplit("/", 1)[-1]


# -- the layout ------------------------------------------------------------------------


def _encode_ids(ids) -> np.ndarray:
    """Ids as fixed-length UTF-8 bytes, as wide as the longest: one memory copy to read."""
    values = np.asarray(ids).astype(str)
    width = max(1, int(np.char.str_len(values).max())) if values.size else 1
    try:
        return values.astype(f"S{width}")
    except UnicodeEncodeError:
        return np.array([v.encode() for v in values.tolist()], dtype=np.bytes_)


def _decode_ids(raw: np.ndarray) -> np.ndarray:
    """Fixed-length bytes to a unicode array: ASCII by widening each byte (no per-row work)."""
    width = raw.dtype.itemsize
    codes = raw.view(np.uint8).reshape(len(raw), width)
    if codes.size and codes.max() >= 128:
        return np.array([v.decode() for v in raw.tolist()], dtype=str)
    return codes.astype(np.uint32).view(f"U{width}").reshape(len(raw))


def _codes(values: np.ndarray, names: Sequence[str]) -> np.ndarray:
    index = {name: k for k, name in enumerate(names)}
    return np.array([index[v] for v in np.asarray(values, dtype=object).tolist()], dtype=np.int8)


def split_names(splits) -> tuple[str, ...]:
    """The split-name table: ``""`` and :data:`SPLITS` in their order, then any other name."""
    found = set(np.asarray(splits, dtype=object).tolist())
    return ("", *fmt.SPLITS, *sorted(found - {"", *fmt.SPLITS}))


def write_samples(f: h5py.File, table) -> None:
    """``/samples`` of ``table`` (a :class:`SampleTable` or a dataset) into an open file,
    format 2: fixed-width and categorical columns."""
    table = SampleTable.from_dataset(table) if not isinstance(table, SampleTable) else table
    n = len(table)
    f.create_dataset(fmt.sample_path("ids"), data=_encode_ids(table.ids))
    labels = np.asarray(table.labels, dtype=np.int64)
    small = np.int16 if len(table.class_names) < np.iinfo(np.int16).max else np.int32
    f.create_dataset(fmt.sample_path("labels"), data=labels.astype(small))
    names = split_names(table.splits)
    splits = f.create_dataset(fmt.sample_path("splits"), data=_codes(table.splits, names))
    splits.attrs["names"] = np.array(names, dtype=object)
    f.create_dataset(fmt.sample_path("state"), data=table.state_codes)
    digests = np.zeros((n, DIGEST_SIZE), np.uint8) if table.digests is None else table.digests
    f.create_dataset(fmt.sample_path("digest"), data=np.asarray(digests, np.uint8))
    stats = table._stats
    for k, name in enumerate(fmt.STAT_FIELDS):
        f.create_dataset(fmt.sample_path(name), data=stats[:, k])
    group = f["samples"]
    group.attrs["class_names"] = np.array(table.class_names, dtype=object)
    group.attrs["root"] = table.source
    group.attrs["stat_time_ns"] = int(table.stat_time_ns)
    group.attrs["split_kind"] = table.split.kind
    group.attrs["split_fraction"] = float(table.split.fraction)
    group.attrs["split_seed"] = int(table.split.seed)


def read_samples(f: h5py.File | h5py.Group, identity: bool = True) -> SampleTable:
    """The sample table of an open cache or sample file in format 2.

    ``identity=False`` leaves out the digest and stat columns (readers need neither). A
    table of any version is read by :func:`featurecache.cache._legacy.read_table`.
    """
    group = f["samples"]
    names = [str(_text(v)) for v in np.asarray(group["splits"].attrs["names"]).tolist()]
    stats = digests = None
    if identity:
        digests = group["digest"][:]
        stats = np.stack([group[name][:] for name in fmt.STAT_FIELDS], axis=1)
    attrs = group.attrs
    return SampleTable(
        ids=_decode_ids(group["ids"][:]),
        labels=group["labels"][:].astype(np.int64),
        splits=np.array(names, dtype=str)[group["splits"][:]],
        class_names=tuple(str(_text(c)) for c in attrs["class_names"]),
        source=str(_text(attrs.get("root", ""))),
        state=group["state"][:],
        digests=digests,
        stats=stats,
        stat_time_ns=int(attrs.get("stat_time_ns", 0)),
        split=SplitSpec(
            str(_text(attrs.get("split_kind", "given"))),
            float(attrs.get("split_fraction", 0.0)),
            int(attrs.get("split_seed", 0)),
        ),
        starts=f[fmt.LAYOUT_STARTS][:] if fmt.LAYOUT_STARTS in f else None,
        shard_size=int(f.attrs.get("shard_size", max(len(group["ids"]), 1))),
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
