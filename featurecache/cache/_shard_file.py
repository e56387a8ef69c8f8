"""One shard file: a run of rows of one model's layers, written once and never again.

See ``docs/cache-format.md``. :func:`write_shard_file` writes the file under a temporary
name in its final folder, renames it into place, and returns what the commit log records
of it (:class:`~featurecache.cache._log.ShardMeta`), taken from what was written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featurecache import __version__
from featurecache.cache import _format as fmt
from featurecache.cache._atomic import atomic_write, new_h5
from featurecache.cache._config import FeatureConfig
from featurecache.cache._folder import chunk_table
from featurecache.cache._format import STATUS_FAILED
from featurecache.cache._log import ShardMeta

__all__ = [
    "STR_DTYPE",
    "ShardContent",
    "ShardViews",
    "create_chunked",
    "sha256_of",
    "write_shard_file",
]

#: Variable-length UTF-8 strings (failure reasons, file and layer names).
STR_DTYPE = h5py.string_dtype()
#: Feature chunks hold about this many bytes (whole rows).
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ShardViews:
    """The extra views of one kind (``augment`` or ``tta``) of one shard's rows.

    Attributes
    ----------
    status : ndarray of shape (n_rows, n_views), int8
        Per (row, view): ``STATUS_OK``, ``STATUS_FAILED``, or ``STATUS_PENDING`` for a row
        that has no views of this kind (a test row's training views).
    features : mapping
        ``features[layer]`` of shape ``(n_rows, n_views, n_features)`` in the stored dtype;
        NaN where the status is not ok. View 0 is the plain view.
    """

    status: np.ndarray
    features: Mapping[str, np.ndarray] = field(repr=False)


@dataclass(frozen=True)
class ShardContent:
    """What one shard file holds: rows ``start .. start + n_rows`` of one model.

    ``features[layer]`` has shape ``(n_rows, n_features)`` in the stored dtype;
    ``provenance`` (library versions) is recorded on the file; ``views[kind]`` holds the
    rows' extra views of that kind for the same layers.
    """

    model: str
    shard: int
    start: int
    status: np.ndarray
    reasons: Sequence[str]
    features: Mapping[str, np.ndarray]
    layer_attrs: Mapping[str, Mapping]
    config: FeatureConfig
    provenance: Mapping[str, str] = field(default_factory=dict)
    views: Mapping[str, ShardViews] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(sorted(self.features))

    @property
    def versions(self) -> dict[str, str]:
        """The library versions recorded on the file and on each layer."""
        return {"featurecache_version": __version__, **dict(self.provenance)}


def write_shard_file(final: Path, base: Path, content: ShardContent) -> ShardMeta:
    """Write ``content`` atomically to ``final`` and return what its commit records.

    Parameters
    ----------
    final : Path
        The shard file's path (:func:`featurecache.cache._format.shard_file`).
    base : Path
        The folder the commit log's file names are relative to (the index's folder).
    content : ShardContent
        The rows to write.

    Returns
    -------
    ShardMeta
        The file's log record: rows, layers, SHA-256 of each layer (and view), chunk
        table, size. The shard counts once the log lists it.
    """
    chunks: dict[str, tuple] = {}
    atomic_write(final, lambda tmp: chunks.update(_write(tmp, content)))
    meta = _written_meta(final, base, content, chunks)
    digests = {
        kind: {layer: sha256_of(values) for layer, values in extra.features.items()}
        for kind, extra in content.views.items()
    }
    return dataclasses.replace(meta, views=digests) if digests else meta


def _write(tmp: Path, content: ShardContent) -> dict[str, tuple]:
    """Write the file at ``tmp``; return the chunk table of each layer as written."""
    n_rows = len(content.status)
    start = content.start
    with new_h5(tmp) as f:
        f.attrs.update(
            start=start,
            stop=start + n_rows,
            shard=content.shard,
            model=content.model,
            layers=json.dumps(content.layers),
            config_digest=content.config.digest(),
            featurecache_version=__version__,
            **dict(content.provenance),
        )
        f.create_dataset("rows", data=np.arange(start, start + n_rows, dtype=np.int64))
        f.create_dataset("status", data=np.asarray(content.status, dtype=np.int8))
        f.create_dataset("reason", data=np.asarray(content.reasons, dtype=object), dtype=STR_DTYPE)
        for layer in content.layers:
            _write_layer(f, layer, content.features[layer], content.layer_attrs[layer])
        for kind, extra in content.views.items():
            _write_views(f, kind, extra)
        f.flush()  # the file image's layout is final: record where each chunk lies
        return {layer: chunk_table(f[fmt.shard_features_path(layer)]) for layer in content.layers}


def _written_meta(
    final: Path, base: Path, content: ShardContent, chunks: Mapping[str, tuple]
) -> ShardMeta:
    """What the commit log records of a shard file just written, from what was written."""
    status = np.asarray(content.status, dtype=np.int8)
    start, features, layers = content.start, content.features, content.layers
    failed = np.flatnonzero(status == STATUS_FAILED)
    dtypes = {layer: str(np.asarray(features[layer]).dtype) for layer in layers}
    versions = content.versions
    return ShardMeta(
        file=os.path.relpath(final, base),
        shard=content.shard,
        start=start,
        stop=start + len(status),
        layers=layers,
        n_features={layer: int(np.shape(features[layer])[1]) for layer in layers},
        digests={layer: sha256_of(features[layer]) for layer in layers},
        layer_attrs={
            layer: {**dict(content.layer_attrs[layer]), **versions, "dtype_stored": dtypes[layer]}
            for layer in layers
        },
        status=status,
        reasons=tuple((start + int(i), str(content.reasons[i])) for i in failed),
        config_digest=content.config.digest(),
        dtypes=dtypes,
        chunks=dict(chunks),
        size=final.stat().st_size,
    )


def sha256_of(values: np.ndarray) -> str:
    """SHA-256 (hex) of an array's bytes in C order: what the commit log records."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def create_chunked(f: h5py.File, path: str, data: np.ndarray) -> h5py.Dataset:
    """``f[path] = data``, chunked by whole rows of about 1 MiB, with Fletcher-32 checksums."""
    row_bytes = max(1, data.itemsize * int(np.prod(data.shape[1:])))
    rows = max(1, min(len(data), _CHUNK_BYTES // row_bytes))
    return f.create_dataset(path, data=data, chunks=(rows, *data.shape[1:]), fletcher32=True)


def _write_layer(f: h5py.File, layer: str, values: np.ndarray, attrs: Mapping) -> None:
    """One layer of a shard (:func:`create_chunked`), with a SHA-256 of its bytes."""
    data = np.ascontiguousarray(values)
    dataset = create_chunked(f, fmt.shard_features_path(layer), data)
    dataset.attrs.update(dict(attrs))
    dataset.attrs["sha256"] = sha256_of(data)


def _write_views(f: h5py.File, kind: str, views: ShardViews) -> None:
    """A shard's views of one kind: a status per (row, view), and each layer's views
    (:func:`create_chunked`) with a SHA-256 of their bytes."""
    status = np.asarray(views.status, dtype=np.int8)
    f.create_dataset(fmt.shard_view_status_path(kind), data=status)
    for layer, values in views.features.items():
        data = np.ascontiguousarray(values)
        if data.ndim != 3 or data.shape[:2] != status.shape:
            raise ValueError(
                f"{kind} views of layer {layer!r} must have shape {status.shape} + (n_features,); "
                f"got {data.shape}"
            )
        dataset = create_chunked(f, fmt.shard_views_path(kind, layer), data)
        dataset.attrs["sha256"] = sha256_of(data)
