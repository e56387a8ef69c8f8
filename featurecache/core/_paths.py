"""Output paths, checked before any work: a valid name, a writable folder, no user file replaced.

Every function that writes (``extract``'s cache, ``fit``'s results folder, ``report``'s
folder, ``predict``'s CSV) calls :func:`check_output` (or :func:`check_new_path`) before it
reads an image or fits a head, so a bad path is refused in one line and nothing is written.
The checks:

- the name: no NUL byte, every component short enough for the file system *with* the
  temporary suffix an atomic write adds (``NAME.tmp-HOST-PID-RANDOM``), the whole path under
  ``PATH_MAX``;
- the folder: the nearest existing ancestor is a folder that this process may write
  (``os.access``) on a file system that is not mounted read-only (``statvfs``); missing
  folders below it are created by the write;
- the path itself: an existing path is accepted only when featurecache wrote it (each
  caller says how it recognises its own output) or when ``force`` is set.

Errors are :class:`~featurecache.core._validation.ParameterError` naming the parameter: exit
code 2 for a path that is wrong (a name too long, a file where a folder must be, a file
featurecache did not write), and :class:`~featurecache.core._validation.UnwritablePathError`,
exit code 1, for a folder that cannot be written (read-only disk, no permission, a pseudo
file system): the environment fails, as for a read-only cache (``CacheReadOnlyError``). A
write that fails later anyway (a disk that fills up) is an ``OSError`` of the environment.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from featurecache.cache._atomic import temporary_path
from featurecache.core._validation import ParameterError, UnwritablePathError

__all__ = [
    "check_output", "check_new_path", "check_name", "check_writable", "check_not_input",
    "nearest_existing",
]  # fmt: skip

_NAME_MAX = 255
_PATH_MAX = 4096


def check_output(
    path: str | os.PathLike,
    parameter: str,
    owner: str,
    *,
    kind: str,
    ours: Callable[[Path], bool],
    force: bool = False,
    probe: bool = False,
    expected: str | None = None,
) -> Path:
    """Check an output path before any work and return it as a :class:`~pathlib.Path`.

    Parameters
    ----------
    path : str or path
        The output: a file (``kind="file"``) or a folder (``kind="folder"``).
    parameter, owner : str
        The parameter and the function it belongs to, for the message.
    kind : {"file", "folder"}
    ours : callable
        ``ours(path)`` is True when an existing ``path`` was written by featurecache and may
        be replaced (a folder: written into).
    force : bool
        Accept an existing path featurecache did not write (a file in the way of a folder is
        then removed by the caller; a foreign folder is written into).
    probe : bool
        Also create and remove a temporary file in the nearest existing folder, for callers
        whose first write comes after minutes of compute. A folder that does not exist yet is
        always probed for.
    expected : str, optional
        What the path must be, for the message (``a new or empty folder, or a results
        folder``).

    Raises
    ------
    ParameterError
        A bad name, a folder that cannot be written, or an existing path that featurecache
        did not write (without ``force``).
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', not {kind!r}")
    target = check_name(path, parameter, owner)
    new = not target.exists() and not target.is_symlink()
    # A folder still to be created is probed where it will be made: pseudo file systems
    # (/proc, /sys) pass os.access but refuse new entries.
    check_writable(target, parameter, owner, probe=probe or (new and kind == "folder"))
    if new:
        return target
    if expected is None:
        expected = f"a new {'file path' if kind == 'file' else 'folder'} or one featurecache wrote"
    if target.is_dir() and kind == "file":
        raise ParameterError(parameter, owner, "a file path, not a folder", str(target),
                             "It is a folder; name a file inside it.")  # fmt: skip
    if force or ours(target):
        return target
    what = "a non-empty folder" if target.is_dir() else "a file"
    fix = f"It is {what} that featurecache did not write; choose a new path, or"
    raise ParameterError(
        parameter, owner, expected, str(target),
        f"{fix} pass force=True to overwrite it.", cli_hint=f"{fix} add --force to overwrite it.",
    )  # fmt: skip


def check_new_path(
    path: str | os.PathLike, parameter: str, owner: str, *, probe: bool = False
) -> Path:
    """Check that ``path`` has a valid name and a folder that can be written; return it.

    Nothing is created; an existing path is not refused here (see :func:`check_output`).
    """
    target = check_name(path, parameter, owner)
    check_writable(target, parameter, owner, probe=probe)
    return target


