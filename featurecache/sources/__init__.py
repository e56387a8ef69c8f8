"""Sharded data sources: webdataset tar shards and parquet files, local or behind fsspec URLs.

A source scans its files into a sample table (:class:`Scanned`) and places each image
in them (:class:`SampleBytes`); :func:`featurecache.load_dataset` turns it into a
:class:`featurecache.Dataset` whose samples load by byte range or cell. The kinds are
registered by file extension (:func:`source_for`).
"""

from featurecache.sources._members import ParquetCells, SampleBytes, TarMembers, content_digest
from featurecache.sources._parquet import ParquetImages
from featurecache.sources._source import SOURCES, Scanned, Source, source_for
from featurecache.sources._webdataset import IMAGE_FIELDS, WebDataset

__all__ = [
    "IMAGE_FIELDS",
    "ParquetCells",
    "ParquetImages",
    "SOURCES",
    "SampleBytes",
    "Scanned",
    "Source",
    "TarMembers",
    "WebDataset",
    "content_digest",
    "source_for",
]
