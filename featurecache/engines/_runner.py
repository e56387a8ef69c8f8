"""Computing shards: the one code path every engine runs.

:class:`ShardRunner` turns a :class:`Plan` (which shards, which layers) into
:class:`ShardResult` objects in memory: decode, preprocess, forward with hooks, pool,
check finiteness. Engines decide only where it runs; every engine commits its results
through :class:`featurecache.engines._job.Job`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from featurecache._data import Dataset
from featurecache._validation import ParameterError
from featurecache.cache import STATUS_FAILED, STATUS_OK, FeatureConfig
from featurecache.engines._options import COMPUTE_DTYPE_NAMES
from featurecache.exceptions import BatchError
from featurecache.models._fuse import fuse_conv_bn
from featurecache.models._layers import (
    POOL_METHODS,
    LayerInfo,
    capture,
    default_pool,
    pool,
    pooled_size,
)
from featurecache.models._registry import LoadedBackbone

__all__ = [
    "Plan",
    "ShardResult",
    "ShardRunner",
    "COMPUTE_DTYPES",
    "resolve_device",
    "resolve_dtype",
    "cpu_has_fast_bfloat16",
    "resolve_loader_workers",
]

COMPUTE_DTYPES = {name: getattr(torch, name) for name in COMPUTE_DTYPE_NAMES}


@dataclass(frozen=True)
class Plan:
    """The shards still to compute, each with the layers it lacks."""

    shard_size: int
    n_samples: int
    work: tuple[tuple[int, tuple[str, ...]], ...]
    starts: tuple[int, ...] = ()  # where each shard starts, once the dataset has grown

    def rows(self, shard: int) -> range:
        if self.starts:
            stop = self.starts[shard + 1] if shard + 1 < len(self.starts) else self.n_samples
            return range(self.starts[shard], stop)
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.n_samples))

    @property
    def n_rows(self) -> int:
        return sum(len(self.rows(shard)) for shard, _ in self.work)

    def parts(self) -> tuple[Plan, ...]:
        """One plan per shard of the work: the unit an engine hands to a worker."""
        return tuple(
            Plan(self.shard_size, self.n_samples, (item,), self.starts) for item in self.work
        )


@dataclass(frozen=True)
class ShardResult:
    shard: int
    start: int
    status: np.ndarray
    reasons: list[str]
    features: dict[str, np.ndarray] = field(repr=False)


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
        config: FeatureConfig,
        device: torch.device,
    ) -> None:
        self.backbone = backbone
        self.infos = dict(infos)
        self.pooling = pooling
        self.config = config
        self.device = device
        self.compute_dtype = COMPUTE_DTYPES[config.compute_dtype]
        self.store_dtype = np.dtype(config.dtype)
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
    def provenance(self) -> dict[str, str]:
        """Library versions recorded on every shard file this runner computes."""
        import torchvision

        return {
            "torch_version": str(torch.__version__),
            "torchvision_version": str(torchvision.__version__),
        }

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
                    self.infos[layer].prefix_tokens,
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


def resolve_device(device: str, owner: str = "RunOptions") -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` into a device of this process, checking it is available.

    ``owner`` names the function or class whose ``device`` parameter this is, for the message.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if (device == "cuda" and not torch.cuda.is_available()) or (
        device == "mps" and not _mps_available()
    ):
        raise ParameterError(
            "device", owner, f"a device this machine has ({device} is not available here)",
            device, "Use 'cpu' or 'auto'.",
        )  # fmt: skip
    return torch.device(device)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_dtype(dtype: str, device: torch.device, previous: FeatureConfig | None = None) -> str:
    """The compute dtype: the one asked for, else the cached model's, else the device's best.

    This is the one rule every engine applies; an engine whose shards run elsewhere
    evaluates it where they run, since the best dtype depends on the hardware: bfloat16
    on a CUDA device that supports it (else float16) and on CPUs with fast bfloat16,
    float32 elsewhere.
    """
    if dtype != "auto":
        return dtype
    if previous is not None:
        return previous.compute_dtype
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


def resolve_loader_workers(workers: int | str, dataset: Dataset, cpus: float | None = None) -> int:
    """Data-loading processes: ``auto`` is one fewer than ``cpus`` (this machine's by default),
    at most 8, and 0 for in-memory arrays, which need no decoding."""
    if workers != "auto":
        return int(workers)
    if dataset.arrays is not None:
        return 0
    available = (os.cpu_count() or 2) if cpus is None else int(cpus)
    return max(0, min(8, available - 1))
