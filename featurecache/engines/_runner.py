"""Computing shards: the one code path every engine runs.

:class:`ShardRunner` turns a :class:`Plan` (which shards, which layers) into
:class:`ShardResult` objects in memory: decode, preprocess, forward with hooks, pool,
check finiteness. Engines decide only where it runs; every engine commits its results
through :class:`featurecache.engines._job.Job`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from featurecache.cache import (
    STATUS_FAILED,
    STATUS_OK,
    VIEW_KINDS,
    FeatureConfig,
    ShardViews,
)
from featurecache.core._spec import COMPUTE_DTYPE_NAMES, DEFAULT_DECODE, POOL_METHODS
from featurecache.core._validation import ParameterError
from featurecache.data._datasets import Dataset
from featurecache.exceptions import BatchError
from featurecache.models._augment import ViewMaker
from featurecache.models._decode import (
    decode_jpegs,
    jpeg_tensor,
    read_image,
    read_image_bytes,
    read_jpeg_bytes,
)
from featurecache.models._fuse import fuse_conv_bn
from featurecache.models._layers import (
    LayerInfo,
    StopForward,
    capture,
    deepest,
    default_pool,
    pool,
    pooled_size,
    stop_after,
)
from featurecache.models._preprocess import Preprocess
from featurecache.models._registry import LoadedBackbone

__all__ = [
    "Plan",
    "ShardResult",
    "ShardRunner",
    "COMPUTE_DTYPES",
    "resolve_device",
    "resolve_dtype",
    "resolve_decode",
    "cpu_has_fast_bfloat16",
    "data_loader",
]

logger = logging.getLogger(__name__)

COMPUTE_DTYPES = {name: getattr(torch, name) for name in COMPUTE_DTYPE_NAMES}
#: Batches each loader process keeps ready.
PREFETCH = 2
#: The forward waited for data this share of the run or more: the run is decode-bound.
DECODE_BOUND = 0.2


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
    #: ``views[kind]``: the shard's extra views (``augment``, ``tta``); empty without views.
    views: dict[str, ShardViews] = field(default_factory=dict, repr=False)


class ShardRunner:
    """Runs the frozen backbone over shards and returns their features in memory.

    The in-process engine and the Ray workers both use it, so every engine
    computes a shard the same way.

    Images decode as ``config.decode`` says (``gpu`` only on a CUDA device; elsewhere,
    as its CPU fall-back, ``exact``). The forward pass stops after the deepest requested
    layer (``early_exit``), which gives the same numbers as the full pass.

    Attributes
    ----------
    clock : DataClock
        How long the forward waited for data, over every run of this runner.
    fallbacks : collections.Counter
        With GPU decoding: images decoded on the CPU, by reason.
    """

    def __init__(
        self,
        backbone: LoadedBackbone,
        infos: Mapping[str, LayerInfo],
        pooling: str,
        config: FeatureConfig,
        device: torch.device,
        early_exit: bool = True,
    ) -> None:
        self.backbone = backbone
        self.infos = dict(infos)
        self.pooling = pooling
        self.config = config
        self.device = device
        self.gpu_decode = config.decode == "gpu" and device.type == "cuda"
        self.decode = "exact" if config.decode == "gpu" and not self.gpu_decode else config.decode
        self.early_exit = early_exit
        self.clock = DataClock()
        self.fallbacks: Counter[str] = Counter()
        sets = config.view_sets()
        #: Makes each row's extra views in the loader; ``None`` for a model without views.
        self.views = None if sets is None else ViewMaker(sets, backbone.preprocess.interpolation)
        self.compute_dtype = COMPUTE_DTYPES[config.compute_dtype]
        self.store_dtype = np.dtype(config.dtype)
        self.module = backbone.module.to(device)
        if device.type in ("cpu", "cuda"):
            self.module = self.module.to(memory_format=torch.channels_last)
        self._models: dict[tuple[str, ...], torch.nn.Module] = {}
        self._persistent: tuple | None = None  # dataset, workers, loader, its batches
        self._view_counts: tuple | None = None  # dataset, views of each row per kind

    def model_for(self, layers: tuple[str, ...]) -> torch.nn.Module:
        """The module to run for these layers: BatchNorm folded into convs where verified."""
        if layers not in self._models:
            size = self.backbone.image_size
            generator = torch.Generator().manual_seed(0)
            probe = torch.randn(1, 3, size, size, generator=generator).to(self.device)
            if self.device.type in ("cpu", "cuda"):
                probe = probe.contiguous(memory_format=torch.channels_last)
            self._models[layers] = fuse_conv_bn(self.module, layers, probe, stop=self._stop(layers))
        return self._models[layers]

    def _stop(self, layers: Iterable[str]) -> str | None:
        """The layer after which forward passes end: the deepest requested, with early exit."""
        return deepest(self.infos[layer] for layer in layers) if self.early_exit else None

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
        return {name: layer_attrs(info, self.pooling) for name, info in self.infos.items()}

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
            logger.info("%s", self.clock.describe())
            if self.fallbacks:
                logger.info("decoded on the CPU instead of the GPU: %s", dict(self.fallbacks))

    def _run_group(
        self, dataset, plan, shards, layers, batch_size, workers, bar
    ) -> Iterator[ShardResult]:
        batches = [
            list(rows[i : i + batch_size]) for shard in shards for rows in [plan.rows(shard)]
            for i in range(0, len(rows), batch_size)
        ]  # fmt: skip
        loader = self._loader(dataset, workers, batches)
        dims = {
            layer: pooled_size(self.infos[layer], _pool_for(self.infos[layer], self.pooling))
            for layer in layers
        }
        shard_iter = iter(shards)
        current = None
        module = self.model_for(tuple(layers))
        stop = self._stop(layers)
        with (
            torch.inference_mode(),
            capture(module, layers) as outputs,
            stop_after(module, stop),
        ):
            for batch in self.clock.wrap(loader, bar):
                rows, x, ok, reasons, extras = self._inputs(batch, dataset)
                if current is None:
                    shard = next(shard_iter)
                    current = _ShardBuffer(
                        shard, plan.rows(shard), dims, self.store_dtype, self._view_rows(dataset)
                    )
                features = {}
                if ok.any():
                    features = self._forward(module, x, rows[ok], dataset, layers, outputs)
                current.fill(rows, ok, reasons, features)
                if current.view_rows:
                    self._forward_views(module, extras, rows, dataset, layers, outputs, current)
                bar.update(len(rows))
                if current.complete:
                    yield current.result()
                    current = None

    def _view_rows(self, dataset: Dataset) -> dict[str, np.ndarray] | None:
        """Per kind, the number of views of each row of the dataset (0: none)."""
        if self.views is None:
            return None
        if self._view_counts is None or self._view_counts[0] is not dataset:
            splits = np.asarray(dataset.splits).astype(str)
            counts = {kind: self.views.counts(kind, splits) for kind in VIEW_KINDS}
            self._view_counts = (dataset, counts)
        return self._view_counts[1]

    def _forward_views(self, module, extras, rows, dataset, layers, outputs, buffer) -> None:
        """The forward passes of a batch's extra views, ``batch size`` images at a time."""
        x, slots, failed = extras
        buffer.fail_views(rows, failed)
        if x is None:
            return
        step = max(1, len(rows))
        for at in range(0, len(x), step):
            chunk = x[at : at + step].to(self.device, non_blocking=self.device.type == "cuda")
            if self.device.type in ("cpu", "cuda"):
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            where = slots[at : at + step]
            features = self._forward(module, chunk, rows[where[:, 0]], dataset, layers, outputs)
            buffer.fill_views(rows, where, features)

    def _loader(self, dataset: Dataset, workers: int, batches: list[list[int]]):
        """This pass's loader: with workers, one per runner and dataset, whose processes
        persist from pass to pass (a Ray actor runs one pass per shard)."""
        preprocess = self.backbone.preprocess
        if workers == 0:
            return data_loader(dataset, preprocess, self.decode, batches, 0, views=self.views)
        if self._persistent is None or self._persistent[:2] != (dataset, workers):
            sampler = _Batches()
            loader = data_loader(
                dataset, preprocess, self.decode, sampler, workers,
                pin_memory=self.device.type == "cuda", persistent=True, views=self.views,
                background=self.device.type == "cpu",
            )  # fmt: skip
            self._persistent = (dataset, workers, loader, sampler)
        _, _, loader, sampler = self._persistent
        sampler.batches = batches
        return loader

    def _inputs(self, batch, dataset) -> tuple:
        """The batch's images preprocessed on the device; GPU-decoded ones joined in row order.

        Returns ``(rows, x, ok, reasons, extras)``; ``extras`` are the extra views as the
        loader made them.
        """
        rows, images, ok, reasons, positions, encoded, extras = batch
        non_blocking = self.device.type == "cuda"
        x = None if images is None else images.to(self.device, non_blocking=non_blocking)
        if self.gpu_decode and dataset.arrays is None:
            self.fallbacks["not a JPEG the GPU decodes"] += len(rows) - len(positions)
        if len(positions):
            x = self._decode_on_device(rows, x, ok, reasons, positions, encoded, dataset)
        if x is not None and self.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        return rows, x, ok, reasons, extras

    def _decode_on_device(self, rows, x, ok, reasons, positions, encoded, dataset) -> torch.Tensor:
        """Decode and preprocess ``encoded`` on the device; a failure falls back to the CPU."""
        preprocess = self.backbone.preprocess
        on_device = set(positions.tolist())
        done = [i for i in range(len(rows)) if ok[i] and i not in on_device]
        parts = dict(zip(done, [] if x is None else x, strict=True))
        for i, image in zip(positions.tolist(), decode_jpegs(encoded, self.device), strict=True):
            try:
                if isinstance(image, Exception):
                    raise image
                parts[i] = preprocess(image)
            except Exception as error:  # the CPU decodes it, or records why it cannot
                self.fallbacks[f"GPU decode failed: {_reason(error)}"[:200]] += 1
                logger.debug("decoding %s on the CPU: %s", dataset.ids[rows[i]], error)
                try:
                    parts[i] = preprocess(dataset.load_image(rows[i])).to(self.device)
                except Exception as cpu_error:
                    ok[i], reasons[i] = False, _reason(cpu_error)
        order = [i for i in range(len(rows)) if ok[i]]
        return torch.stack([parts[i] for i in order]) if order else None

    def _forward(self, module, x, rows, dataset, layers, outputs) -> dict[str, np.ndarray]:
        enabled = self.compute_dtype != torch.float32
        try:
            with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=enabled):
                try:
                    module(x)
                except StopForward:
                    pass  # every requested layer has run
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


