"""Extraction: run a frozen backbone over a dataset and commit features shard by shard."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from featurecache import __version__
from featurecache._backbones import LoadedBackbone, load_backbone
from featurecache._data import Dataset, load_dataset
from featurecache._fuse import fuse_conv_bn
from featurecache._layers import (
    POOL_METHODS,
    LayerInfo,
    capture,
    check_layers,
    default_pool,
    pool,
    pooled_size,
)
from featurecache._store import FORMAT_VERSION, STATUS_FAILED, STATUS_OK, Store, check_config
from featurecache.exceptions import BatchError, InvalidArgumentError

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
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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


@dataclass(frozen=True)
class Plan:
    """The shards still to compute, each with the layers it lacks."""

    shard_size: int
    n_samples: int
    work: tuple[tuple[int, tuple[str, ...]], ...]

    def rows(self, shard: int) -> range:
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.n_samples))

    @property
    def n_rows(self) -> int:
        return sum(len(self.rows(shard)) for shard, _ in self.work)


@dataclass(frozen=True)
class ShardResult:
    shard: int
    start: int
    status: np.ndarray
    reasons: list[str]
    features: dict[str, np.ndarray] = field(repr=False)


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
            runner = ShardRunner(
                job.backbone, job.infos, job.pooling, job.config, job.device, job.compute_dtype
            )
            workers = _resolve_workers(workers, job.dataset)
            for result in runner.run(job.dataset, plan, batch_size, workers, progress, job.model):
                job.commit(result, runner.layer_attrs)
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
    config: dict
    device: torch.device
    compute_dtype: str

    def plan(self) -> Plan:
        root = self.store.read_root_attrs()
        return make_plan(
            self.store, self.model, self.layers, int(root["shard_size"]), len(self.dataset)
        )

    def commit(self, result: ShardResult, layer_attrs: Mapping[str, Mapping]) -> None:
        """Write one shard file and list it in the index (the only way work is committed)."""
        self.store.write_shard(
            self.model, result.shard, result.start, result.status, result.reasons,
            result.features, layer_attrs, self.config,
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
    config = build_config(backbone, pooling, store_dtype, compute_dtype)
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
        compute_dtype,
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


def build_config(
    backbone: LoadedBackbone, pooling: str, store_dtype: str, compute_dtype: str
) -> dict:
    """The model configuration: everything that changes the stored numbers."""
    return {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "seed": backbone.seed,
        "preprocessing": backbone.preprocess.to_dict(),
        "image_size": backbone.image_size,
        "pooling": pooling,
        "dtype": store_dtype,
        "compute_dtype": compute_dtype,
        "format_version": FORMAT_VERSION,
        "featurecache_version": __version__,
    }


class ShardRunner:
    """Runs the frozen backbone over shards and returns their features in memory.

    The in-process engine and the Ray workers both use it, so every engine
    computes a shard the same way.
    """

    def __init__(
        self,
        backbone: LoadedBackbone,
        infos: Mapping[str, LayerInfo],
        pooling: str,
        config: Mapping,
        device: torch.device,
        compute_dtype: str,
    ) -> None:
        self.backbone = backbone
        self.infos = dict(infos)
        self.pooling = pooling
        self.config = dict(config)
        self.device = device
        self.compute_dtype = COMPUTE_DTYPES[compute_dtype]
        self.store_dtype = np.dtype(config["dtype"])
        self.module = backbone.module.to(device)
        if device.type in ("cpu", "cuda"):
            self.module = self.module.to(memory_format=torch.channels_last)
        self._models: dict[tuple[str, ...], torch.nn.Module] = {}

    def model_for(self, layers: tuple[str, ...]) -> torch.nn.Module:
        """The module to run for these layers: BatchNorm folded into convs where verified."""
        if layers not in self._models:
            size = self.backbone.image_size
            generator = torch.Generator().manual_seed(0)
            probe = torch.randn(2, 3, size, size, generator=generator).to(self.device)
            if self.device.type in ("cpu", "cuda"):
                probe = probe.contiguous(memory_format=torch.channels_last)
            self._models[layers] = fuse_conv_bn(self.module, layers, probe)
        return self._models[layers]

    @property
    def layer_attrs(self) -> dict[str, dict]:
        return {
            name: {
                "depth": float(info.depth),
                "depth_index": int(info.depth_index),
                "raw_shape": np.asarray(info.shape, dtype=np.int64),
                "kind": info.kind,
                "pooling_applied": _pool_for(info, self.pooling),
            }
            for name, info in self.infos.items()
        }

    def run(
        self,
        dataset: Dataset,
        plan: Plan,
        batch_size: int,
        workers: int,
        progress: bool = False,
        label: str | None = None,
    ) -> Iterator[ShardResult]:
        """Yield one :class:`ShardResult` per shard of the plan, in order.

        ``label`` names the progress bar (the model's name in the cache); the backbone by default.
        """
        from tqdm.auto import tqdm

        bar = tqdm(
            total=plan.n_rows,
            unit="img",
            desc=label or self.backbone.name,
            disable=not progress,
            smoothing=0.1,
        )
        groups: dict[tuple[str, ...], list[int]] = {}
        for shard, missing in plan.work:
            groups.setdefault(missing, []).append(shard)
        try:
            for missing, shards in groups.items():
                yield from self._run_group(dataset, plan, shards, missing, batch_size, workers, bar)
        finally:
            bar.close()

    def _run_group(
        self, dataset, plan, shards, layers, batch_size, workers, bar
    ) -> Iterator[ShardResult]:
        batches = [
            list(rows[i : i + batch_size]) for shard in shards for rows in [plan.rows(shard)]
            for i in range(0, len(rows), batch_size)
        ]  # fmt: skip
        loader = torch.utils.data.DataLoader(
            _Images(dataset, self.backbone.preprocess),
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        dims = {
            layer: pooled_size(self.infos[layer], _pool_for(self.infos[layer], self.pooling))
            for layer in layers
        }
        shard_iter = iter(shards)
        current = None
        module = self.model_for(tuple(layers))
        with torch.inference_mode(), capture(module, layers) as outputs:
            for rows, images, ok, reasons in loader:
                if current is None:
                    shard = next(shard_iter)
                    current = _ShardBuffer(shard, plan.rows(shard), dims, self.store_dtype)
                features = {}
                if ok.any():
                    features = self._forward(module, images, rows[ok], dataset, layers, outputs)
                current.fill(rows, ok, reasons, features)
                bar.update(len(rows))
                if current.complete:
                    yield current.result()
                    current = None

    def _forward(self, module, images, rows, dataset, layers, outputs) -> dict[str, np.ndarray]:
        non_blocking = self.device.type == "cuda"
        x = images.to(self.device, non_blocking=non_blocking)
        if self.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        enabled = self.compute_dtype != torch.float32
        try:
            with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=enabled):
                module(x)
            pooled = {
                layer: pool(
                    outputs[layer],
                    _pool_for(self.infos[layer], self.pooling),
                    self.infos[layer].kind,
                )
                for layer in layers
            }
        except Exception as error:
            raise BatchError(
                f"a batch of {len(rows)} samples failed in {self.backbone.name} "
                f"({type(error).__name__}: {error}); sample ids: {_ids(dataset, rows)}; nothing of "
                "this batch was committed and earlier shards are kept."
            ) from error
        result = {}
        for layer in sorted(pooled, key=lambda name: self.infos[name].depth_index):
            values = pooled[layer].float().cpu()
            finite = torch.isfinite(values).all(dim=1)
            if not bool(finite.all()):
                bad = rows[~finite.numpy()]
                raise BatchError(
                    f"layer {layer!r} of {self.backbone.name} produced NaN or Inf for {len(bad)} samples "
                    f"(ids: {_ids(dataset, bad)}); nothing of this batch was committed and earlier "
                    "shards are kept."
                )
            result[layer] = values.numpy()
        return result


class _ShardBuffer:
    """Preallocated output of one shard, filled batch by batch."""

    def __init__(self, shard: int, rows: range, dims: Mapping[str, int], dtype: np.dtype) -> None:
        self.shard, self.start, n = shard, rows.start, len(rows)
        self.status = np.zeros(n, dtype=np.int8)
        self.reasons = [""] * n
        self.features = {
            layer: np.full((n, dim), np.nan, dtype=dtype) for layer, dim in dims.items()
        }
        self.filled = 0

    def fill(self, rows: np.ndarray, ok: np.ndarray, reasons: list[str], features: Mapping) -> None:
        local = rows - self.start
        self.status[local] = np.where(ok, STATUS_OK, STATUS_FAILED)
        for i, reason in zip(local, reasons, strict=True):
            self.reasons[i] = reason
        for layer, values in features.items():
            self.features[layer][local[ok]] = values
        self.filled += len(rows)

    @property
    def complete(self) -> bool:
        return self.filled == len(self.status)

    def result(self) -> ShardResult:
        return ShardResult(self.shard, self.start, self.status, self.reasons, self.features)


class _Images(torch.utils.data.Dataset):
    """Decodes and preprocesses one sample; a bad image becomes a failed row, not an error."""

    def __init__(self, dataset: Dataset, preprocess) -> None:
        self.dataset = dataset
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int):
        try:
            return row, self.preprocess(self.dataset.load_image(row)), ""
        except Exception as error:  # any decoding failure is recorded, with its reason
            return row, None, _reason(error)


def _collate(items):
    rows = np.array([row for row, _, _ in items], dtype=np.int64)
    ok = np.array([image is not None for _, image, _ in items], dtype=bool)
    images = [image for _, image, _ in items if image is not None]
    stacked = torch.stack(images) if images else None
    return rows, stacked, ok, [reason for _, _, reason in items]


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:500]


def _ids(dataset: Dataset, rows: np.ndarray, limit: int = 10) -> str:
    ids = [str(dataset.ids[r]) for r in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(ids) + more


def _pool_for(info: LayerInfo, pooling: str) -> str:
    """The model's pooling where the layer's kind accepts it, else that kind's default."""
    return pooling if pooling in POOL_METHODS[info.kind] else default_pool(info.kind)


def _resolve_pool(pool: str | None, infos: Sequence[LayerInfo]) -> str:
    kinds = {info.kind for info in infos}
    if pool is None:
        return default_pool("tokens" if kinds in ({"tokens"}, {"tokens", "vector"}) else "map")
    accepted = {kind: POOL_METHODS[kind] for kind in ("map", "tokens")}  # vectors take no --pool
    if not any(pool in accepted.get(kind, ()) for kind in kinds):
        options = sorted({m for kind in kinds for m in accepted.get(kind, ())}) or ["none needed"]
        raise InvalidArgumentError(
            f"--pool must be one of {', '.join(options)} for the requested layers "
            f"({', '.join(sorted(kinds))} outputs); got {pool!r}."
        )
    return pool


def resolve_device(device: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` into a device, checking it is available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            "--device cuda was requested but no CUDA device is available; use --device cpu or auto."
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InvalidArgumentError(
            "--device mps was requested but MPS is not available; use --device cpu or auto."
        )
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, previous: Mapping | None = None) -> str:
    """Resolve ``auto``: the cached model's dtype, else bfloat16 where supported, else float32."""
    if dtype != "auto":
        return dtype
    if previous is not None:
        return str(previous["compute_dtype"])
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu" and cpu_has_fast_bfloat16():
        return "bfloat16"
    return "float32"


def cpu_has_fast_bfloat16() -> bool:
    """True on CPUs with AMX or AVX-512 BF16, where bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _resolve_workers(workers: int | str, dataset: Dataset) -> int:
    if workers != "auto":
        return int(workers)
    if dataset.arrays is not None:
        return 0  # nothing to decode
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _check_settings(batch_size, workers, device, dtype, store_dtype, shard_size, name) -> None:
    checks = [
        (isinstance(batch_size, int) and batch_size > 0, f"--batch-size must be a positive integer; got {batch_size!r}."),
        (workers == "auto" or (isinstance(workers, int) and workers >= 0), f"--workers must be 'auto' or an integer >= 0; got {workers!r}."),
        (device in DEVICES, f"--device must be one of {', '.join(DEVICES)}; got {device!r}."),
        (dtype == "auto" or dtype in COMPUTE_DTYPES, f"--dtype must be one of auto, {', '.join(COMPUTE_DTYPES)}; got {dtype!r}."),
        (store_dtype in STORE_DTYPES, f"--store-dtype must be one of {', '.join(STORE_DTYPES)}; got {store_dtype!r}."),
        (isinstance(shard_size, int) and shard_size > 0, f"--shard-size must be a positive integer; got {shard_size!r}."),
        (name is None or bool(_NAME.match(name)), f"--name must be letters, digits and _.+- (a file name); got {name!r}."),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise InvalidArgumentError(message)
