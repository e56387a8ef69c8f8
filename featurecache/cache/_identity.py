"""The identity of a sample: a digest of its content, with the file's stat as a pre-filter.

A sample is the same sample only if its content digest says so (16 bytes of xxh3-128 of a
file's bytes, or of an array's pixels with their dtype and shape). The stat of a file
(size, mtime, ctime, inode, as git's index keeps it) only decides which files need hashing
again: one whose stat is unchanged, and not racy, is taken to hold what it held.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import xxhash

from featurecache.cache._format import STAT_FIELDS
from featurecache.exceptions import InvalidArgumentError

__all__ = [
    "DIGEST_SIZE",
    "NO_DIGEST",
    "RACY_NS",
    "UNREADABLE",
    "check_content",
    "content_digest",
    "file_digest",
    "now_ns",
    "stat_files",
]

DIGEST_SIZE = 16
#: The digest column of a row whose content was never hashed (a version-1 table).
NO_DIGEST = bytes(DIGEST_SIZE)
#: The digest of a file that could not be read: such a row fails, and never counts as a move.
UNREADABLE = xxhash.xxh3_128(b"featurecache: unreadable file").digest()
#: A file modified less than this before its stat was taken may change again within the
#: same mtime tick (2 s: the coarsest common file system clock), so it is hashed next time.
RACY_NS = 2_000_000_000
_BLOCK = 1 << 20


def content_digest(data: bytes | memoryview | np.ndarray) -> bytes:
    """The 16-byte xxh3-128 digest of a sample's content.

    Parameters
    ----------
    data : bytes, memoryview or ndarray
        A file's bytes as read for decoding, or a sample's pixels (an array is hashed as its
        contiguous bytes, then its dtype and shape).

    Returns
    -------
    bytes
        16 bytes.
    """
    digest = xxhash.xxh3_128()
    if isinstance(data, np.ndarray):
        digest.update(np.ascontiguousarray(data).tobytes())
        digest.update(f"|{data.dtype.str}|{data.shape}".encode())
    else:
        digest.update(data)
    return digest.digest()


def check_content(data: bytes, expected: bytes | None, what: str = "file") -> bytes:
    """``data``, refused unless its content digest is ``expected`` (``None``: not checked).

    Parameters
    ----------
    data : bytes
        A sample's encoded bytes, as read for decoding.
    expected : bytes or None
        The digest the sample table planned for the sample.
    what : str
        What the bytes are, for the message (``file``, ``object``, ``shard member``).

    Raises
    ------
    InvalidArgumentError
        When the bytes are not those the run planned: the sample changed since the scan.
    """
    if expected is not None and content_digest(data) != expected:
        raise InvalidArgumentError(f"the {what} changed during extraction; re-run extract")
    return data


def file_digest(path: str | os.PathLike) -> bytes:
    """:func:`content_digest` of a file's bytes, read in blocks; :data:`UNREADABLE` if it
    cannot be read."""
    digest = xxhash.xxh3_128()
    try:
        with open(path, "rb", buffering=0) as stream:
            while block := stream.read(_BLOCK):
                digest.update(block)
    except OSError:
        return UNREADABLE
    return digest.digest()


def stat_files(paths: Sequence[str]) -> np.ndarray:
    """``(n, 4)`` int64: size, mtime_ns, ctime_ns and inode of each file; -1 where it fails."""
    found = np.full((len(paths), len(STAT_FIELDS)), -1, dtype=np.int64)
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        found[i] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return found


def now_ns() -> int:
    """The wall clock in ns, taken before files are stat'ed (the racy rule compares with it)."""
    return time.time_ns()