class DataClock:
    """How long the forward pass waited for the data loader, as a share of the run."""

    def __init__(self) -> None:
        self.waited = 0.0
        self.total = 0.0

    @property
    def share(self) -> float:
        return self.waited / self.total if self.total > 0 else 0.0

    def describe(self) -> str:
        """``data wait 35% (decode-bound)``; under :data:`DECODE_BOUND`, compute-bound."""
        return _share(self.waited, self.total)

    def wrap(self, loader: Iterable, bar=None) -> Iterator:
        """Yield the loader's batches, timing each wait; the bar shows the share so far."""
        started = time.perf_counter()
        batches = iter(loader)
        try:
            while True:
                before = time.perf_counter()
                batch = next(batches, None)
                self.waited += time.perf_counter() - before
                if batch is None:
                    return
                if bar is not None:
                    elapsed = self.total + time.perf_counter() - started
                    bar.set_postfix_str(_share(self.waited, elapsed), refresh=False)
                yield batch
        finally:
            self.total += time.perf_counter() - started


def _share(waited: float, elapsed: float) -> str:
    share = waited / elapsed if elapsed > 0 else 0.0
    return f"data wait {share:.0%} ({'decode' if share >= DECODE_BOUND else 'compute'}-bound)"


class _ShardBuffer:
    """Preallocated output of one shard, filled batch by batch."""

    def __init__(
        self, shard: int, rows: range, dims: Mapping[str, int], dtype: np.dtype,
        view_rows: Mapping[str, np.ndarray] | None = None,
    ) -> None:  # fmt: skip
        self.shard, self.start, n = shard, rows.start, len(rows)
        self.status = np.zeros(n, dtype=np.int8)
        self.reasons = [""] * n
        self.features = {
            layer: np.full((n, dim), np.nan, dtype=dtype) for layer, dim in dims.items()
        }
        self.filled = 0
        # Per kind: views of each row of this shard (0: none), their status and features.
        self.view_rows = {
            kind: counts[rows.start : rows.stop]
            for kind, counts in (view_rows or {}).items()
            if counts[rows.start : rows.stop].any()
        }
        self.view_status = {
            kind: np.zeros((n, int(counts.max())), dtype=np.int8)
            for kind, counts in self.view_rows.items()
        }
        self.view_features = {
            kind: {
                layer: np.full((n, int(counts.max()), dim), np.nan, dtype=dtype)
                for layer, dim in dims.items()
            }
            for kind, counts in self.view_rows.items()
        }

    def fill(self, rows: np.ndarray, ok: np.ndarray, reasons: list[str], features: Mapping) -> None:
        local = rows - self.start
        self.status[local] = np.where(ok, STATUS_OK, STATUS_FAILED)
        for i, reason in zip(local, reasons, strict=True):
            self.reasons[i] = reason
        for layer, values in features.items():
            self.features[layer][local[ok]] = values
        for kind, counts in self.view_rows.items():  # view 0 is the plain view
            has = counts[local] > 0
            self.view_status[kind][local[has & ~ok]] = STATUS_FAILED
            self.view_status[kind][local[has & ok], 0] = STATUS_OK
            for layer, values in features.items():
                self.view_features[kind][layer][local[has & ok], 0] = values[has[ok]]
        self.filled += len(rows)

    def fill_views(self, rows: np.ndarray, slots: np.ndarray, features: Mapping) -> None:
        """Extra views: ``slots`` rows are (position in the batch, kind index, view)."""
        local = rows[slots[:, 0]] - self.start
        for k, kind in enumerate(VIEW_KINDS):
            mine = slots[:, 1] == k
            if not mine.any():
                continue
            self.view_status[kind][local[mine], slots[mine, 2]] = STATUS_OK
            for layer, values in features.items():
                self.view_features[kind][layer][local[mine], slots[mine, 2]] = values[mine]

    def fail_views(self, rows: np.ndarray, failed: np.ndarray) -> None:
        """Extra views the loader could not make (same slots as :meth:`fill_views`)."""
        for position, k, view in failed.tolist():
            self.view_status[VIEW_KINDS[k]][rows[position] - self.start, view] = STATUS_FAILED

    @property
    def complete(self) -> bool:
        return self.filled == len(self.status)

    def result(self) -> ShardResult:
        views = {
            kind: ShardViews(self.view_status[kind], self.view_features[kind])
            for kind in self.view_rows
        }
        return ShardResult(self.shard, self.start, self.status, self.reasons, self.features, views)


