"""Thumbnails of samples for the report's gallery, their images reloaded from the cache's source.

:func:`sample_thumbnail` is the one place the report reads a sample's image back: it parses
the cache's ``source`` string and reloads a folder file, a built-in array or a path id.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pipelines._figures import thumbnail

__all__ = ["sample_thumbnail"]


def sample_thumbnail(source: str, sample_id: str) -> np.ndarray | None:
    """The image of a sample: a file under a folder dataset, a built-in array, or a path id."""
    try:
        if source.startswith("folder:"):
            return thumbnail(Path(source[len("folder:") :]) / sample_id)
        if source.split(" ")[0] == "builtin:digits":
            return thumbnail(_digits()[int(sample_id)])
        if Path(sample_id).is_file():
            return thumbnail(Path(sample_id))
    except (OSError, ValueError, IndexError):
        return None
    return None


@functools.cache
def _digits() -> np.ndarray:
    """scikit-learn's digits as the built-in dataset stores them (uint8, 8 x 8)."""
    from sklearn.datasets import load_digits

    return np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