def check_name(path: str | os.PathLike, parameter: str, owner: str) -> Path:
    """``path`` as a :class:`~pathlib.Path` if its name can exist on this file system.

    Checked without touching the file system beyond ``pathconf``: no NUL byte, not empty,
    every component short enough with an atomic write's temporary suffix, the whole path
    short enough. Call it before any ``exists()``: a name too long makes that raise.
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ParameterError(parameter, owner, "a path (str or os.PathLike)", path)
    text = os.fspath(path)
    if not text or "\0" in text:
        raise ParameterError(parameter, owner, "a non-empty path without NUL bytes", text)
    target = Path(text).expanduser()
    _check_lengths(target, parameter, owner)
    return target


def check_writable(target: Path, parameter: str, owner: str, *, probe: bool = False) -> None:
    """Refuse ``target`` when the folder it goes in cannot be created or written.

    The folder is ``target`` itself when it is an existing folder, else its parent; a missing
    folder is judged by its nearest existing ancestor, which must be a folder that can be
    written. ``probe`` also creates and removes a temporary file there.
    """
    folder = nearest_existing(target if target.is_dir() else target.parent)
    if not folder.is_dir():
        raise ParameterError(
            parameter, owner, "a path whose folders are folders", str(target),
            f"{str(folder)!r} is a file, not a folder.",
        )  # fmt: skip
    reason = _unwritable(folder)
    if reason is None and probe:
        reason = _probe(folder, target)
    if reason:
        raise UnwritablePathError(
            parameter, owner, "a path in a folder that can be written", str(target),
            f"{str(folder)!r} {reason}; choose another location.",
        )  # fmt: skip


def check_not_input(
    target: Path, inputs: dict[str, str | os.PathLike], parameter: str, owner: str
) -> None:
    """Refuse an output that is one of the command's inputs (``{what: path}``), or lies
    inside one that is a folder featurecache owns, even with ``force``."""
    where = os.path.realpath(target)
    for what, path in inputs.items():
        source = os.path.realpath(path)
        if where == source or where.startswith(source + os.sep):
            raise ParameterError(
                parameter, owner, "a path that is not an input of this command", str(target),
                f"It is {what} ({str(path)!r}); choose another path.",
            )  # fmt: skip


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the current folder for a relative path)."""
    current = path
    while not current.exists():
        parent = current.parent
        if parent == current:
            break
        current = parent
    return current if str(current) else Path(".")


def _check_lengths(target: Path, parameter: str, owner: str) -> None:
    """Every component, with an atomic write's temporary suffix, fits ``NAME_MAX``."""
    encoded = os.fsencode(str(target.absolute()))
    limit_path = _limit(target, "PC_PATH_MAX", _PATH_MAX)
    if len(encoded) + 64 >= limit_path:
        raise ParameterError(
            parameter, owner, f"a path shorter than {limit_path - 64} bytes", _short(target),
            "Choose a shorter path.",
        )  # fmt: skip
    limit = _limit(target, "PC_NAME_MAX", _NAME_MAX)
    for part in target.parts[1:] if target.anchor else target.parts:
        if part in (".", ".."):
            continue
        longest = len(os.fsencode(temporary_path(Path(part)).name))
        if longest > limit:
            room = limit - (longest - len(os.fsencode(part)))
            raise ParameterError(
                parameter, owner, f"a path whose names have at most {room} bytes",
                _short(target), f"The name {_short(Path(part))!r} has {len(os.fsencode(part))} "
                f"bytes (the file system allows {limit}, less room for a temporary suffix); "
                "choose a shorter name.",
            )  # fmt: skip


def _limit(target: Path, name: str, default: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pathconf(nearest_existing(target.absolute()), name)) or default
    return default


def _short(path: Path, n: int = 60) -> str:
    text = str(path)
    return text if len(text) <= n else text[: n // 2] + "…" + text[-n // 2 :]


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be created in ``folder``, or None."""
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "is on a read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "cannot be written (no permission, or a read-only file system)"
    return None


def _probe(folder: Path, target: Path) -> str | None:
    """Create and remove a temporary file in ``folder``; why that failed, or None."""
    probe = temporary_path(folder / (target.name or "probe"))
    try:
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as error:
        return f"refuses new files ({os.strerror(error.errno or errno.EIO)})"
    os.close(descriptor)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None
