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

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Worker initializer: have the kernel end this worker when ``parent`` ends.

    On Linux the worker asks for SIGKILL at its parent's death (``PR_SET_PDEATHSIG``), and
    ends at once when ``parent`` is already gone. Elsewhere it does nothing.

    Parameters
    ----------
    parent : int
        The pid of the process that starts the workers (``os.getpid()`` there).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
