"""How the command line ends: one line on stderr and an exit code for any error, a closed
pipe, or a termination signal.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator

from featurecache.core._validation import AdviceError, ParameterError
from featurecache.exceptions import FeatureCacheError

__all__ = ["CLOSED_PIPE", "Terminated", "closed_pipe", "describe", "fail", "sigterm_interrupts"]


CLOSED_PIPE = 141


_BAD_PATH = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST}


def _message(error: FeatureCacheError, flags: dict[str, str]) -> str:
    """The error's line, with a parameter's name turned into the flag the user typed."""
    if isinstance(error, ParameterError):
        flag = flags.get(f"{error.owner}.{error.parameter}") or flags.get(error.parameter)
        if flag:
            return error.render(flag, cli=True)
    if isinstance(error, AdviceError):
        return error.render(lambda parameter, value: _spelled(flags, parameter, value))
    return str(error)


def _spelled(flags: dict[str, str], parameter: str, value) -> str:
    """``--allow-partial`` for ``allow_partial=True``, ``--cv 3`` for ``cv=3``."""
    flag = flags.get(parameter)
    if flag is None:
        return f"{parameter}={value!r}"
    return flag if value is True else f"{flag} {value}"


def fail(line: str, code: int) -> int:
    print(f"featurecache: error: {_one_line(line)}", file=sys.stderr)
    return code


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def describe(error: Exception, flags: dict[str, str]) -> tuple[str, int]:
    """The line and exit code of any error: ours, the OS's, memory, or a bug."""
    if isinstance(error, FeatureCacheError):
        return _message(error, flags), error.exit_code
    if _out_of_memory(error):
        return (
            f"out of memory ({_first_line(error)}); lower --batch-size or --image-size, or "
            "run on a machine with more memory.",
            1,
        )
    if isinstance(error, OSError):
        return _os_message(error), 2 if error.errno in _BAD_PATH else 1
    return (
        f"unexpected {type(error).__name__}: {_first_line(error)}. This is a bug in "
        "featurecache: re-run with --debug for the traceback and report it.",
        1,
    )


def _out_of_memory(error: Exception) -> bool:
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or (isinstance(error, RuntimeError) and "allocate memory" in str(error))
    )


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


_OS_ADVICE = {
    errno.EROFS: "write somewhere else",
    errno.EACCES: "choose a location you may write, or fix its permissions",
    errno.EPERM: "choose another location",
    errno.ENOSPC: "free space and re-run the same command",
    errno.EDQUOT: "free space and re-run the same command",
    errno.EFBIG: "raise the file size limit and re-run the same command",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOENT: "check that the path exists",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "name a file, not a folder",
}


def _os_message(error: OSError) -> str:
    """``cannot write 'PATH': REASON; ADVICE`` for an error of the operating system."""
    where = f" {str(error.filename)!r}" if error.filename else ""
    reason = error.strerror or _first_line(error)
    advice = _OS_ADVICE.get(error.errno, "check the path and the file system, then re-run")
    return f"the operating system refused{where}: {reason}; {advice}."


def closed_pipe() -> int:
    """stdout was closed by its reader: stop quietly, and keep the interpreter's last flush
    from reporting it again."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return CLOSED_PIPE


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an interrupt."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into an interrupt while a command runs.

    The default action kills this process alone: joblib's worker processes would keep
    computing their task for minutes. An interrupt unwinds like Ctrl-C instead, and joblib
    terminates its workers on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
