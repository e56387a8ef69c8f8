"""Reading a cache from its folder: the sample table, each model's config and commit log.

The folder ``CACHE.h5.d/`` is the truth; the index ``CACHE.h5`` is derived from it for
plain h5py and may lag behind a running (or killed) extraction. Readers therefore take
the folder whenever a cache has one: a cache is visible from the moment its sample table
exists, and every committed shard counts from the moment its log line is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import xxhash

from featurecache.cache import _format as fmt
from featurecache.cache._config import VIEW_KINDS, FeatureConfig
from featurecache.cache._format import STATUS_FAILED, STATUS_OK
from featurecache.cache._log import ShardMeta, read_log, read_runs
from featurecache.exceptions import CacheCorruptError

__all__ = [
    "FolderView",
    "LayerSummary",
    "ShardData",
    "ShardReadError",
    "check_finite",
    "layer_order",
    "read_layer",
    "read_declared_layers",
    "read_views",
    "view_shard_data",
]

#: Files verified in this process: (path, inode, size, mtime, layer) -> SHA-256 they matched.
_VERIFIED: dict[tuple, str] = {}
#: Reads started again when a file they listed was compacted away meanwhile.
_RETRIES = 3


@dataclass(frozen=True)
class ShardData:
    """Where one layer of one committed shard lies, and its digest."""

    file: str | Path
    name: str  # as the log lists it, for messages
    start: int
    stop: int
    sha256: str
    dtype: str = "float32"
    chunks: tuple[tuple[int, int, int], ...] = ()  # (byte offset, stored bytes, rows)
    layer: str = ""
    algo: str = "sha256"  # of ``sha256``: a shard's SHA-256, a segment's xxh3-128
    #: False for a run of the file's chunks (:func:`_narrowed`): ``sha256`` is the whole
    #: file's, checked once per process by streaming every chunk.
    whole: bool = True


def shard_data(meta: ShardMeta, layer: str, parent: str) -> ShardData:
    """Where ``layer`` lies in the file ``meta`` logs; ``parent`` ends with a separator.

    Plain strings, and the log's own tuples: a ``Path`` per shard costs more than a read.
    """
    return ShardData(
        file=parent + meta.file,
        name=meta.file,
        start=meta.start,
        stop=meta.stop,
        sha256=meta.digests[layer],
        dtype=meta.dtypes.get(layer, "float32"),
        chunks=meta.chunks.get(layer, ()),
        layer=layer,
        algo=meta.digest_algo,
    )


def view_shard_data(meta: ShardMeta, kind: str, layer: str, parent: str) -> ShardData:
    """Where ``layer``'s views of ``kind`` lie in the file ``meta`` logs (see :func:`shard_data`)."""
    return ShardData(
        file=parent + meta.file,
        name=meta.file,
        start=meta.start,
        stop=meta.stop,
        sha256=meta.views[kind][layer],
        layer=layer,
        algo=meta.digest_algo,
    )


@dataclass(frozen=True)
class LayerSummary:
    """What a reader lists about one layer of a model: its width, stored dtype, attributes."""

    n_features: int
    dtype: str
    attrs: Mapping

    @classmethod
    def of_shard(cls, meta: ShardMeta, layer: str) -> LayerSummary:
        return cls(
            int(meta.n_features[layer]), meta.dtypes.get(layer, "float32"), meta.layer_attrs[layer]
        )

    @classmethod
    def of_declaration(cls, declared: Mapping) -> LayerSummary:
        attrs = {k: v for k, v in declared.items() if k not in ("n_features", "dtype")}
        return cls(int(declared["n_features"]), str(declared["dtype"]), attrs)


def read_declared_layers(index: Path, model: str) -> dict[str, dict]:
    """The layers runs of ``model`` set out to compute (``layers.json``); ``{}`` without one.

    The file only lists layers before their first commit (the log is the truth for the
    rest), so an unreadable one is taken as empty rather than refusing the cache.
    """
    try:
        declared = json.loads(fmt.layers_file(index, model).read_text())
    except (OSError, ValueError):
        return {}
    return declared if isinstance(declared, dict) else {}


