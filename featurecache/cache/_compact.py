"""Compaction: a model's committed shard files packed into a few large segment files.

A run commits one small file per shard; reading thousands of them pays a cost per file.
At the end of a run the shards of each pass are packed, in row order, into segments of
about :data:`SEGMENT_BYTES`. Each step leaves a cache that reads the same:

1. the segment is written under a temporary name and renamed into place (a segment the
   log does not list is litter: the next writer removes it);
2. one line is appended to the commit log: "segment S replaces files a..b", with the
   rows, failures and per-layer digests of S and each replaced shard's own row range and
   SHA-256 digests (``parts``), so a layer's feature digest is unchanged by compaction;
3. the replaced files are deleted (a file a kill left behind is deleted by the next writer);
4. the log is rewritten without the replaced files' lines (a new file renamed over it).

A reader takes the segment from the moment its line is written; one that listed the old
files just before reads the log again if a file it listed is gone.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from featurecache import __version__
from featurecache.cache import _format as fmt
from featurecache.cache._atomic import atomic_write, fsync_dir, new_h5
from featurecache.cache._folder import (
    bytes_digest,
    chunk_table,
    read_stored,
    read_views,
    shard_data,
    view_shard_data,
)
from featurecache.cache._log import ShardMeta, append_log, read_log, rewrite_log
from featurecache.cache._shard_file import STR_DTYPE, create_chunked

__all__ = ["SEGMENT_BYTES", "compact_model", "plan_segments", "remove_litter", "remove_replaced"]

#: Bytes of shard files packed into one segment, at most (a segment is built in memory).
SEGMENT_BYTES = 128 << 20
_DIGEST = "xxh3_128"


def compact_model(index: Path, model: str, opener: Callable, *, target: int | None = None) -> int:
    """Pack the model's committed shard files into segments; return how many were written.

    The caller holds the model's writer lock, and has recovered its log.
    """
    log = fmt.commit_log(index, model)
    written = 0
    for group in plan_segments(read_log(log), target or SEGMENT_BYTES):
        meta = write_segment(index, model, group, opener)
        append_log(log, [meta])
        remove_replaced(index.parent, meta.replaces)
        written += 1
    if written:  # drop the replaced files' lines: readers parse the segments' lines only
        rewrite_log(log, read_log(log))
    return written


def plan_segments(metas: Sequence[ShardMeta], target: int = SEGMENT_BYTES) -> list[list[ShardMeta]]:
    """Runs of at least two files of one pass, consecutive in rows, of at most ``target``
    bytes together (a file already that large stays as it is).

    A file holding a layer of a shard that another logged file also holds is left alone:
    readers take the first one logged, and compaction must not change which.
    """
    held = Counter((shard, layer) for m in metas for shard in m.shards for layer in m.layers)
    groups: dict[tuple, list[ShardMeta]] = {}
    for meta in metas:
        if all(held[shard, layer] == 1 for shard in meta.shards for layer in meta.layers):
            groups.setdefault(_kind(meta), []).append(meta)
    runs: list[list[ShardMeta]] = []
    for members in groups.values():
        run: list[ShardMeta] = []
        size = 0
        for meta in sorted(members, key=lambda m: m.start):
            follows = (
                run and meta.start == run[-1].stop and meta.shards[0] == run[-1].shards[-1] + 1
            )
            if run and (not follows or size + meta.size > target):
                runs.append(run)
                run, size = [], 0
            run.append(meta)
            size += meta.size
        runs.append(run)
    return [run for run in runs if len(run) > 1]


def _kind(meta: ShardMeta) -> tuple:
    """Files that may share a segment: the same pass folder, layers, dtypes and views."""
    views = tuple(sorted((kind, tuple(sorted(v))) for kind, v in meta.views.items()))
    return (
        os.path.dirname(meta.file), meta.layers, tuple(sorted(meta.dtypes.items())), views,
        meta.config_digest,
    )  # fmt: skip


def write_segment(
    index: Path, model: str, group: Sequence[ShardMeta], opener: Callable
) -> ShardMeta:
    """Write the segment of ``group`` (checking every file's digest as it is read) and
    return its commit-log line."""
    base = index.parent
    parent = os.path.join(str(base), "")
    first, last = group[0], group[-1]
    start, stop = first.start, last.stop
    final = base / os.path.dirname(first.file) / fmt.segment_name(first.shards[0], last.shards[-1])
    status = np.concatenate([np.asarray(m.status, np.int8) for m in group])
    failed = [(row, reason) for m in group for row, reason in m.reasons]
    reasons = np.full(stop - start, "", dtype=object)
    for row, reason in failed:
        reasons[row - start] = reason
    digests: dict[str, str] = {}
    chunks: dict[str, tuple] = {}
    views: dict[str, dict[str, str]] = {}

    def write(tmp: Path) -> None:
        with new_h5(tmp) as f:
            f.attrs.update(
                start=start, stop=stop, shard=first.shards[0], model=model,
                shards=json.dumps([s for m in group for s in m.shards]),
                layers=json.dumps(list(first.layers)), config_digest=first.config_digest,
                kind="segment", featurecache_version=__version__,
            )  # fmt: skip
            f.create_dataset("rows", data=np.arange(start, stop, dtype=np.int64))
            f.create_dataset("status", data=status)
            f.create_dataset("reason", data=reasons, dtype=STR_DTYPE)
            for layer in first.layers:
                shards = [shard_data(m, layer, parent) for m in group]
                values, _ = read_stored(shards, first.n_features[layer])
                digests[layer] = _write(f, fmt.shard_features_path(layer), values)
            for kind in sorted(first.views):
                views[kind] = _write_views(f, kind, group, base, opener)
            f.flush()  # the file image's layout is final: record where each chunk lies
            chunks.update(
                {layer: chunk_table(f[fmt.shard_features_path(layer)]) for layer in first.layers}
            )

    atomic_write(final, write)
    return ShardMeta(
        file=os.path.relpath(final, base), shard=first.shards[0], start=start, stop=stop,
        layers=first.layers, n_features=dict(first.n_features), digests=digests,
        layer_attrs=first.layer_attrs, status=status, reasons=tuple(failed),
        config_digest=first.config_digest, dtypes=dict(first.dtypes), chunks=chunks,
        size=final.stat().st_size, views=views, digest_algo=_DIGEST,
        replaces=tuple(m.file for m in group),
        parts=tuple(part for m in group for part in m.ranges()),
    )  # fmt: skip


def _write(f: h5py.File, path: str, values: np.ndarray) -> str:
    """One array of a segment, chunked by about 1 MiB with Fletcher-32; its digest."""
    dataset = create_chunked(f, path, values)
    digest = bytes_digest(memoryview(np.ascontiguousarray(values)).cast("B"), _DIGEST)
    dataset.attrs[_DIGEST] = digest
    return digest


def _write_views(f: h5py.File, kind: str, group, base: Path, opener) -> dict[str, str]:
    """The group's views of one kind, read (and checked) file by file; their digests."""
    layers = list(group[0].views[kind])
    parts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    statuses = []
    for meta in group:
        for i, layer in enumerate(layers):
            shard = view_shard_data(meta, kind, layer, os.path.join(str(base), ""))
            status, values = read_views(shard, kind, opener)
            parts[layer].append(values)
            if i == 0:
                statuses.append(status)
    f.create_dataset(fmt.shard_view_status_path(kind), data=np.concatenate(statuses))
    return {
        layer: _write(f, fmt.shard_views_path(kind, layer), np.concatenate(parts[layer]))
        for layer in layers
    }


def remove_replaced(base: Path, files: Sequence[str]) -> None:
    """Delete files a logged segment replaces (those already gone are skipped)."""
    folders = set()
    for name in files:
        path = base / name
        path.unlink(missing_ok=True)
        folders.add(path.parent)
    for folder in folders:
        fsync_dir(folder)


def remove_litter(index: Path, model: str, metas: Sequence[ShardMeta]) -> None:
    """After a crash: delete the files logged segments replace, and segments never logged.

    A segment is logged before the files it replaces are deleted, so a segment the log
    does not list was cut off before its commit, and the files it would replace are all
    still there.
    """
    base = index.parent
    remove_replaced(base, [name for meta in metas for name in meta.replaces])
    listed = {meta.file for meta in metas}
    for path in fmt.model_dir(index, model).glob(fmt.SEGMENT_GLOB):
        if fmt.TMP_MARK not in path.name and os.path.relpath(path, base) not in listed:
            path.unlink(missing_ok=True)
