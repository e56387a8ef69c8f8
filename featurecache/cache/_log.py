"""The commit log of a model: what its committed shard files hold, one JSON line each.

A shard file is written first (temporary name, then renamed); it is *committed* once its
line is appended to ``CACHE.h5.d/<model>/commits.jsonl``. A commit costs one append,
whatever the number of shards already committed, and a reader learns everything it needs
(rows, layers, widths, SHA-256 digests, failed rows, where each chunk's bytes lie) from
the log without opening a shard file. A line cut short by a crash has no newline yet:
readers pass over it, and the next writer of the model cuts it off.

Compaction (:meth:`featurecache.cache.Store.compact`) appends a *segment* line: one file
that replaces several shard files (``replaces``) and keeps each one's rows and digests
(``parts``). From that line on, readers take the segment and pass over the lines of the
files it replaces, which the compacting writer then deletes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurecache.cache._atomic import atomic_write, fsync_file
from featurecache.cache._format import STATUS_FAILED, STATUS_OK

__all__ = [
    "Part",
    "ShardMeta",
    "append_log",
    "append_text",
    "read_log",
    "read_runs",
    "repair_log",
    "rewrite_log",
]

_LOG_VERSION = 1


@dataclass(frozen=True)
class ShardMeta:
    """What the index and the readers need to know about one committed shard file.

    ``chunks[layer]`` lists ``(byte offset, stored bytes, rows)`` of each HDF5 chunk of
    the layer in the file (each ends with its 4-byte Fletcher-32 checksum), so a reader
    can read the numbers without opening the file as HDF5.
    """

    file: str  # relative to the index's folder
    shard: int
    start: int
    stop: int
    layers: tuple[str, ...]
    n_features: Mapping[str, int]
    digests: Mapping[str, str]
    layer_attrs: Mapping[str, Mapping]
    status: np.ndarray = field(repr=False)
    reasons: tuple[tuple[int, str], ...]  # (row, reason) of failed rows
    config_digest: str
    dtypes: Mapping[str, str] = field(default_factory=dict)
    chunks: Mapping[str, tuple[tuple[int, int, int], ...]] = field(default_factory=dict)
    size: int = 0  # bytes of the shard file, so a cut file is seen without opening it
    #: ``views[kind][layer]``: SHA-256 of the layer's extra views of that kind (``augment``,
    #: ``tta``) as stored in the file; empty for a model without views.
    views: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: What ``digests`` are: ``sha256`` (a shard file) or ``xxh3_128`` (a segment).
    digest_algo: str = "sha256"
    #: A segment's files replaced (relative to the index's folder); empty for a shard file.
    replaces: tuple[str, ...] = ()
    #: A segment's original row ranges, one per shard: their digests survive compaction.
    parts: tuple[Part, ...] = ()

    @property
    def is_segment(self) -> bool:
        return bool(self.replaces)

    @property
    def shards(self) -> tuple[int, ...]:
        """The shard indices this file holds: one for a shard file, several for a segment."""
        return tuple(part.shard for part in self.parts) if self.parts else (self.shard,)

    def ranges(self) -> tuple[Part, ...]:
        """The original row ranges with their SHA-256 digests, compacted or not."""
        if self.parts:
            return self.parts
        return (Part(self.shard, self.start, self.stop, dict(self.digests), dict(self.views)),)

    def to_line(self) -> str:
        record = {
            "v": _LOG_VERSION,
            "file": self.file,
            "shard": self.shard,
            "start": self.start,
            "stop": self.stop,
            "layers": list(self.layers),
            "n_features": dict(self.n_features),
            self.digest_algo: dict(self.digests),
            "dtype": dict(self.dtypes),
            "chunks": {k: [list(c) for c in v] for k, v in self.chunks.items()},
            "attrs": {k: _jsonable(v) for k, v in self.layer_attrs.items()},
            "failed": [[row, reason] for row, reason in self.reasons],
            "config_digest": self.config_digest,
            "size": self.size,
        }
        if self.views:
            record["views"] = {kind: dict(digests) for kind, digests in self.views.items()}
        if self.replaces:
            record["kind"] = "segment"
            record["digest"] = self.digest_algo
            record["replaces"] = list(self.replaces)
            record["parts"] = [part.to_record() for part in self.parts]
        return json.dumps(record, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str) -> ShardMeta:
        record = json.loads(line)
        start, stop = int(record["start"]), int(record["stop"])
        reasons = tuple((int(row), str(reason)) for row, reason in record["failed"])
        status = np.full(stop - start, STATUS_OK, dtype=np.int8)
        status[[row - start for row, _ in reasons]] = STATUS_FAILED
        return cls(
            file=record["file"],
            shard=int(record["shard"]),
            start=start,
            stop=stop,
            layers=tuple(record["layers"]),
            n_features={k: int(v) for k, v in record["n_features"].items()},
            digests=dict(record[record.get("digest", "sha256")]),
            layer_attrs=dict(record["attrs"]),
            status=status,
            reasons=reasons,
            config_digest=str(record["config_digest"]),
            dtypes=dict(record.get("dtype", {})),
            chunks={
                k: tuple(tuple(int(x) for x in c) for c in v) for k, v in record["chunks"].items()
            },
            size=int(record.get("size", 0)),
            views={kind: dict(v) for kind, v in record.get("views", {}).items()},
            digest_algo=str(record.get("digest", "sha256")),
            replaces=tuple(record.get("replaces", ())),
            parts=tuple(Part.from_record(part) for part in record.get("parts", ())),
        )


@dataclass(frozen=True)
class Part:
    """One original shard's row range inside a segment, with the SHA-256 of each layer's
    rows (and of each layer's views) as that shard's commit recorded them."""

    shard: int
    start: int
    stop: int
    digests: Mapping[str, str]
    views: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def to_record(self) -> list:
        return [self.shard, self.start, self.stop, dict(self.digests), dict(self.views)]

    @classmethod
    def from_record(cls, record: list) -> Part:
        shard, start, stop, digests, *views = record
        return cls(
            int(shard), int(start), int(stop), dict(digests), dict(views[0] if views else {})
        )


def append_log(path: Path, metas: Iterable[ShardMeta]) -> None:
    """Append one line per shard and flush them to disk: the commit."""
    append_text(path, "".join(meta.to_line() for meta in metas))


def append_text(path: Path, text: str) -> None:
    """Append whole lines to a log file and flush them to disk."""
    if not text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode()
        while data:  # one write in practice; a short write continues where it stopped
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite_log(path: Path, metas: Iterable[ShardMeta]) -> None:
    """Replace the log with ``metas`` in one atomic step (recovery only)."""
    text = "".join(meta.to_line() for meta in metas)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_log(path: Path) -> list[ShardMeta]:
    """The files the log lists now, in commit order; the first line of a file wins.

    A segment takes the place of the first file it replaces, and the files it replaces
    are no longer listed. A log only grows between recoveries, so what was parsed is kept per file (and per
    inode: a recovery replaces the file) and only the lines appended since are parsed.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    with open(path, "rb") as handle:
        head = handle.read(_HEAD)
        parsed = _PARSED.get(str(path))
        if parsed is None or (parsed.inode, parsed.head) != (stat.st_ino, head[: len(parsed.head)]) \
                or parsed.offset > stat.st_size:  # fmt: skip
            parsed = _Parsed(stat.st_ino, head)
            _PARSED[str(path)] = parsed
        if stat.st_size <= parsed.offset:
            return list(parsed.metas)
        handle.seek(parsed.offset)
        tail = handle.read()
    end = tail.rfind(b"\n") + 1  # a last line without its newline is not committed yet
    for line in tail[:end].decode().splitlines():
        meta = ShardMeta.from_line(line)
        if meta.file not in parsed.seen:
            parsed.seen.add(meta.file)
            _resolve(parsed.metas, meta)
    parsed.offset += end
    if len(parsed.head) < _HEAD:
        parsed.head = head  # the head grows with the first lines: compare what was read
    return list(parsed.metas)


def _resolve(metas: list[ShardMeta], meta: ShardMeta) -> None:
    """Add ``meta`` to the listed files; a segment replaces the files it names, in place."""
    if not meta.replaces:
        metas.append(meta)
        return
    gone = set(meta.replaces)
    at = next((i for i, m in enumerate(metas) if m.file in gone), len(metas))
    metas[:] = (
        [m for m in metas[:at] if m.file not in gone]
        + [meta]
        + [m for m in metas[at:] if m.file not in gone]
    )


_HEAD = 256  # bytes compared to tell a log from another one that took its inode


@dataclass
class _Parsed:
    inode: int
    head: bytes
    offset: int = 0
    metas: list = field(default_factory=list)
    seen: set = field(default_factory=set)


_PARSED: dict[str, _Parsed] = {}


def read_runs(path: Path) -> dict:
    """Total rows and seconds of a model's extractions, and their rate (``{}`` if none)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    runs = [json.loads(line) for line in lines if line.endswith("}")]
    rows, seconds = sum(r["rows"] for r in runs), sum(r["seconds"] for r in runs)
    if not runs or seconds <= 0:
        return {}
    return {
        "extract_seconds": round(seconds, 3),
        "images_per_second": round(rows / seconds, 2),
        "extract_device": runs[-1].get("device", ""),
    }


def repair_log(path: Path) -> None:
    """Cut off a last line that a crash left without its newline (writers only)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        keep = handle.read().rfind(b"\n") + 1
        handle.truncate(keep)
    fsync_file(path)


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