def read_config(index: Path, model: str) -> FeatureConfig:
    """The model's ``config.json``: how its features were made (the cache key).

    Raises
    ------
    CacheCorruptError
        The file cannot be read or parsed.
    """
    path = fmt.config_file(index, model)
    try:
        return FeatureConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CacheCorruptError(
            f"{str(path)!r} cannot be read ({error}); it records how model {model!r} was "
            "extracted. Restore it, or extract into a new cache."
        ) from error


class FolderView:
    """The folder's answers to what a reader asks; each call reads the current files."""

    def __init__(self, index: Path, opener) -> None:
        self.index = index
        self._open = opener

    def root_attrs(self) -> dict:
        with self._open(fmt.samples_file(self.index)) as f:
            return dict(f.attrs)

    def samples_group(self):
        """An open handle on the sample table's file (a context manager)."""
        return self._open(fmt.samples_file(self.index))

    def models(self) -> list[str]:
        return fmt.model_names(self.index)

    def config(self, model: str) -> FeatureConfig:
        return read_config(self.index, model)

    def complete(self, f: h5py.File) -> bool:
        """Whether the open sample file ``f`` belongs to a whole cache of this layout: a
        folder's models are its subfolders, so any sample table is."""
        return True

    def metas(self, model: str) -> list[ShardMeta]:
        """The model's committed files, as its commit log lists them (none without a log)."""
        log = fmt.commit_log(self.index, model)
        try:
            return read_log(log) if log.exists() else []
        except (ValueError, KeyError, TypeError) as error:
            raise CacheCorruptError(
                f"the commit log of model {model!r} in {str(self.index)!r} cannot be read "
                f"({error}); re-run the same `featurecache extract` command to repair it."
            ) from error

    def layers(self, model: str) -> dict[str, LayerSummary]:
        """Each layer of the model: committed ones as their first shard records them, and
        those a run set out to compute and has not committed yet (every row pending)."""
        found: dict[str, LayerSummary] = {}
        for layer, declared in read_declared_layers(self.index, model).items():
            try:
                found[layer] = LayerSummary.of_declaration(declared)
            except (KeyError, TypeError, ValueError):
                continue  # a declaration only lists a layer early; the log is the truth
        committed: set[str] = set()
        for meta in self.metas(model):
            for layer in meta.layers:
                if layer not in committed:
                    committed.add(layer)
                    found[layer] = LayerSummary.of_shard(meta, layer)
        return found

    def status(self, model: str, layer: str, n_samples: int) -> np.ndarray:
        status = np.zeros(n_samples, dtype=np.int8)
        for meta in self._holding(model, layer):
            status[meta.start : meta.stop] = meta.status
        return status

    def shards(self, model: str, layer: str) -> list[ShardData]:
        parent = os.path.join(str(self.index.parent), "")
        return [shard_data(meta, layer, parent) for meta in self._holding(model, layer)]

    def range_parts(self, model: str, layer: str) -> list:
        """Each committed row range holding ``layer``, as its shard's commit recorded it
        (rows, SHA-256 of the layer and of its views): the same before and after compaction."""
        return [part for meta in self._holding(model, layer) for part in meta.ranges()]

    def range_digests(self, model: str, layer: str) -> list[tuple[int, int, str]]:
        """``(start, stop, sha256)`` of each of :meth:`range_parts`."""
        return [(p.start, p.stop, p.digests[layer]) for p in self.range_parts(model, layer)]

    def view_shards(self, model: str, layer: str, kind: str) -> list[ShardData]:
        """The shards holding ``layer``'s views of ``kind``, with those views' SHA-256."""
        parent = os.path.join(str(self.index.parent), "")
        return [
            view_shard_data(meta, kind, layer, parent)
            for meta in self._holding(model, layer)
            if layer in meta.views.get(kind, {})
        ]

    def provenance(self, model: str, layer: str, summary: LayerSummary) -> dict:
        """What a reader reports of a layer: the model's configuration as the index's model
        group records it, its runs, then the layer's attributes."""
        runs = read_runs(fmt.run_log(self.index, model))
        return {**config_provenance(self.config(model)), **runs, **plain_attrs(summary.attrs)}

    def view_mapping(self, model: str) -> dict:
        return dict(self.config(model).views)

    def read(
        self, model: str, layer: str, n_features: int, keep: np.ndarray, force: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The kept rows of a layer (see :func:`read_layer`).

        A file that compaction replaced after the log was read is gone when it is read: the
        log then lists its segment, so the read starts again from the log.

        Raises
        ------
        CacheCorruptError
            Naming the first file that cannot be read or does not match its digest.
        """
        for attempt in range(_RETRIES + 1):
            try:
                return read_layer(self.shards(model, layer), n_features, keep, force=force)
            except ShardReadError as error:
                if attempt == _RETRIES or os.path.exists(error.shard.file):
                    raise corrupt(model, layer, error.shard, error.what) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def read_views(
        self, model: str, layer: str, kind: str, removed: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(X, rows)]`` per file: the views of ``kind`` of the rows whose every view is ok."""
        found = []
        for shard in self.view_shards(model, layer, kind):
            if removed[shard.start : shard.stop].all():
                continue  # nothing wanted here: the file is not read
            try:
                status, values = read_views(shard, kind, self._open)
            except ShardReadError as error:
                raise corrupt(model, layer, error.shard, error.what) from error
            keep = np.all(status == STATUS_OK, axis=1) & ~removed[shard.start : shard.stop]
            found.append((values[keep], shard.start + np.flatnonzero(keep)))
        return found

    def failures(self, model: str) -> list[tuple[int, str]]:
        found: dict[int, str] = {}
        for meta in self.metas(model):
            for row, reason in meta.reasons:
                found.setdefault(row, reason)
        return sorted(found.items())

    def _holding(self, model: str, layer: str) -> list[ShardMeta]:
        """The shards holding ``layer``, one per shard index (the first logged wins)."""
        seen, found = set(), []
        for meta in self.metas(model):
            if layer in meta.layers and not seen.intersection(meta.shards):
                seen.update(meta.shards)
                found.append(meta)
        return found


def verify(
    shard: ShardData, data: np.ndarray, stat: os.stat_result | None = None, *, force: bool = False
) -> str | None:
    """``None`` if ``data`` matches the shard's SHA-256 (checked once per file and process).

    Otherwise the digest found. A file is known by path, inode, size and modification
    time (``stat``, taken on the descriptor ``data`` was read from, else now): shard files
    are never written again, so a change means damage.
    """
    stat = os.stat(shard.file) if stat is None else stat
    key = _verified_key(shard, stat)
    if not force and _VERIFIED.get(key) == shard.sha256:
        return None
    digest = bytes_digest(memoryview(np.ascontiguousarray(data)).cast("B"), shard.algo)
    if digest != shard.sha256:
        return digest
    _VERIFIED[key] = digest
    return None


def bytes_digest(data, algo: str = "sha256") -> str:
    """The hex digest a commit log records of a file's layer: SHA-256 for a shard file,
    xxh3-128 for a segment (checked at memory speed; each original shard's SHA-256 stays
    in the segment's log line)."""
    if algo == "xxh3_128":
        return xxhash.xxh3_128_hexdigest(data)
    return hashlib.sha256(data).hexdigest()


def read_views(shard: ShardData, kind: str, opener) -> tuple[np.ndarray, np.ndarray]:
    """The status ``(n_rows, n_views)`` and the views ``(n_rows, n_views, n_features)`` of
    ``shard.layer`` in one shard file, after checking their SHA-256 (once per process).

    Raises
    ------
    ShardReadError
        The file cannot be read, or the views do not match their digest.
    """
    try:
        with opener(shard.file) as g:
            status = g[fmt.shard_view_status_path(kind)][:]
            values = np.ascontiguousarray(g[fmt.shard_views_path(kind, shard.layer)][:])
    except (OSError, KeyError) as error:
        raise ShardReadError(shard, f"its {kind} views cannot be read ({error})") from error
    rows = shard.stop - shard.start
    if status.shape[0] != rows or values.shape[:2] != status.shape:
        raise ShardReadError(
            shard, f"its {kind} views have shape {values.shape}, their status {status.shape}"
        )
    digest = verify(replace(shard, layer=f"{kind}:{shard.layer}"), values)
    if digest is not None:
        raise ShardReadError(
            shard,
            f"the SHA-256 of the {kind} views of layer {shard.layer!r} is {digest[:12]}…, the "
            f"commit log records {shard.sha256[:12]}…",
        )
    return status, values


def decode(value):
    """HDF5 attribute value -> plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [decode(v) for v in value.tolist()]
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def config_provenance(config: FeatureConfig) -> dict:
    """The provenance a reader reports for a model: as the index's model group records it."""
    return config.attrs()


def plain_attrs(attrs: Mapping) -> dict:
    return {k: decode(v) for k, v in attrs.items() if k != "dtype_stored"}


def layer_order(attrs: Mapping[str, Mapping]) -> list[str]:
    """Layer names from input to output: by ``depth`` (layers without one last), then
    ``depth_index``, then name. ``attrs[name]`` holds the layer's attributes."""

    def key(name: str) -> tuple:
        depth, index = attrs[name].get("depth"), attrs[name].get("depth_index")
        return (depth is None, float(depth or 0.0), int(index or 0), name)

    return sorted(attrs, key=key)


def check_finite(X: np.ndarray, name: str, path: Path) -> None:
    """Raise :class:`CacheCorruptError` if a row of ``X``, read as ok, holds NaN or Inf.

    Rows marked ok must hold numbers; NaN means the index and the data disagree.
    """
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise CacheCorruptError(
            f"{int(bad.sum())} rows of {name} in {str(path)!r} are marked ok but hold NaN or "
            "Inf; re-run the same `featurecache extract` command to recompute them."
        )


def corrupt(model: str, layer: str, shard: ShardData, what: str) -> CacheCorruptError:
    """The one message for a damaged file: which, how, and how to recompute it."""
    return CacheCorruptError(
        f"shard file {str(shard.file)!r} of {model}/{layer} is corrupt: {what}; delete "
        f"{str(shard.file)!r} and re-run the same `featurecache extract` command to "
        "recompute it."
    )


class ShardReadError(Exception):
    """One shard could not be read or does not match its digest (``what`` says how)."""

    def __init__(self, shard: ShardData, what: str) -> None:
        super().__init__(what)
        self.shard, self.what = shard, what


def read_layer(
    shards: list[ShardData],
    n_features: int,
    keep: np.ndarray,
    *,
    force: bool = False,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows of one layer over ``shards``, as float32, with their row numbers.

    ``keep`` is a boolean mask over every row of the cache. Only shards holding a kept
    row are read; each one straight into one buffer (no copy per chunk), its SHA-256
    checked once per file and process (``force``: again). Reads and digests run on
    ``threads`` threads (default: one per CPU, at most 8): both release the GIL.

    Raises
    ------
    ShardReadError
        For the first shard (in row order) that cannot be read or does not match.
    """
    if keep.all():
        chosen = list(shards)
    else:  # of a large file (a segment), only the chunks around the kept rows are read
        chosen = [_narrowed(s, keep, n_features, force) for s in _holding_kept(shards, keep)]
    buffer, offsets = read_stored(chosen, n_features, force=force, threads=threads)
    rows = _row_numbers(chosen, offsets)
    mask = keep[rows] if isinstance(rows, np.ndarray) else keep[rows.start : rows.stop]
    rows = np.arange(rows.start, rows.stop) if isinstance(rows, range) else rows
    if mask.all():
        return buffer.astype(np.float32, copy=False), rows
    return buffer[mask].astype(np.float32, copy=False), rows[mask]


def read_stored(
    shards: list[ShardData], n_features: int, *, force: bool = False, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``shards`` in their stored dtype, one after the other, with the offset
    of each shard's first row in the buffer (and the total last).

    Raises
    ------
    ShardReadError
        For the first shard (in the given order) that cannot be read or does not match.
    """
    dtype = np.dtype(shards[0].dtype) if shards else np.dtype(np.float32)
    offsets = np.cumsum([0] + [s.stop - s.start for s in shards])
    buffer = np.empty((int(offsets[-1]), n_features), dtype=dtype)
    jobs = [(s, buffer[offsets[i] : offsets[i + 1]]) for i, s in enumerate(shards)]

    def fill_all(group) -> list[ShardReadError | None]:
        return [_fill(shard, out, n_features, force) for shard, out in group]

    n_threads = min(threads or min(os.cpu_count() or 1, 8), len(jobs))
    if n_threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        # One task per thread over a run of consecutive shards: a task per shard costs more
        # than reading a small shard.
        bounds = np.linspace(0, len(jobs), n_threads + 1).astype(int)
        groups = [jobs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        with ThreadPoolExecutor(n_threads) as pool:
            errors = [error for found in pool.map(fill_all, groups) for error in found]
    else:
        errors = fill_all(jobs)
    for error in errors:  # in row order: the first shard that failed is reported
        if error is not None:
            raise error
    return buffer, offsets


def _holding_kept(shards: list[ShardData], keep: np.ndarray) -> list[ShardData]:
    """The shards with at least one kept row (one vectorised pass over ``keep``)."""
    starts = np.fromiter((s.start for s in shards), dtype=np.int64, count=len(shards))
    stops = np.fromiter((s.stop for s in shards), dtype=np.int64, count=len(shards))
    kept = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    return [shards[i] for i in np.flatnonzero(kept[stops] > kept[starts])]


def _row_numbers(shards: list[ShardData], offsets: np.ndarray) -> np.ndarray | range:
    """The row numbers of the shards' rows, in buffer order: a ``range`` when the shards
    follow each other (the usual case), else one vectorised pass."""
    starts = np.fromiter((s.start for s in shards), dtype=np.int64, count=len(shards))
    if len(shards) and np.array_equal(starts - offsets[:-1], np.full(len(shards), starts[0])):
        return range(int(starts[0]), int(starts[0] + offsets[-1]))
    return np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(
        starts - offsets[:-1], np.diff(offsets)
    )


def _narrowed(shard: ShardData, keep: np.ndarray, n_features: int, force: bool) -> ShardData:
    """``shard`` cut down to the run of its chunks that holds its kept rows, once the whole
    file is verified; ``shard`` itself when every chunk is needed.

    A window of a streamed layer reads its rows, not the whole segment around them.
    """
    if len(shard.chunks) < 2:
        return shard
    rows = np.array([c[2] for c in shard.chunks], dtype=np.int64)
    bounds = shard.start + np.concatenate([[0], np.cumsum(rows)])
    kept = np.concatenate([[0], np.cumsum(keep[shard.start : shard.stop], dtype=np.int64)])
    holding = np.flatnonzero(kept[bounds[1:] - shard.start] > kept[bounds[:-1] - shard.start])
    first, last = int(holding[0]), int(holding[-1])
    if first == 0 and last == len(rows) - 1:
        return shard
    _verify_whole(shard, n_features, force)
    return replace(
        shard, start=int(bounds[first]), stop=int(bounds[last + 1]),
        chunks=shard.chunks[first : last + 1], whole=False,
    )  # fmt: skip


def _verify_whole(shard: ShardData, n_features: int, force: bool) -> None:
    """Check a file's digest by streaming its chunks (once per file and process)."""
    stat = os.stat(shard.file)
    key = _verified_key(shard, stat)
    if not force and _VERIFIED.get(key) == shard.sha256:
        return
    digest = xxhash.xxh3_128() if shard.algo == "xxh3_128" else hashlib.sha256()
    row_bytes = n_features * np.dtype(shard.dtype).itemsize
    try:
        with open(shard.file, "rb") as handle:
            for offset, _size, rows in shard.chunks:
                handle.seek(offset)
                data = handle.read(rows * row_bytes)
                if len(data) != rows * row_bytes:
                    raise ValueError(f"truncated file: chunk at byte {offset} is cut short")
                digest.update(data)
    except (OSError, ValueError) as error:
        raise ShardReadError(shard, f"it cannot be read ({error})") from error
    found = digest.hexdigest()
    if found != shard.sha256:
        raise ShardReadError(
            shard,
            f"the digest of layer {shard.layer!r} is {found[:12]}…, the commit log records "
            f"{shard.sha256[:12]}…",
        )
    _VERIFIED[key] = found


def _verified_key(shard: ShardData, stat: os.stat_result) -> tuple:
    return (str(shard.file), stat.st_ino, stat.st_size, stat.st_mtime_ns, shard.layer)


def _fill(shard: ShardData, out: np.ndarray, n_features: int, force: bool) -> ShardReadError | None:
    """Read one shard's layer into ``out`` and check it; return the error instead of raising."""
    try:
        stat = _read_into(shard, out, n_features)
    except (OSError, ValueError) as error:
        return ShardReadError(shard, f"it cannot be read ({error})")
    if not shard.whole:  # verified whole by _narrowed: the file must be the one it verified
        if _VERIFIED.get(_verified_key(shard, stat)) != shard.sha256:
            return ShardReadError(shard, "it changed while it was read")
        return None
    digest = verify(shard, out, stat, force=force)
    if digest is not None:
        return ShardReadError(
            shard,
            f"the SHA-256 of layer {shard.layer!r} is {digest[:12]}…, the commit log records "
            f"{shard.sha256[:12]}…",
        )
    return None


def _read_into(shard: ShardData, out: np.ndarray, n_features: int) -> os.stat_result:
    """Read the shard's chunks straight into ``out``; return the file's status as read."""
    row_bytes = n_features * out.dtype.itemsize
    view = memoryview(out.reshape(-1).view(np.uint8))
    at = 0
    fd = os.open(shard.file, os.O_RDONLY)
    try:
        for offset, size, rows in shard.chunks:
            wanted = rows * row_bytes
            if (size - 4) % row_bytes or wanted > size - 4:
                raise ValueError(f"chunk at byte {offset} does not hold {rows} rows")
            scratch = bytearray(size - wanted)  # padding of an edge chunk, and the checksum
            got = os.preadv(fd, [view[at : at + wanted], scratch], offset)
            if got != size:
                raise ValueError(f"truncated file: chunk at byte {offset} is cut short")
            at += wanted
        stat = os.fstat(fd)
    finally:
        os.close(fd)
    if at != len(view):
        raise ValueError(f"the log lists {at // row_bytes} rows in chunks for {len(out)} rows")
    return stat


# -- shard files read without their log line (recovery, caches without a log) -----------


def read_shard_meta(path: Path, base: Path, opener: Callable) -> ShardMeta:
    try:
        return _read_shard_meta(path, base, opener)
    except (OSError, KeyError, ValueError) as error:
        raise CacheCorruptError(
            f"shard file {str(path)!r} cannot be read ({error}); delete it and re-run the same "
            "`featurecache extract` command to recompute it."
        ) from error


def _read_shard_meta(path: Path, base: Path, opener: Callable) -> ShardMeta:
    with opener(path) as f:
        layers = tuple(json.loads(f.attrs["layers"]))
        status = f["status"][:]
        failed = np.flatnonzero(status == STATUS_FAILED)
        reasons = f["reason"].asstr()[failed] if len(failed) else []
        start = int(f.attrs["start"])
        versions = {
            k: str(v)
            for k, v in f.attrs.items()
            if k.endswith("_version") and k != "format_version"
        }
        layer_attrs, n_features, digests, dtypes, chunks = {}, {}, {}, {}, {}
        for layer in layers:
            dataset = f[fmt.shard_features_path(layer)]
            attrs = {k: v for k, v in dataset.attrs.items() if k != "sha256"}
            layer_attrs[layer] = {**attrs, **versions, "dtype_stored": str(dataset.dtype)}
            n_features[layer] = int(dataset.shape[1])
            digests[layer] = str(dataset.attrs["sha256"])
            dtypes[layer] = str(dataset.dtype)
            chunks[layer] = chunk_table(dataset)
        views = {
            kind: {
                layer: str(f[fmt.shard_views_path(kind, layer)].attrs["sha256"]) for layer in layers
            }
            for kind in VIEW_KINDS
            if fmt.shard_view_status_path(kind) in f
        }
        return ShardMeta(
            file=os.path.relpath(path, base),
            shard=int(f.attrs["shard"]),
            start=start,
            stop=int(f.attrs["stop"]),
            layers=layers,
            n_features=n_features,
            digests=digests,
            layer_attrs=layer_attrs,
            status=status,
            reasons=tuple((start + int(i), str(r)) for i, r in zip(failed, reasons, strict=True)),
            config_digest=str(f.attrs.get("config_digest", "")),
            dtypes=dtypes,
            chunks=chunks,
            size=path.stat().st_size,
            views=views,
        )


def chunk_table(dataset: h5py.Dataset) -> tuple[tuple[int, int, int], ...]:
    """``(byte offset, stored bytes, rows)`` of each chunk of a 2-D dataset, in row order."""
    n_rows = dataset.shape[0]
    table = []
    for i in range(dataset.id.get_num_chunks()):
        info = dataset.id.get_chunk_info(i)
        first = int(info.chunk_offset[0])
        rows = min(dataset.chunks[0], n_rows - first)
        table.append((first, int(info.byte_offset), int(info.size), rows))
    return tuple((offset, size, rows) for _, offset, size, rows in sorted(table))
