"""Stage 1, where samples come from: folders, CSV manifests, built-ins and sharded sources.

Data sources: webdataset tar shards and parquet files, local or behind fsspec URLs, and
folders and CSV manifests on object storage.

A source scans its files into a sample table (:class:`Scanned`) and places each image
in them (:class:`SampleBytes`); :func:`featurecache.load_dataset` turns it into a
:class:`featurecache.Dataset` whose samples load by byte range or cell. The kinds are
registered by file extension (:func:`source_for`). A folder or manifest at a URL holds
one object per sample (:class:`ObjectFiles`); :func:`read_layout` holds the folder rules.
"""

from featurecache.data._files import is_url
from featurecache.data._layout import (
    IMAGE_EXTENSIONS,
    SKIPPED_KIND_ONE,
    SKIPPED_KINDS,
    SPLIT_NAMES,
    is_image_name,
    read_layout,
)
from featurecache.data._members import ParquetCells, SampleBytes, TarMembers, content_digest
from featurecache.data._objects import (
    ObjectFiles,
    object_files,
    read_object,
    resolve_url,
    scan_folder,
)
from featurecache.data._parquet import ParquetImages
from featurecache.data._source import SOURCES, Scanned, Source, source_for
from featurecache.data._webdataset import IMAGE_FIELDS, WebDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FIELDS",
    "ObjectFiles",
    "ParquetCells",
    "ParquetImages",
    "SKIPPED_KINDS",
    "SKIPPED_KIND_ONE",
    "SOURCES",
    "SPLIT_NAMES",
    "SampleBytes",
    "Scanned",
    "Source",
    "TarMembers",
    "WebDataset",
    "content_digest",
    "is_image_name",
    "is_url",
    "object_files",
    "read_layout",
    "read_object",
    "resolve_url",
    "scan_folder",
    "source_for",
]
