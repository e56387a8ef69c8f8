"""Embeddings in and out of a cache, in the files the retrieval tools read.

:func:`export_embeddings` writes one ``(model, layer)`` in clip-retrieval's layout, which
embedding-reader and autofaiss consume::

    OUT/img_emb/img_emb_0000.npy            (n_rows, n_features), the stored dtype
    OUT/metadata/metadata_0000.parquet      id, label, label_index, split, row

or, with ``format="parquet"``, ``OUT/img_emb/img_emb_0000.parquet`` holding the same
columns plus ``embedding``. Part ``K`` of both folders holds the same rows, in the
cache's row order; the numbers are zero-padded so that sorting the names (as
embedding-reader does) keeps that order. Every metadata file carries the provenance
(cache, model, layer, the :class:`FeatureConfig`, class names) as the parquet schema's
``featurecache`` metadata. Only usable rows are exported: those the reader returns
(computed ok, not removed; superseded rows are left out by the reader too). Memory
holds one part at a time.

:func:`import_embeddings` reads such a folder (from featurecache or elsewhere) into a
new cache under a declared :class:`FeatureConfig`, for stage 2.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache.cache._config import FeatureConfig
from featurecache.cache._format import STATUS_OK
from featurecache.cache._reader import open_cache
from featurecache.cache._samples import SampleTable
from featurecache.cache._source import DataSource
from featurecache.cache._writer import Store
from featurecache.exceptions import InvalidArgumentError, MissingExtraError

__all__ = ["export_embeddings", "import_embeddings", "ExportResult", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("npy", "parquet")
#: A part holds at most this many bytes of embeddings (the memory an export needs).
PART_BYTES = 256 << 20
#: The parquet schema metadata key holding the provenance.
META_KEY = b"featurecache"
#: What an imported layer records about itself (it was computed elsewhere).
IMPORTED_LAYER = {"depth": 1.0, "depth_index": 0, "kind": "vector", "pooling_applied": "none"}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_embeddings` wrote: ``n_rows`` rows of ``n_features`` in ``n_parts``."""

    out: Path
    n_rows: int
    n_features: int
    n_parts: int


