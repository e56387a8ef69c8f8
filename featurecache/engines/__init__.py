"""Stage 1, where shards run: one :class:`ShardRunner` code path, engines as plug-ins.

:class:`RunOptions` holds the settings that never change the stored numbers;
:class:`LocalEngine` and :class:`RayEngine` implement :class:`Engine`. Names load on
first use, so ``RunOptions`` is available without importing torch.
"""

from __future__ import annotations

from featurecache.core._lazy import attach

_LAZY = {
    "RunOptions": "featurecache.engines._options",
    "Engine": "featurecache.engines._engine",
    "Session": "featurecache.engines._engine",
    "LocalEngine": "featurecache.engines._local",
    "RayEngine": "featurecache.engines._ray",
    "Job": "featurecache.engines._job",
    "ShardRunner": "featurecache.engines._runner",
    "Plan": "featurecache.engines._runner",
    "ShardResult": "featurecache.engines._runner",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