def data_loader(
    dataset: Dataset,
    preprocess: Preprocess,
    decode: str,
    batches: int | Iterable[list[int]],
    workers: int,
    pin_memory: bool = False,
    persistent: bool = False,
    views: ViewMaker | None = None,
    background: bool = False,
) -> torch.utils.data.DataLoader:
    """The loader every run reads: ``(rows, images, ok, reasons, positions, encoded, extras)``
    batches.

    ``images`` stacks the preprocessed images of the ``ok`` rows decoded in the loader
    (``None`` if there are none). With ``decode="gpu"``, JPEG files the GPU decodes are
    not decoded: ``encoded`` holds their bytes and ``positions`` their places in the batch.
    ``batches`` is a batch size (every row in order) or the rows of each batch.
    With ``views``, each image is decoded once and its extra views are made from the same
    pixels: ``extras`` is ``(x, slots, failed)``, the preprocessed views stacked (or
    ``None``), and for each of them, and for each view that could not be made, its
    ``(position in the batch, kind index, view)``.

    Each worker process keeps ``PREFETCH`` batches ready; ``persistent`` keeps the processes
    alive between passes over the loader. ``background`` runs the worker processes at the
    lowest CPU priority: when the forward runs on the same cores, its threads are never
    preempted mid-operation (a thread team waits for its slowest member), and the loaders
    decode on every core while the forward waits for data.
    """
    images = _Images(dataset, preprocess, decode, views)
    if isinstance(batches, int):
        rows = range(len(dataset))
        batches = [list(rows[i : i + batches]) for i in range(0, len(rows), batches)]
    return torch.utils.data.DataLoader(
        images,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH if workers else None,
        persistent_workers=persistent and workers > 0,
        worker_init_fn=_lowest_priority if background and workers else None,
    )


