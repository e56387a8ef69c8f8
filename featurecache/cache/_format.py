"""The cache format: names, versions, status codes and every HDF5 path of the layout.

``docs/cache-format.md`` describes the layout in prose; this module is its one home in
code. Nothing outside :mod:`featurecache.cache` spells an HDF5 path: readers, writers and
tests call the builders below.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FEATURES_FORMAT_VERSION",
    "SPLITS",
    "split_rank",
    "STAT_FIELDS",
    "STATUS_PENDING",
    "STATUS_OK",
    "STATUS_FAILED",
    "STATUS_NAMES",
    "SAMPLE_FIELDS",
    "TMP_MARK",
    "LOCKING_ENV",
    "locking_enabled",
    "samples_digest",
    "canonical_json",
    "data_dir",
    "samples_file",
    "model_dir",
    "model_names",
    "config_file",
    "commit_log",
    "run_log",
    "shard_file",
    "segment_name",
    "classifier_file",
    "classifier_files",
    "CLASSIFIER_KINDS",
    "classifier_path",
    "sample_path",
    "features_path",
    "status_path",
    "failures_path",
    "shards_path",
    "shard_features_path",
    "views_path",
    "view_status_path",
    "shard_views_path",
    "shard_view_status_path",
]

FORMAT = "featurecache"
#: Version 2: the sample table of fixed-width columns with content digests and row states.
#: Version-1 caches (string ids and splits, no digests) are read through one adapter
#: (:mod:`featurecache.cache._legacy`), and rewritten as version 2 by ``featurecache upgrade``.
FORMAT_VERSION = 2
#: The version of the stored feature rows, part of every model's key (unchanged by version 2
#: of the sample table: the features of a version-1 cache stay valid).
FEATURES_FORMAT_VERSION = 1
#: The splits, in their one order (the split-name table of ``/samples/splits`` starts with
#: ``""``, no split, then these).
SPLITS = ("train", "val", "test")


def split_rank(split: str) -> tuple[int, str]:
    """The sort key of a split name: :data:`SPLITS` in their order, then ``""`` (no split)
    and any other name, alphabetically."""
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


#: Row status codes, in ``/status/<model>/<layer>`` and in each shard's ``status``.
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_OK: "ok", STATUS_FAILED: "failed"}

#: The per-sample columns of ``/samples``, aligned with the rows of every feature matrix.
SAMPLE_FIELDS = ("ids", "labels", "splits")
#: Format 2 also has ``state`` (int8: 0 live, 1 removed, 2 stale), ``digest`` ((n, 16) uint8,
#: the content digest) and the stat columns below; version 1 had an optional ``removed``.
#: The stat of each row's file when it was last checked (int64, -1 unknown): a file whose
#: stat is unchanged is not hashed again (``docs/cache-format.md``).
STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "inode")
#: Where each shard starts, once a dataset has grown (else shards are ``shard_size`` rows).
LAYOUT_STARTS = "layout/starts"

#: The attribute holding a dataset's SHA-256 (of its bytes as stored): on each layer of a
#: shard file, and on each feature and view matrix of a plain index.
DIGEST_ATTR = "sha256"

#: Marks a file being written: ``NAME.tmp-HOST-PID-RANDOM``, renamed into place when complete.
TMP_MARK = ".tmp-"

#: Set to ``1`` to turn off ``fcntl`` and HDF5 file locks (file systems without locks).
LOCKING_ENV = "FEATURECACHE_NO_LOCKING"


def locking_enabled(locking: bool | None = None) -> bool:
    """Resolve the locking switch: the argument, else ``FEATURECACHE_NO_LOCKING``."""
    if locking is not None:
        return bool(locking)
    return os.environ.get(LOCKING_ENV, "") != "1"


def samples_digest(
    ids: Sequence, labels: Sequence, splits: Sequence, contents: np.ndarray | None = None
) -> str:
    """SHA-256 over ids, splits, labels and the content digests (when known): the identity
    of a sample table."""
    digest = hashlib.sha256()
    for values in (ids, splits):
        digest.update("\0".join(str(v) for v in values).encode())
        digest.update(b"\1")
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    if contents is not None:
        digest.update(np.ascontiguousarray(contents, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def canonical_json(value: Mapping | Sequence) -> str:
    """The one JSON spelling used for digests: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- files of a cache ---------------------------------------------------------------------


def data_dir(index: Path) -> Path:
    """The folder ``CACHE.h5.d`` beside the index ``CACHE.h5``."""
    return index.with_name(index.name + ".d")


def samples_file(index: Path) -> Path:
    return data_dir(index) / "samples.h5"


def model_dir(index: Path, model: str) -> Path:
    return data_dir(index) / model


def config_file(index: Path, model: str) -> Path:
    return model_dir(index, model) / "config.json"


def model_names(index: Path) -> list[str]:
    """The models of the cache at ``index``, sorted: the folders holding a ``config.json``."""
    return sorted(p.parent.name for p in data_dir(index).glob("*/config.json"))


