"""The cache contract: format, reader, writer and atomic writes, without torch.

Stage 1 (``featurecache.models``, ``featurecache.engines``) writes through
:class:`Store`; stage 2 (``pipelines``) reads through :func:`open_cache`. The HDF5
layout is spelled in :mod:`featurecache.cache._format` and nowhere else.
"""

from featurecache.cache._arrays import write_arrays
from featurecache.cache._atomic import atomic_write, create_once
from featurecache.cache._classifiers import StoredClassifier, read_classifiers, write_classifier
from featurecache.cache._config import VIEW_KINDS, FeatureConfig, ViewSets
from featurecache.cache._format import (
    FORMAT,
    FORMAT_VERSION,
    LOCKING_ENV,
    SPLITS,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_PENDING,
    locking_enabled,
    samples_digest,
    split_rank,
)
from featurecache.cache._identity import content_digest
from featurecache.cache._interchange import (
    EXPORT_FORMATS,
    ExportResult,
    export_embeddings,
    import_embeddings,
)
from featurecache.cache._log import ShardMeta
from featurecache.cache._reader import Cache, Entry, open_cache
from featurecache.cache._samples import (
    STATE_LIVE,
    STATE_NAMES,
    STATE_REMOVED,
    STATE_STALE,
    SampleChanges,
    SampleTable,
    SplitSpec,
)
from featurecache.cache._source import SOURCE_KINDS, DataSource, read_sample_image
from featurecache.cache._stream import Batch, default_batch_rows
from featurecache.cache._upgrade import cache_version, upgrade
from featurecache.cache._writer import ShardViews, Store, check_config

__all__ = [
    "Batch",
    "Cache",
    "DataSource",
    "Entry",
    "EXPORT_FORMATS",
    "ExportResult",
    "FeatureConfig",
    "FORMAT",
    "FORMAT_VERSION",
    "LOCKING_ENV",
    "STATUS_FAILED",
    "STATUS_NAMES",
    "STATUS_OK",
    "STATUS_PENDING",
    "SOURCE_KINDS",
    "SPLITS",
    "SampleChanges",
    "SampleTable",
    "SplitSpec",
    "STATE_LIVE",
    "STATE_NAMES",
    "STATE_REMOVED",
    "STATE_STALE",
    "ShardMeta",
    "ShardViews",
    "Store",
    "StoredClassifier",
    "VIEW_KINDS",
    "ViewSets",
    "atomic_write",
    "cache_version",
    "check_config",
    "content_digest",
    "create_once",
    "default_batch_rows",
    "export_embeddings",
    "import_embeddings",
    "locking_enabled",
    "open_cache",
    "read_classifiers",
    "read_sample_image",
    "samples_digest",
    "split_rank",
    "upgrade",
    "write_arrays",
    "write_classifier",
]