def _lowest_priority(worker_id: int) -> None:
    """A loader process yields the cores to the forward pass (where the OS allows it)."""
    if hasattr(os, "nice"):
        os.nice(19)


class _Batches(torch.utils.data.Sampler):
    """The rows of each batch of the current pass, set before each pass of a persistent loader."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Images(torch.utils.data.Dataset):
    """Decodes and preprocesses one sample; a bad image becomes a failed row, not an error.

    With ``decode="gpu"`` a JPEG the GPU decodes is returned as its bytes instead.
    """

    def __init__(
        self, dataset: Dataset, preprocess: Preprocess, decode: str, views: ViewMaker | None = None
    ) -> None:
        self.dataset = dataset
        self.preprocess = preprocess
        self.decode = decode
        self.views = views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, rows: list[int]) -> list:
        """A batch (the loader asks for whole batches): images inside shards are read in one
        range per run of consecutive members."""
        members = self.dataset.members
        encoded = [None] * len(rows)
        if members is not None:
            try:
                encoded = members.read_batch(rows)
            except Exception:  # each row is then read alone and fails with its own reason
                logger.debug("batch read failed; reading its rows one by one", exc_info=True)
        return [self._item(row, data) for row, data in zip(rows, encoded, strict=True)]

    def __getitem__(self, row: int):
        return self._item(row, None)

    def _item(self, row: int, data: bytes | None):
        """One row, from its bytes when they were read with its batch."""
        if self.decode == "gpu" and self.dataset.arrays is None:
            encoded = self._encoded(row, data)
            if encoded is not None:
                return row, None, "", encoded, ()
        try:
            image = self._load(row, data)
            return row, self.preprocess(image), "", None, self._extras(row, image)
        except Exception as error:  # any decoding failure is recorded, with its reason
            return row, None, _reason(error), None, ()

    def _encoded(self, row: int, data: bytes | None) -> torch.Tensor | None:
        """A JPEG's bytes for the GPU to decode, or ``None`` (the CPU decodes it)."""
        if self.dataset.paths is not None:
            return read_jpeg_bytes(self.dataset.paths[row], self.dataset.expected_digest(row))
        try:
            return jpeg_tensor(self.dataset.read_member(row, data))
        except Exception:  # the CPU path reports the reason
            return None

    def _extras(self, row: int, image: torch.Tensor) -> list[tuple[int, int, torch.Tensor | None]]:
        """``(kind index, view, preprocessed view or None)`` of the row's extra views, from
        the pixels already decoded; a view that cannot be made is ``None`` (failed)."""
        if self.views is None:
            return []
        split, sample_id = str(self.dataset.splits[row]), str(self.dataset.ids[row])
        out = []
        for k, kind in enumerate(VIEW_KINDS):
            for view in range(1, self.views.count(kind, split)):
                try:
                    made = self.preprocess(self.views.make(image, sample_id, kind, view))
                except Exception as error:  # this view fails; the others and view 0 stand
                    logger.debug("%s view %d of %s failed: %s", kind, view, sample_id, error)
                    made = None
                out.append((k, view, made))
        return out

    def _load(self, row: int, data: bytes | None = None) -> torch.Tensor:
        if self.dataset.members is not None:  # exact, fast, and the GPU's fall-back (exact)
            return read_image_bytes(
                self.dataset.read_member(row, data), self.preprocess, self.decode
            )
        if self.decode == "fast" and self.dataset.paths is not None:
            expected = self.dataset.expected_digest(row)
            return read_image(self.dataset.paths[row], self.preprocess, self.decode, expected)
        return self.dataset.load_image(row)  # exact, in-memory arrays, the GPU's fall-back


