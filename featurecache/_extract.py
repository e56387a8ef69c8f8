"""Extraction: run a frozen backbone over a dataset and commit features shard by shard."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from featurecache._data import Dataset, load_dataset
from featurecache._validation import ParameterError, check_choice, check_int, check_workers
from featurecache.cache import FeatureConfig, Store, check_config
from featurecache.engines._runner import (
    COMPUTE_DTYPES,
    Plan,
    ShardResult,
    ShardRunner,
    resolve_device,
    resolve_dtype,
    resolve_loader_workers,
)
from featurecache.models._layers import POOL_METHODS, LayerInfo, check_layers, default_pool
from featurecache.models._registry import LoadedBackbone, load_backbone

__all__ = [
    "extract",
    "prepare",
    "Job",
    "ExtractResult",
    "DEFAULT_MODEL",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "efficientnet_lite0"
STORE_DTYPES = ("float32", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class ExtractResult:
    """What one call of :func:`extract` did.

    ``computed`` lists the layers this call computed; it is empty on a cache hit.
    """

    cache: Path
    model: str
    layers: tuple[str, ...]
    computed: tuple[str, ...]
    n_samples: int
    n_ok: int
    n_failed: int
    rows_computed: int
    shards_written: int
    seconds: float
    device: str = ""
    compute_dtype: str = ""

    @property
    def hit(self) -> bool:
        return self.shards_written == 0

    @property
    def images_per_second(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0


def extract(
    data: str | os.PathLike | Dataset,
    cache: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    layers: Sequence[str] | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    workers: int | str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    store_dtype: str = "float32",
    name: str | None = None,
    split: str | None = None,
    seed: int = 0,
    shard_size: int = 1024,
    locking: bool | None = None,
    progress: bool = False,
) -> ExtractResult:
    """Extract features of ``layers`` of a frozen ``model`` over ``data`` into ``cache``.

    Parameters
    ----------
    data : str, path or Dataset
        See :func:`featurecache.load_dataset`.
    cache : str or path
        The cache index file (``.h5``); created if missing, resumed if present.
    model : str
        A name from :func:`featurecache.list_backbones`.
    weights : str, optional
        ``DEFAULT``, a torchvision weights name, ``none`` (seeded random init) or a
        local state-dict file. Defaults to the backbone's default.
    layers : sequence of str, optional
        Names from :func:`featurecache.list_layers`; all are captured in one forward
        pass. Defaults to the backbone's default layers.
    pool : str, optional
        ``avg`` (default), ``max``, ``avgmax`` or ``flatten`` for conv maps; ``cls``
        (default) or ``mean`` for token outputs.
    image_size : int, optional
        Crop size S; the backbone's default when omitted.
    batch_size, workers, device, locking, progress
        Execution settings; they never change the stored numbers.
    dtype : {"auto", "float32", "bfloat16", "float16"}
        Autocast dtype of the forward pass. ``auto`` keeps the cached model's, else
        bfloat16 where the device supports it and float32 elsewhere.
    store_dtype : {"float32", "float16"}
        Dtype of the stored features.
    name : str, optional
        Name of the model in the cache; the backbone name by default.
    split : str, optional
        ``random:FRACTION`` or ``none`` for datasets without their own split.
    seed : int
        Seed of the random split and of ``weights="none"``.
    shard_size : int
        Rows per shard (unit of commit) for a new cache; an existing cache keeps its own.

    Returns
    -------
    ExtractResult

    Raises
    ------
    InvalidArgumentError, UnknownNameError, ConfigMismatchError, DatasetChangedError
        Before any work, when the arguments, dataset or cache do not fit.
    BatchError
        When a batch raises or yields NaN/Inf; shards committed before it are kept.
    CacheLockedError
        When another process writes the same model into the same cache.
    """
    started = time.perf_counter()
    job = prepare(
        data, cache, model=model, weights=weights, layers=layers, pool=pool, image_size=image_size,
        device=device, dtype=dtype, store_dtype=store_dtype, name=name, split=split, seed=seed,
        shard_size=shard_size, locking=locking, batch_size=batch_size, workers=workers,
    )  # fmt: skip
    with job.store.lock_model(job.model):
        plan = job.plan()
        written = 0
        if plan.work:
            runner = ShardRunner(job.backbone, job.infos, job.pooling, job.config, job.device)
            workers = resolve_loader_workers(workers, job.dataset)
            for result in runner.run(job.dataset, plan, batch_size, workers, progress, job.model):
                job.commit(result, runner)
                written += 1
        elif not job.store.index_is_current():
            job.store.rebuild_index()  # also removes temporaries of dead writers
        else:
            job.store.remove_stale_temporaries()
    return job.result(plan, written, time.perf_counter() - started)


@dataclass
class Job:
    """A validated extraction request: everything an engine needs, checked before any work."""

    store: Store
    dataset: Dataset
    backbone: LoadedBackbone
    infos: dict[str, LayerInfo]
    layers: tuple[str, ...]
    model: str
    pooling: str
    config: FeatureConfig
    device: torch.device

    @property
    def compute_dtype(self) -> str:
        return self.config.compute_dtype

    def plan(self) -> Plan:
        root = self.store.read_root_attrs()
        return make_plan(
            self.store, self.model, self.layers, int(root["shard_size"]), len(self.dataset)
        )

    def commit(self, result: ShardResult, runner: ShardRunner) -> None:
        """Write one shard file and list it in the index (the only way work is committed)."""
        self.store.write_shard(
            self.model, result.shard, result.start, result.status, result.reasons,
            result.features, runner.layer_attrs, self.config, runner.provenance,
        )  # fmt: skip
        self.store.rebuild_index()
        logger.info(
            "committed shard %d of %s (%d rows)", result.shard, self.model, len(result.status)
        )

    def result(self, plan: Plan, written: int, seconds: float) -> ExtractResult:
        n_ok, n_failed = self.store.status_counts(self.model, self.layers)
        return ExtractResult(
            cache=self.store.path,
            model=self.model,
            layers=self.layers,
            computed=tuple(sorted({layer for _, missing in plan.work for layer in missing})),
            n_samples=len(self.dataset),
            n_ok=n_ok,
            n_failed=n_failed,
            rows_computed=plan.n_rows,
            shards_written=written,
            seconds=seconds,
            device=str(self.device),
            compute_dtype=self.compute_dtype,
        )


def prepare(
    data, cache, *, model, weights, layers, pool, image_size, device, dtype, store_dtype,
    name, split, seed, shard_size, locking, batch_size=1, workers=0,
) -> Job:  # fmt: skip
    """Validate every argument, then create the sample table and register the model.

    Nothing is written unless every check passes.
    """
    _check_settings(batch_size, workers, device, dtype, store_dtype, shard_size, name)
    store = Store(cache, locking=locking)
    store.check_path()
    dataset = load_dataset(data, split=split, seed=seed)
    if store.has_samples():
        store.check_dataset(dataset)
    backbone = load_backbone(model, weights, seed=seed, image_size=image_size)
    infos = {info.name: info for info in backbone.layers}
    requested = tuple(dict.fromkeys(layers or backbone.default_layers))
    check_layers(list(infos.values()), requested, model=model)
    pooling = _resolve_pool(pool, [infos[layer] for layer in requested])
    model_name = name or model
    torch_device = resolve_device(device)
    previous = store.read_config(model_name) if store.has_samples() else None
    compute_dtype = resolve_dtype(dtype, torch_device, previous)
    config = feature_config(backbone, pooling, store_dtype, compute_dtype)
    if previous is not None:
        check_config(model_name, previous, config, store.path)
    store.create_samples(dataset, shard_size)
    store.register_model(model_name, config)
    return Job(
        store,
        dataset,
        backbone,
        infos,
        requested,
        model_name,
        pooling,
        config,
        torch_device,
    )


def make_plan(
    store: Store, model: str, layers: Sequence[str], shard_size: int, n_samples: int
) -> Plan:
    """List the shards whose requested layers are not all committed yet."""
    done = store.done_layers(model)
    n_shards = -(-n_samples // shard_size)
    work = []
    for shard in range(n_shards):
        missing = tuple(sorted(set(layers) - done.get(shard, set())))
        if missing:
            work.append((shard, missing))
    return Plan(shard_size, n_samples, tuple(work))


def feature_config(
    backbone: LoadedBackbone, pooling: str, store_dtype: str, compute_dtype: str
) -> FeatureConfig:
    """The cache key of a loaded backbone's features, with its provenance."""
    return FeatureConfig(
        backbone=backbone.name,
        weights_sha256=backbone.weights_sha256,
        preprocessing=backbone.preprocess.to_dict(),
        pooling=pooling,
        dtype=store_dtype,
        compute_dtype=compute_dtype,
        weights=backbone.weights,
        seed=backbone.seed,
        image_size=backbone.image_size,
        source=backbone.source,
        library=backbone.library,
        revision=backbone.revision,
    )


