"""A job: the validated request prepared for one model of one cache, and the one way every
engine commits its shards."""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from featurecache.cache import FeatureConfig, ShardMeta, Store
from featurecache.data._datasets import Dataset
from featurecache.engines._runner import Plan, ShardResult, ShardRunner, layer_attrs
from featurecache.exceptions import CacheReadOnlyError, OutOfSpaceError
from featurecache.models._layers import LayerInfo, pooled_size
from featurecache.models._rebuild import rebuild_backbone
from featurecache.models._registry import LoadedBackbone

__all__ = ["Job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """Everything an engine needs to compute and commit a model's shards, checked before any work.

    A job travels to other processes (Ray workers) without its loaded backbone
    (:meth:`portable`); :meth:`runner` loads the backbone again there and refuses one
    whose configuration differs from ``config``.

    Attributes
    ----------
    store : Store
        The cache, for writing.
    dataset : Dataset
    model : str
        The model's name in the cache.
    layers : tuple of str
        The requested layers.
    infos : mapping of str to LayerInfo
        Every capturable layer of the backbone.
    pooling : str
    config : FeatureConfig
        The cache key of the model's features, compute dtype resolved.
    weights : str or None
        What :func:`featurecache.load_backbone` needs to build the same backbone again
        (a weights file as an absolute ``file:`` path).
    backbone : LoadedBackbone, optional
        The backbone loaded in this process; ``None`` in a portable job.
    """

    store: Store
    dataset: Dataset
    model: str
    layers: tuple[str, ...]
    infos: Mapping[str, LayerInfo]
    pooling: str
    config: FeatureConfig
    weights: str | None
    backbone: LoadedBackbone | None = field(default=None, repr=False, compare=False)
    #: How the dataset differed from the cache's samples, in words.
    changes: str = field(default="no change", compare=False)

    def plan(self) -> Plan:
        """The shards whose requested layers are not all committed yet."""
        table = self.store.read_samples(identity=False)
        done = self.store.done_layers(self.model)
        work = []
        for shard in range(len(table.shard_ranges())):
            missing = tuple(sorted(set(self.layers) - done.get(shard, set())))
            if missing:
                work.append((shard, missing))
        starts = () if table.starts is None else tuple(int(s) for s in table.starts)
        return Plan(table.shard_size, len(table), tuple(work), starts)

    def declare(self) -> list[str]:
        """Record the requested layers before the first shard commits: readers list them
        from the first second of a run (every row pending). Returns the layers new to the
        record, for :meth:`withdraw`."""
        declared = {}
        for layer in self.layers:
            attrs = layer_attrs(self.infos[layer], self.pooling)
            declared[layer] = {
                **attrs,
                "n_features": pooled_size(self.infos[layer], attrs["pooling_applied"]),
                "dtype": self.config.dtype,
            }
        return self.store.declare_layers(self.model, declared)

    def withdraw(self, layers: Sequence[str]) -> None:
        """After a failed run: forget those of ``layers`` that have no committed shard."""
        self.store.withdraw_layers(self.model, layers)

    def portable(self) -> Job:
        """This job without its loaded backbone, to send to another process."""
        return dataclasses.replace(self, backbone=None)

    def runner(self, device: torch.device) -> ShardRunner:
        """The :class:`ShardRunner` that computes this job's shards on ``device``."""
        backbone = self.backbone if self.backbone is not None else self._load_backbone()
        return ShardRunner(backbone, self.infos, self.pooling, self.config, device)

    def _load_backbone(self) -> LoadedBackbone:
        """Load the backbone in this process and check it is the driver's, number for number."""
        return rebuild_backbone(
            self.config,
            weights=self.weights,
            mismatch=f"the worker on {socket.gethostname()} built {self.config.backbone} with "
            "another configuration than the driver",
            fix="install the same featurecache, torch, torchvision and weights files on every "
            "node.",
        )

    def write(self, result: ShardResult, runner: ShardRunner) -> ShardMeta:
        """Write one shard's file atomically and return what the commit log will record.

        Any process may write (a Ray worker writes its own shards); a written shard counts
        once :meth:`publish` logs it.
        """
        return self.store.write_shard(
            self.model, result.shard, result.start, result.status, result.reasons,
            result.features, runner.layer_attrs, self.config, runner.provenance,
            views=result.views,
        )  # fmt: skip

    def publish(self, metas: Sequence[ShardMeta]) -> None:
        """Commit written shards: one append to the model's log, whatever the cache's size.

        Only the process holding the model's writer lock publishes. The index follows at
        most every few seconds and at :meth:`finish`.
        """
        self.store.publish(self.model, metas)
        self.store.rebuild_index_if_due()
        for meta in metas:
            logger.info(
                "committed shard %d of %s (%d rows)", meta.shard, self.model, meta.stop - meta.start
            )

    def commit(self, result: ShardResult, runner: ShardRunner) -> None:
        """Write one shard and log it: the in-process form of write + publish."""
        self.publish([self.write(result, runner)])

    def compact(self) -> None:
        """After a run: pack the model's shard files into segments (the writer lock held).

        Out of disk space, the shards stay as they are (they read the same) and the next
        run tries again. Without locks nothing guarantees this run is the model's only
        writer, and packing would delete shard files another writer may be reading: the
        shards stay as they are (``Store.compact`` packs them when one writer is sure).
        """
        if not self.store.locking:
            logger.info("without locks, the shards of %s stay uncompacted", self.model)
            return
        try:
            self.store.compact_held(self.model)
        except OutOfSpaceError as error:
            logger.warning("%s; the shards of %s stay uncompacted", error, self.model)

    def finish(self) -> None:
        """At the end of a run, finished or failed: bring the index up to the log."""
        self.store.rebuild_index()

    def refresh(self) -> None:
        """On a cache hit: rebuild a stale index, and remove temporaries of dead writers.

        A current index and no litter mean nothing is written at all; a read-only cache
        with a stale index is left as it is (readers take its folder anyway).
        """
        if self.store.index_is_current():
            self.store.remove_stale_temporaries()
            return
        try:
            self.store.check_writable()
        except CacheReadOnlyError:
            logger.warning("the index of read-only cache %s lags its folder", self.store.path)
            return
        self.store.rebuild_index()  # also removes temporaries of dead writers