def export_embeddings(
    cache: str | os.PathLike,
    model: str,
    layer: str,
    out: str | os.PathLike,
    *,
    format: str = "npy",
    rows_per_part: int | None = None,
) -> ExportResult:
    """Write the usable rows of one ``(model, layer)`` as embedding files (module docstring).

    Parameters
    ----------
    cache : str or path
    model, layer : str
        Names as ``featurecache ls CACHE`` lists them.
    out : str or path
        A folder that does not exist yet (or is empty); written whole or not at all.
    format : {"npy", "parquet"}
        ``npy``: clip-retrieval's ``img_emb/*.npy`` with ``metadata/*.parquet``;
        ``parquet``: ``img_emb/*.parquet`` with an ``embedding`` column beside the metadata.
    rows_per_part : int, optional
        Rows per file; by default as many as fit in ``PART_BYTES`` (256 MiB).

    Returns
    -------
    ExportResult

    Raises
    ------
    UnknownNameError
        An unknown model or layer.
    InvalidArgumentError
        ``out`` is a file or a folder that is not empty; a bad ``format``.
    """
    from featurecache.core._validation import check_choice, check_optional_int

    check_choice(format, "format", "export_embeddings", EXPORT_FORMATS)
    check_optional_int(rows_per_part, "rows_per_part", "export_embeddings", low=1)
    reader = open_cache(cache)
    entry = reader.entry(model, layer)  # unknown names raise here, with suggestions
    out = _check_out(out)
    dtype = np.dtype(entry.dtype)
    step = rows_per_part or max(1, PART_BYTES // max(1, entry.n_features * 4))
    most = max(1, -(-entry.n_ok // step))  # parts at most: a reader may leave out more rows
    width = max(4, len(str(most - 1)))
    provenance = _provenance(reader, entry, cache)
    pq = _pyarrow()
    with _staging(out) as stage:
        written = 0
        for part, (X, rows) in enumerate(_parts(reader, model, layer, step, entry.n_features)):
            name = f"{part:0{width}d}"
            table = _metadata(reader, rows, provenance)
            if format == "npy":
                np.save(stage / "img_emb" / f"img_emb_{name}.npy", X.astype(dtype, copy=False))
                pq.write_table(table, stage / "metadata" / f"metadata_{name}.parquet")
            else:
                table = _with_embedding(table, X.astype(dtype, copy=False))
                pq.write_table(table, stage / "img_emb" / f"img_emb_{name}.parquet")
            written += len(rows)
    return ExportResult(out, written, entry.n_features, part + 1)


def _parts(
    reader, model: str, layer: str, step: int, n_features: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The usable rows in order, ``step`` at a time (at most two parts in memory); one empty
    part when there are none."""
    pending_X = [np.zeros((0, n_features), np.float32)]
    pending_rows = [np.zeros(0, np.int64)]
    held, yielded = 0, False
    window = np.zeros(reader.n_samples, dtype=bool)
    for start in range(0, reader.n_samples, step):
        window[:] = False
        window[start : start + step] = True
        X, rows = reader.load_rows(model, layer, window)
        pending_X.append(X)
        pending_rows.append(rows)
        held += len(rows)
        while held >= step:
            X, rows = np.concatenate(pending_X), np.concatenate(pending_rows)
            yield X[:step], rows[:step]
            yielded = True
            pending_X, pending_rows, held = [X[step:]], [rows[step:]], len(rows) - step
    if held or not yielded:
        yield np.concatenate(pending_X), np.concatenate(pending_rows)


def _provenance(reader, entry, cache) -> dict:
    """What the metadata files record: where the numbers come from, and the class names."""
    config = {k: v for k, v in entry.provenance.items() if isinstance(v, (str, int, float, bool))}
    return {
        "cache": str(Path(cache).resolve()),
        "source": reader.source,
        "model": entry.model,
        "layer": entry.layer,
        "n_features": entry.n_features,
        "dtype": entry.dtype,
        "class_names": list(reader.class_names),
        "samples_digest": reader.samples_digest,
        "config": config,
    }


def _metadata(reader, rows: np.ndarray, provenance: dict):
    import pyarrow as pa

    labels = reader.labels[rows]
    names = np.array([*reader.class_names, ""], dtype=object)[labels]  # -1: the ""
    table = pa.table({
        "id": pa.array(reader.ids[rows].tolist(), pa.string()),
        "label": pa.array([n if n else None for n in names.tolist()], pa.string()),
        "label_index": pa.array(labels, pa.int64()),
        "split": pa.array(reader.splits[rows].tolist(), pa.string()),
        "row": pa.array(rows, pa.int64()),
    })  # fmt: skip
    return table.replace_schema_metadata({META_KEY: json.dumps(provenance).encode()})


def _with_embedding(table, X: np.ndarray):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(X).reshape(-1))
    column = (
        pa.FixedSizeListArray.from_arrays(flat, X.shape[1])
        if X.size
        else pa.array([], pa.list_(pa.from_numpy_dtype(X.dtype), max(1, X.shape[1])))
    )
    metadata = table.schema.metadata
    return table.append_column("embedding", column).replace_schema_metadata(metadata)


def _check_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "a folder that is not empty"
        raise InvalidArgumentError(
            f"out must be a new or empty folder; {str(out)!r} is {what}; pass another folder."
        )
    if not out.parent.is_dir():
        raise InvalidArgumentError(
            f"out must be a folder in an existing folder; {str(out.parent)!r} does not exist."
        )
    return out


class _staging:
    """A temporary folder beside ``out`` (``img_emb/``, ``metadata/``), renamed to ``out``
    once complete: an export is whole or absent."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __enter__(self) -> Path:
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        (self.stage / "img_emb").mkdir()
        (self.stage / "metadata").mkdir()
        return self.stage

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            return
        if not any((self.stage / "metadata").iterdir()):
            (self.stage / "metadata").rmdir()  # the parquet format holds it in img_emb/
        if self.out.is_dir():
            self.out.rmdir()  # empty, as checked
        os.replace(self.stage, self.out)


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError(
            "embedding files need pyarrow; install it with pip install 'featurecache[parquet]'."
        ) from None
    return pq


# -- import -------------------------------------------------------------------------------


def import_embeddings(
    folder: str | os.PathLike,
    cache: str | os.PathLike,
    *,
    config: FeatureConfig | None = None,
    model: str | None = None,
    layer: str | None = None,
    shard_size: int = 1024,
) -> Path:
    """Bring embeddings computed elsewhere into a new cache, for stage 2.

    Parameters
    ----------
    folder : str or path
        An export of :func:`export_embeddings` (either format), or clip-retrieval's
        ``img_emb/*.npy`` with ``metadata/*.parquet`` holding ``id`` (or ``image_path``),
        and optionally ``label`` (class names) and ``split`` columns.
    cache : str or path
        The new cache's index file (``.h5``); its folder must exist.
    config : FeatureConfig, optional
        What computed the numbers: the cache key of the imported model. Defaults to the
        one a featurecache export records; required for other embeddings.
    model, layer : str, optional
        Their names in the cache; the export's, else ``imported`` and ``embedding``.
    shard_size : int
        Rows per shard file.

    Returns
    -------
    Path
        The cache's index.

    Raises
    ------
    InvalidArgumentError
        A folder without embeddings, metadata misaligned with them, no ``config`` for
        embeddings that do not record one, or a cache that already exists.
    """
    from featurecache.core._validation import ParameterError, check_int

    check_int(shard_size, "shard_size", "import_embeddings", low=1)
    parts = _import_parts(Path(folder))
    provenance = _read_provenance(parts[0][1])
    if config is None:
        try:
            config = FeatureConfig.from_dict(provenance.get("config") or {})
        except (KeyError, TypeError, ValueError):
            raise ParameterError(
                "config", "import_embeddings",
                "the FeatureConfig of embeddings that do not record one", config,
                "Declare what computed them (backbone, weights_sha256, preprocessing, pooling, "
                "dtype, compute_dtype).",
            ) from None  # fmt: skip
    if not isinstance(config, FeatureConfig):
        raise ParameterError("config", "import_embeddings", "a FeatureConfig or None", config)
    model = model or provenance.get("model") or "imported"
    layer = layer or provenance.get("layer") or "embedding"
    table = _import_table(parts, provenance, Path(folder))
    store = Store(cache)
    store.check_path("import_embeddings")
    if store.has_samples():
        raise InvalidArgumentError(
            f"cache must be a new cache; {str(store.path)!r} exists; import into a new file."
        )
    store.create_samples(table, shard_size)
    store.register_model(model, config)
    with store.lock_model(model):
        _import_rows(store, parts, model, layer, config, shard_size, len(table))
        store.rebuild_index()
    return store.path


def _import_parts(folder: Path) -> list[tuple[Path, Path]]:
    """``(embeddings, metadata)`` file pairs, in name order (one file for both in parquet)."""
    npy = sorted((folder / "img_emb").glob("*.npy"))
    if npy:
        metadata = sorted((folder / "metadata").glob("*.parquet"))
        if len(metadata) != len(npy):
            raise InvalidArgumentError(
                f"{str(folder)!r} holds {len(npy)} embedding files (img_emb/*.npy) and "
                f"{len(metadata)} metadata files (metadata/*.parquet); each part needs both."
            )
        return list(zip(npy, metadata, strict=True))
    parquet = sorted((folder / "img_emb").glob("*.parquet"))
    if not parquet:
        raise InvalidArgumentError(
            f"{str(folder)!r} holds no embeddings; expected img_emb/*.npy with "
            "metadata/*.parquet, or img_emb/*.parquet with an embedding column."
        )
    return [(p, p) for p in parquet]


def _read_provenance(path: Path) -> dict:
    pq = _pyarrow()
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(META_KEY, b"{}"))


def _import_table(parts, provenance: dict, folder: Path) -> SampleTable:
    """The sample table of the imported rows: ids, labels by class name, splits."""
    pq = _pyarrow()
    ids, names, splits = [], [], []
    for _, metadata in parts:
        columns = pq.read_schema(metadata).names
        id_column = next((c for c in ("id", "key", "image_path") if c in columns), None)
        if id_column is None:
            raise InvalidArgumentError(
                f"{str(metadata)!r} has no id column (id, key or image_path); it has "
                f"{', '.join(columns)}."
            )
        wanted = [id_column] + [c for c in ("label", "split") if c in columns]
        table = pq.read_table(metadata, columns=wanted).to_pydict()
        ids += [str(v) for v in table[id_column]]
        names += table.get("label", [None] * len(table[id_column]))
        splits += [s or "" for s in table.get("split", [""] * len(table[id_column]))]
    class_names = provenance.get("class_names") or sorted({n for n in names if n})
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({n for n in names if n and n not in index})
    if unknown:
        raise InvalidArgumentError(
            f"{str(folder)!r}: labels {', '.join(map(repr, unknown[:5]))} are not among the "
            "class names its metadata records."
        )
    labels = np.array([index[n] if n else -1 for n in names], dtype=np.int64)
    return SampleTable(
        ids=np.array(ids, dtype=object),
        labels=labels,
        splits=np.array(splits, dtype=object),
        class_names=tuple(class_names),
        source=str(DataSource("import", str(folder.resolve()))),
    )


def _import_rows(store, parts, model, layer, config, shard_size, n_rows) -> None:
    """Write the embeddings shard by shard, reading one part at a time."""
    dtype = np.dtype(config.dtype)
    buffered: list[np.ndarray] = []
    held = start = shard = 0
    declared = False
    for X in _embeddings(parts):
        if not declared:
            attrs = {**IMPORTED_LAYER, "raw_shape": [int(X.shape[1])]}
            store.declare_layers(model, {layer: {**attrs, "n_features": int(X.shape[1]),
                                                 "dtype": config.dtype}})  # fmt: skip
            declared = True
        buffered.append(X.astype(dtype, copy=False))
        held += len(X)
        while held >= shard_size or (held and start + held == n_rows):
            block = np.concatenate(buffered)
            take = min(shard_size, held)
            _write(store, model, layer, config, shard, start, block[:take])
            buffered, held = [block[take:]], held - take
            start, shard = start + take, shard + 1
    if start != n_rows:
        raise InvalidArgumentError(
            f"the embedding files hold {start} rows, their metadata {n_rows}; each part's "
            "embeddings and metadata must hold the same rows."
        )


def _embeddings(parts) -> Iterator[np.ndarray]:
    pq = _pyarrow()
    for embeddings, _ in parts:
        if embeddings.suffix == ".npy":
            yield np.load(embeddings, mmap_mode="r")
            continue
        column = pq.read_table(embeddings, columns=["embedding"]).column(0).combine_chunks()
        yield column.flatten().to_numpy().reshape(len(column), -1)


def _write(store, model, layer, config, shard, start, X: np.ndarray) -> None:
    if not np.isfinite(X).all():
        raise InvalidArgumentError(
            f"rows {start}..{start + len(X)} of the embeddings hold NaN or Inf; a cache stores "
            "finite numbers only."
        )
    attrs = {**IMPORTED_LAYER, "raw_shape": np.array([X.shape[1]], dtype=np.int64)}
    status = np.full(len(X), STATUS_OK, dtype=np.int8)
    meta = store.write_shard(
        model, shard, start, status, [""] * len(X), {layer: np.ascontiguousarray(X)},
        {layer: attrs}, config,
    )  # fmt: skip
    store.publish(model, [meta])