def _resolve_pool(pool: str | None, infos: Sequence[LayerInfo]) -> str:
    kinds = {info.kind for info in infos}
    if pool is None:
        return default_pool("tokens" if kinds in ({"tokens"}, {"tokens", "vector"}) else "map")
    accepted = {kind: POOL_METHODS[kind] for kind in ("map", "tokens")}  # vectors take no --pool
    if not any(pool in accepted.get(kind, ()) for kind in kinds):
        options = sorted({m for kind in kinds for m in accepted.get(kind, ())}) or ["none needed"]
        raise ParameterError(
            "pool", "extract",
            f"one of {', '.join(options)} for the requested layers ({', '.join(sorted(kinds))} outputs)",
            pool,
        )  # fmt: skip
    return pool


def _check_settings(batch_size, workers, device, dtype, store_dtype, shard_size, name) -> None:
    check_int(batch_size, "batch_size", "extract", low=1)
    check_workers(workers, "workers", "extract")
    check_choice(device, "device", "extract", DEVICES)
    check_choice(dtype, "dtype", "extract", ("auto", *COMPUTE_DTYPES))
    check_choice(store_dtype, "store_dtype", "extract", STORE_DTYPES)
    check_int(shard_size, "shard_size", "extract", low=1)
    if name is not None and not (isinstance(name, str) and _NAME.match(name)):
        raise ParameterError(
            "name", "extract", "letters, digits and _.+- (it names a folder)", name
        )
