"""Thumbnails of samples for the report's gallery, their images reloaded from the cache's source.

:func:`sample_thumbnail` is the one place the report reads a sample's image back, through the
cache's :class:`~featurecache.cache.DataSource` (folders, CSV manifests and built-ins; local
or fsspec URLs).
"""

from __future__ import annotations

import numpy as np

from featurecache.cache import read_sample_image
from pipelines.reporting._figures import thumbnail

__all__ = ["sample_thumbnail"]


def sample_thumbnail(source: str, sample_id: str) -> np.ndarray | None:
    """The thumbnail of a sample, its image read again from its source; ``None`` when it is
    not readable from here (tar and parquet members, a moved folder)."""
    image = read_sample_image(source, sample_id)
    return None if image is None else thumbnail(image)