def _collate(items):
    rows = np.array([row for row, *_ in items], dtype=np.int64)
    ok = np.array([image is not None or data is not None for _, image, _, data, _ in items])
    images = [image for _, image, _, _, _ in items if image is not None]
    stacked = torch.stack(images) if images else None
    positions = np.array([i for i, item in enumerate(items) if item[3] is not None], dtype=int)
    encoded = [data for _, _, _, data, _ in items if data is not None]
    reasons = [reason for _, _, reason, _, _ in items]
    return rows, stacked, ok, reasons, positions, encoded, _collate_views(items)


def _collate_views(items):
    """``(x, slots, failed)`` of the batch's extra views (``x`` is ``None`` when none)."""
    made = [(i, k, v, t) for i, item in enumerate(items) for k, v, t in item[4]]
    good = [(i, k, v) for i, k, v, t in made if t is not None]
    x = torch.stack([t for *_, t in made if t is not None]) if good else None
    failed = [(i, k, v) for i, k, v, t in made if t is None]
    return (
        x,
        np.array(good, dtype=np.int64).reshape(-1, 3),
        np.array(failed, np.int64).reshape(-1, 3),
    )


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:500]


def _ids(dataset: Dataset, rows: np.ndarray, limit: int = 10) -> str:
    ids = [str(dataset.ids[r]) for r in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(ids) + more


def layer_attrs(info: LayerInfo, pooling: str) -> dict:
    """The attributes stored with a layer's features: depth, raw shape, kind, pooling."""
    return {
        "depth": float(info.depth),
        "depth_index": int(info.depth_index),
        "raw_shape": np.asarray(info.shape, dtype=np.int64),
        "kind": info.kind,
        "pooling_applied": _pool_for(info, pooling),
    }


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


def resolve_decode(
    decode: str,
    device: torch.device,
    previous: FeatureConfig | None = None,
    files: bool = True,
    backend: str = "tensor",
    owner: str = "extract",
) -> str:
    """The decode mode: the one asked for, else the cached model's, else the default.

    The default is :data:`DEFAULT_DECODE` for image files and ``exact`` for arrays in
    memory (``files=False``), which are never decoded. ``gpu`` needs the shards to compute
    on a CUDA device and a preprocessing that resizes tensors (``backend``).
    """
    mode = decode
    if decode == "auto":
        mode = previous.decode if previous is not None else DEFAULT_DECODE if files else "exact"
    if mode != "gpu":
        return mode
    cached = " (the cached model's mode)" if decode == "auto" else ""
    if device.type != "cuda":
        why = f"'gpu'{cached} decodes on a CUDA device; this run computes on {device.type}."
    elif backend != "tensor":
        why = f"'gpu'{cached} resizes on the device; this backbone's preprocessing uses {backend}."
    else:
        return mode
    raise ParameterError("decode", owner, "'exact' or 'fast' here", decode, why)


def cpu_has_fast_bfloat16() -> bool:
    """True on CPUs with AMX or AVX-512 BF16, where bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags
