"""The engine protocol: an engine decides only where shards run.

Everything else is written once and shared by every engine: what a shard is
(:class:`ShardRunner`), how the compute dtype is chosen (:func:`resolve_dtype`,
evaluated where the shards run), how a shard is committed (:meth:`Job.write` then
:meth:`Job.publish`), and what a cache hit does (:meth:`Job.refresh`, called by
:func:`featurecache.extract` without asking the engine).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch

from featurecache.cache import FeatureConfig
from featurecache.engines._job import Job
from featurecache.engines._options import RunOptions
from featurecache.engines._runner import Plan

__all__ = ["Engine", "Session"]


@runtime_checkable
class Engine(Protocol):
    """Where the shards of :func:`featurecache.extract` run (:class:`LocalEngine`, :class:`RayEngine`)."""

    def session(self, options: RunOptions) -> AbstractContextManager[Session]:
        """Check the engine's settings against ``options`` and hold what one call needs.

        Raises before any work when they do not fit; resources (a Ray connection) are
        taken only when first needed and released on exit.
        """
        ...


class Session(Protocol):
    """One extraction's hold on an engine."""

    #: The device the shards compute on: the one the dtype rule is applied to.
    device: torch.device

    def resolve_dtype(self, dtype: str, previous: FeatureConfig | None) -> str:
        """:func:`featurecache.engines._runner.resolve_dtype`, evaluated where the shards run."""
        ...

    def run(self, job: Job, plan: Plan) -> int:
        """Compute and commit every shard of ``plan``; return how many were committed."""
        ...

    def describe(self) -> str:
        """Where the shards ran, for :attr:`ExtractResult.device` (``cpu``, ``ray 2 x cuda``)."""
        ...
