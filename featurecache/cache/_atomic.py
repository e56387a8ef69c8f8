"""Atomic file writes: every file featurecache writes goes through here.

A file is written under a temporary name in its final folder, flushed to disk, and
renamed into place; the folder is flushed after the rename. A reader therefore sees
either the old file or the complete new one, never a part. Temporary names carry the
host and process id, so a later run can remove those left by a dead process.

Lock files are opened through :func:`lock_file`: a process forked while one is held (a
data loader) closes its copy of the descriptor at once, so the lock never outlives the
process that took it, even by the seconds a killed run's loaders take to exit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py

from featurecache.cache._format import TMP_MARK
from featurecache.exceptions import OutOfSpaceError

__all__ = [
    "lock_file",
    "process_is_gone",
    "atomic_write",
    "create_once",
    "temporary_path",
    "owner_is_dead",
    "fsync_file",
    "fsync_dir",
    "raise_if_out_of_space",
    "new_h5",
]

_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}

#: Descriptors of the lock files this process has open (see :func:`lock_file`).
_LOCK_FDS: set[int] = set()


def _close_lock_fds() -> None:
    """In a forked child: close the inherited lock files. ``flock`` locks belong to the open
    file, which a fork shares, so a child keeping its copy would hold its parent's lock
    until it exits. Closing (never unlocking) leaves the parent's lock as it is."""
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_close_lock_fds)


@contextlib.contextmanager
def lock_file(path: str | os.PathLike) -> Iterator[int]:
    """Open ``path`` (created if missing) read-write for an ``fcntl.flock`` lock; yield the
    descriptor, closed on exit. Forked children never keep it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _LOCK_FDS.add(fd)
    try:
        yield fd
    finally:
        _LOCK_FDS.discard(fd)
        os.close(fd)


def process_is_gone(host: str, pid: int) -> bool:
    """True when ``pid`` names a process of this host (``host``) that no longer runs."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path, then rename it to ``path``.

    Parameters
    ----------
    path : str or path
        The final file; its folder is created if missing. An existing file is replaced.
    write : callable
        Writes the complete file at the path it is given.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutOfSpaceError
        The disk or the file size limit ran out; ``path`` is as it was.
    """
    final = Path(path)
    _place(final, write, os.replace)
    return final


def create_once(path: str | os.PathLike, write: Callable[[Path], Any]) -> bool:
    """Like :func:`atomic_write`, but never replaces: return False if ``path`` already exists.

    The file is linked into place, so of two writers racing for the same path exactly one
    creates it, and the other sees the winner's complete file.
    """
    try:
        _place(Path(path), write, os.link)
    except FileExistsError:
        return False
    return True


def _place(final: Path, write: Callable[[Path], Any], move: Callable[[Path, Path], None]) -> None:
    """Write a temporary file beside ``final``, flush it, ``move`` it into place, flush the folder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(final)
    try:
        write(tmp)
        fsync_file(tmp)
        move(tmp, final)
    except FileExistsError:
        raise
    except OSError as error:
        raise_if_out_of_space(error, final)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(final.parent)


def temporary_path(final: Path) -> Path:
    """``NAME.tmp-HOST-PID-RANDOM`` beside ``final``."""
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.with_name(f"{final.name}{TMP_MARK}{tag}")


def owner_is_dead(name: str) -> bool:
    """True when the temporary file ``name`` belongs to a process of this host that is gone."""
    if TMP_MARK not in name:
        return False
    parts = name.split(TMP_MARK, 1)[1].rsplit("-", 2)  # host-pid-random
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    return process_is_gone(parts[0], int(parts[1]))


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to open folders
        fsync_file(path)


def raise_if_out_of_space(error: OSError, target: Path) -> None:
    """Turn disk-full errors (also as reported through HDF5) into :class:`OutOfSpaceError`."""
    text = str(error)
    markers = ("No space left", "File too large", "Disk quota", "errno = 28", "errno = 27")
    if error.errno in _NO_SPACE or any(marker in text for marker in markers):
        raise OutOfSpaceError(
            f"out of disk space while writing {str(target)!r}; nothing of it was committed and the "
            "cache is as it was. Free space (or raise the file size limit) and re-run the same "
            "command to resume, or put the cache on a larger disk."
        ) from error


@contextlib.contextmanager
def new_h5(path: Path) -> Iterator[h5py.File]:
    """Build a new HDF5 file in memory, then write it to ``path`` with one plain write.

    HDF5 defers its writes to ``close``, where a full disk surfaces as a ``RuntimeError``
    and leaves the library in a state that can crash the interpreter at exit; a plain
    write raises a clean ``OSError`` (ENOSPC, EFBIG) that becomes :class:`OutOfSpaceError`.
    """
    with h5py.File(path, "w", driver="core", backing_store=False) as f:
        yield f
        f.flush()
        image = f.id.get_file_image()
    with open(path, "xb") as out:
        out.write(image)
