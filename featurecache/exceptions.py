"""Exceptions raised by featurecache and pipelines.

This module imports nothing heavy (no torch), so ``pipelines`` can use it.
Every exception subclasses :class:`FeatureCacheError` and the matching built-in,
so callers can catch either. The CLI prints ``str(error)`` on one line and
exits with ``error.exit_code``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "FeatureCacheError",
    "InvalidArgumentError",
    "UnknownNameError",
    "ConfigMismatchError",
    "DatasetChangedError",
    "WeightsNotFoundError",
    "DownloadError",
    "MissingExtraError",
    "CacheLockedError",
    "CacheCorruptError",
    "CacheReadOnlyError",
    "BatchError",
    "OutOfSpaceError",
    "ClusterUnreachableError",
    "suggest",
]


class FeatureCacheError(Exception):
    """Base class of every error featurecache raises on purpose."""

    exit_code = 1


class InvalidArgumentError(FeatureCacheError, ValueError):
    """A user-supplied argument or input is not what was expected (CLI exit code 2)."""

    exit_code = 2


class UnknownNameError(InvalidArgumentError):
    """A model, layer, head, split or dataset name that does not exist."""


class ConfigMismatchError(InvalidArgumentError):
    """Writing under an existing model with a different configuration."""


class DatasetChangedError(InvalidArgumentError):
    """The dataset's file list differs from the one the cache was made from."""


class WeightsNotFoundError(InvalidArgumentError, FileNotFoundError):
    """Weights that are neither in the torch hub cache nor a readable local file."""


class DownloadError(WeightsNotFoundError):
    """Weights that could not be downloaded (offline, no network, a proxy, a bad hash)."""


class MissingExtraError(FeatureCacheError, ImportError):
    """A backbone source whose optional library is not installed (CLI exit code 2)."""

    exit_code = 2


class CacheLockedError(FeatureCacheError):
    """Another process is writing the same model into the same cache."""


class CacheReadOnlyError(FeatureCacheError, PermissionError):
    """An extraction would have to write into a cache that this user cannot write."""


class CacheCorruptError(FeatureCacheError, OSError):
    """A committed cache file is unreadable or does not match its checksum."""


class BatchError(FeatureCacheError, RuntimeError):
    """A batch failed inside the model (exception, NaN or Inf); nothing of it was committed."""


class OutOfSpaceError(FeatureCacheError, OSError):
    """The disk (or the file size limit) ran out while writing; the cache is as it was."""


class ClusterUnreachableError(FeatureCacheError, ConnectionError):
    """No scheduler or cluster answers at the address given (CLI exit code 1)."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'a', 'b'?"`` for the closest choices, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + ", ".join(repr(c) for c in close) + "?"
