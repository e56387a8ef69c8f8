"""Worker processes that end with the process that started them.

A worker started by a fit (joblib's loky or multiprocessing backends) outlives a parent
killed with SIGKILL: it keeps computing, holding the parent's stdout, so that
``featurecache fit ... | tee log`` never ends. :func:`die_with_parent`, a worker
initializer, asks the kernel to end the worker with its parent. This module imports
nothing heavy: a worker unpickles the initializer before it can run it, and every second
spent importing is a second it would outlive a parent killed meanwhile.
"""

from __future__ import annotations

import os
import signal
import sys
import time

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when ``parent`` ends.

    On Linux the worker asks the kernel for SIGKILL at its parent's death
    (``PR_SET_PDEATHSIG``); elsewhere a daemon thread checks the parent every second. Either
    way a worker whose parent is already gone ends at once.

    Parameters
    ----------
    parent : int
        The pid of the process that starts the workers (``os.getpid()`` there).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        import threading

        threading.Thread(target=_watch, args=(parent,), daemon=True, name="parent-watch").start()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _watch(parent: int) -> None:
    """End this process once ``parent`` is gone (it is then adopted by another)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
