"""The in-process engine: shards run in this process, one after the other."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from featurecache.cache import FeatureConfig
from featurecache.engines._job import Job
from featurecache.engines._options import RunOptions
from featurecache.engines._runner import (
    Plan,
    resolve_device,
    resolve_dtype,
    resolve_loader_workers,
)

__all__ = ["LocalEngine"]


@dataclass(frozen=True)
class LocalEngine:
    """Compute every shard in this process (the default engine of :func:`featurecache.extract`).

    Data loading uses ``options.workers`` processes; each shard is listed in the index as
    soon as it is written.
    """

    @contextlib.contextmanager
    def session(self, options: RunOptions) -> Iterator[_LocalSession]:
        yield _LocalSession(options, resolve_device(options.device))


@dataclass(frozen=True)
class _LocalSession:
    options: RunOptions
    device: torch.device

    def resolve_dtype(self, dtype: str, previous: FeatureConfig | None) -> str:
        return resolve_dtype(dtype, self.device, previous)

    def run(self, job: Job, plan: Plan) -> int:
        options = self.options
        runner = job.runner(self.device)
        loaders = resolve_loader_workers(options.workers, job.dataset)
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
