"""The in-process engine: shards run in this process, one after the other."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from featurecache.cache import FeatureConfig
from featurecache.core._validation import check_optional_int
from featurecache.engines._job import Job
from featurecache.engines._options import RunOptions, resolve_loader_workers
from featurecache.engines._runner import Plan, resolve_device, resolve_dtype

__all__ = ["LocalEngine"]


@dataclass(frozen=True)
class LocalEngine:
    """Compute every shard in this process (the default engine of :func:`featurecache.extract`).

    Data loading uses ``options.workers`` processes (on the CPU at the lowest priority, so the
    forward keeps the cores); each shard is committed by one line of the model's commit log
    as soon as it is written, and the index is rebuilt from the logs every few seconds and
    at the end of the run.

    Parameters
    ----------
    forward_threads : int, optional
        Threads of the forward pass on the CPU while it runs (restored after); torch's own
        count (one per core) by default. Fewer threads leave cores to the loader processes,
        which decode on the same cores: ``cores - k`` (``benchmarks/bench_scale.py --k``).
    """

    forward_threads: int | None = None

    def __post_init__(self) -> None:
        check_optional_int(self.forward_threads, "forward_threads", "LocalEngine", low=1)

    @contextlib.contextmanager
    def session(self, options: RunOptions) -> Iterator[_LocalSession]:
        yield _LocalSession(options, resolve_device(options.device), self.forward_threads)


@dataclass(frozen=True)
class _LocalSession:
    options: RunOptions
    device: torch.device
    forward_threads: int | None = None

    def resolve_dtype(self, dtype: str, previous: FeatureConfig | None) -> str:
        return resolve_dtype(dtype, self.device, previous)

    def run(self, job: Job, plan: Plan) -> int:
        with _threads(self.forward_threads):
            return self._run(job, plan)

    def _run(self, job: Job, plan: Plan) -> int:
        options = self.options
        runner = job.runner(self.device)
        loaders = resolve_loader_workers(options.workers, job.dataset, device=self.device.type)
        results = runner.run(
            job.dataset, plan, options.batch_size, loaders, options.progress, job.model
        )
        written = 0
        for result in results:
            job.commit(result, runner)
            written += 1
        return written

    def describe(self) -> str:
        return str(self.device)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the block (unchanged for ``None``)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
