"""How one extraction runs: settings that never change the stored numbers (torch-free)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# The request's vocabularies, re-exported for the engines: their home is the spec.
from featurecache.core._spec import COMPUTE_DTYPE_NAMES, DECODE_MODES, DEFAULT_DECODE, STORE_DTYPES
from featurecache.core._validation import ParameterError, check_choice, check_int, check_workers

__all__ = [
    "RunOptions",
    "DEVICES",
    "MAX_LOADERS",
    "resolve_loader_workers",
    "COMPUTE_DTYPE_NAMES",
    "STORE_DTYPES",
    "DECODE_MODES",
    "DEFAULT_DECODE",
]

DEVICES = ("auto", "cpu", "cuda", "mps")
#: Most data-loading processes ``workers="auto"`` starts.
MAX_LOADERS = 32
_OWNER = "RunOptions"


@dataclass(frozen=True)
class RunOptions:
    """Execution settings of :func:`featurecache.extract`; none of them enters the cache key.

    Two runs that differ only in these settings write the same numbers, so a cache
    extracted with one set is a hit for any other.

    Parameters
    ----------
    batch_size : int
        Images per forward pass.
    workers : int or "auto"
        Data-loading processes (of this process, or of each Ray worker). ``auto``: one per CPU
        at the lowest priority when the forward runs on the CPU, one fewer than the CPUs
        beside an accelerator; at least 1 and at most 32, and 0 for in-memory arrays
        (:func:`resolve_loader_workers`). The processes persist from shard to shard of a run.
    device : {"auto", "cpu", "cuda", "mps"}
        Where the forward pass runs; ``auto`` picks CUDA, then MPS, then the CPU (on Ray,
        ``cuda`` when the workers reserve GPUs).
    shard_size : int
        Rows per shard (unit of commit) for a new cache; an existing cache keeps its own.
    locking : bool, optional
        File locks; ``None`` reads ``FEATURECACHE_NO_LOCKING``.
    progress : bool
        Show a progress bar on stderr.

    Raises
    ------
    InvalidArgumentError
        When a setting is out of range (``batch_size=True`` included: a bool is no int).
    """

    batch_size: int = 64
    workers: int | str = "auto"
    device: str = "auto"
    shard_size: int = 1024
    locking: bool | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch_size", _OWNER, low=1)
        check_workers(self.workers, "workers", _OWNER)
        check_choice(self.device, "device", _OWNER, DEVICES)
        check_int(self.shard_size, "shard_size", _OWNER, low=1)
        if not (self.locking is None or isinstance(self.locking, bool)):
            raise ParameterError("locking", _OWNER, "None, True or False", self.locking)
        if not isinstance(self.progress, bool):
            raise ParameterError("progress", _OWNER, "True or False", self.progress)


def resolve_loader_workers(
    workers: int | str, dataset: Any, cpus: float | None = None, device: str = "cpu"
) -> int:
    """Data-loading processes for ``workers`` reading ``dataset``: ``auto`` scales with the cores.

    ``auto``: one per core (the CPUs this process may use by default, or ``cpus``) when the
    forward runs on the CPU, where the loaders run at the lowest priority and decode in the
    time the forward leaves them (``data_loader`` in :mod:`featurecache.engines._runner`);
    one fewer than the cores when the forward runs on an accelerator, leaving a core to feed
    it. At least 1 and at most :data:`MAX_LOADERS`; 0 for in-memory arrays
    (``dataset.arrays``), which need no decoding.
    """
    if workers != "auto":
        return int(workers)
    if dataset.arrays is not None:
        return 0
    available = _usable_cpus() if cpus is None else int(cpus)
    spare = 0 if device == "cpu" else 1
    return max(1, min(MAX_LOADERS, available - spare))


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2