def commit_log(index: Path, model: str) -> Path:
    """The model's append-only commit log: one JSON line per committed shard file."""
    return model_dir(index, model) / "commits.jsonl"


def layers_file(index: Path, model: str) -> Path:
    """The layers a run of the model set out to compute (``n_features``, ``dtype``, depth),
    written before its first shard: readers list a layer from the start of its extraction,
    with every row pending."""
    return model_dir(index, model) / "layers.json"


def run_log(index: Path, model: str) -> Path:
    """The model's runs: rows computed and seconds taken by each extraction, one JSON line each."""
    return model_dir(index, model) / "runs.jsonl"


def shard_file(index: Path, model: str, shard: int, layers: Sequence[str]) -> Path:
    """One pass (a set of layers computed together) of one shard of rows."""
    pass_id = hashlib.sha1("\n".join(sorted(layers)).encode()).hexdigest()[:10]
    return model_dir(index, model) / f"p-{pass_id}" / f"shard-{shard:06d}.h5"


SHARD_GLOB = "p-*/shard-*.h5"
#: Segments: the shard files ``first`` to ``last`` of one pass, compacted into one file.
SEGMENT_GLOB = "p-*/segment-*.h5"


def segment_name(first: int, last: int) -> str:
    """The file name of the segment holding shards ``first`` to ``last`` of a pass."""
    return f"segment-{first:06d}-{last:06d}.h5"


#: Classifiers stored beside a model's features: ``imagenet`` (the backbone's own classifier,
#: removed for extraction) and ``zeroshot`` (text embeddings of the dataset's class names).
CLASSIFIER_KINDS = ("imagenet", "zeroshot")


def classifier_file(index: Path, model: str, kind: str, version: str = "") -> Path:
    """``CACHE.h5.d/<model>/classifiers/<kind>.h5``: one write-once file per classifier.

    A later version of it (the zero-shot classifier of a grown class list) is
    ``<kind>.<version>.h5``, ``version`` naming its class list.
    """
    name = f"{kind}.{version}.h5" if version else f"{kind}.h5"
    return model_dir(index, model) / "classifiers" / name


def classifier_files(index: Path, model: str, kind: str) -> list[Path]:
    """Every stored version of a classifier (:func:`classifier_file`), the first one first."""
    folder = model_dir(index, model) / "classifiers"
    first = folder / f"{kind}.h5"
    later = sorted(folder.glob(f"{kind}.*.h5")) if folder.is_dir() else []
    return ([first] if first.is_file() else []) + later


# -- paths inside the HDF5 files ----------------------------------------------------------


def sample_path(field: str) -> str:
    """``/samples/<field>`` (``ids``, ``labels``, ``splits``)."""
    return f"samples/{field}"


def features_path(model: str | None = None, layer: str | None = None) -> str:
    """``/features``, ``/features/<model>`` or ``/features/<model>/<layer>``."""
    return "/".join(["features", *(p for p in (model, layer) if p is not None)])


def status_path(model: str, layer: str) -> str:
    return f"status/{model}/{layer}"


def failures_path(model: str, column: str) -> str:
    """``/failures/<model>/row`` or ``/failures/<model>/reason``."""
    return f"failures/{model}/{column}"


def shards_path(model: str, column: str | None = None) -> str:
    """``/shards/<model>`` or one of its columns (``file``, ``layer``, ``start``, ``stop``, ``sha256``)."""
    return f"shards/{model}" if column is None else f"shards/{model}/{column}"


def classifier_path(field: str) -> str:
    """A dataset of a classifier file: ``weight``, ``bias`` or ``class_names``."""
    return f"classifier/{field}"


def shard_features_path(layer: str) -> str:
    """A layer's matrix inside one shard file."""
    return f"features/{layer}"


# -- extra views (augmented and test-time) ----------------------------------------------
#
# Kind ``augment`` lives under ``/views``, kind ``tta`` under ``/tta``; each beside a status
# per (sample, view). The plain view stays in ``/features``.

_VIEW_GROUPS = {"augment": "views", "tta": "tta"}


def views_path(kind: str, model: str, layer: str) -> str:
    """``/views/<model>/<layer>`` (``augment``) or ``/tta/<model>/<layer>``: (n, K, f)."""
    return f"{_VIEW_GROUPS[kind]}/{model}/{layer}"


def view_status_path(kind: str, model: str, layer: str) -> str:
    """``/views_status/<model>/<layer>`` or ``/tta_status/<model>/<layer>``: (n, K) int8."""
    return f"{_VIEW_GROUPS[kind]}_status/{model}/{layer}"


def shard_views_path(kind: str, layer: str) -> str:
    """A layer's views inside one shard file: ``views/<layer>`` or ``tta/<layer>``."""
    return f"{_VIEW_GROUPS[kind]}/{layer}"


def shard_view_status_path(kind: str) -> str:
    """The status per (row, view) inside one shard file: ``views_status`` or ``tta_status``."""
    return f"{_VIEW_GROUPS[kind]}_status"
