"""The writer's locks: one writer per model, one index rebuild at a time.

Locks are ``fcntl.flock`` locks on small files in the cache's folder, opened through
:func:`~featurecache.cache._atomic.lock_file` (a forked child never holds one). A file
system that refuses locks gets one message naming the switch that turns them off.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py

from featurecache.cache import _format as fmt
from featurecache.cache._atomic import lock_file, process_is_gone
from featurecache.exceptions import CacheLockedError

__all__ = ["NO_LOCKS_HINT", "exclusive", "hold_writer_lock", "open_h5"]

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
NO_LOCKS_HINT = (
    "on such file systems (NFS without locks, some FUSE mounts) turn locking off (locking=False, "
    f"--no-locking, or {fmt.LOCKING_ENV}=1), and run one writer per model."
)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), waiting for it."""
    with lock_file(path) as fd:
        _flock(fd, fcntl.LOCK_EX, path)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def hold_writer_lock(path: Path, refusal: Callable[[str], str]) -> Iterator[None]:
    """Hold the writer lock ``path`` without waiting, and record this process in it.

    Parameters
    ----------
    path : Path
        The model's lock file; its folder is created if missing.
    refusal : callable
        ``refusal(owner)`` is the message when another process holds the lock, ``owner``
        being what that process recorded (``pid N on HOST``).

    Raises
    ------
    CacheLockedError
        Another process holds the lock, or the file system refuses locks.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_file(path) as fd:
        try:
            _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, path)
        except BlockingIOError:
            owner = os.pread(fd, 256, 0).decode(errors="replace").strip()
            raise CacheLockedError(refusal(owner)) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def owner_is_gone(owner: str) -> bool:
    """True when ``owner`` (``pid N on HOST``, as a lock records it) is no longer running."""
    found = re.fullmatch(r"pid (\d+) on (.+)", owner)
    return bool(found) and process_is_gone(found[2], int(found[1]))


def open_h5(path: Path, mode: str, locking: bool) -> h5py.File:
    """``h5py.File(path, mode)``, with a lock failure told as :class:`CacheLockedError`."""
    try:
        return h5py.File(path, mode, locking=locking)
    except OSError as error:
        if "unable to lock file" not in str(error):
            raise
        raise CacheLockedError(
            f"cannot lock {str(path)!r} ({error}); another program holds it open for "
            f"writing, or the file system refuses locks: {NO_LOCKS_HINT}"
        ) from error


def _flock(fd: int, flags: int, path: Path) -> None:
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        raise
    except OSError as error:
        if error.errno not in _NO_LOCKS:
            raise
        raise CacheLockedError(
            f"the file system of {str(path)!r} refuses file locks ({error.strerror}): "
            + NO_LOCKS_HINT
        ) from error
