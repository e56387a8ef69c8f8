"""Extraction on a Ray cluster: one actor per worker, one shard per task, commits on the driver.

Every actor loads the frozen backbone once and builds the same :class:`ShardRunner` as the
in-process engine, so a shard is computed the same way everywhere. An actor writes its shard
with :meth:`Store.write_shard` (temporary file, then rename) and returns the shard's index;
the driver holds the model's writer lock and lists each finished shard in the index. A shard
is the unit of retry: Ray restarts a killed actor and re-runs its task, and writing the same
shard twice is harmless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from featurecache._data import Dataset
from featurecache._extract import (
    DEFAULT_MODEL,
    ExtractResult,
    Job,
    Plan,
    ShardRunner,
    feature_config,
    prepare,
)
from featurecache.cache import FeatureConfig, Store
from featurecache.exceptions import (
    ConfigMismatchError,
    FeatureCacheError,
    InvalidArgumentError,
)
from featurecache.models._layers import LayerInfo
from featurecache.models._registry import load_backbone

__all__ = ["extract_ray"]

logger = logging.getLogger(__name__)

#: How often Ray restarts a dead worker, and re-runs the task it was running.
DEFAULT_MAX_RETRIES = 3
TASKS_PER_WORKER = 2


def extract_ray(
    data: str | os.PathLike | Dataset,
    cache: str | os.PathLike,
    *,
    address: str | None = None,
    n_workers: int = 2,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    layers: Sequence[str] | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    workers: int | str = 0,
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
    """Extract features like :func:`featurecache.extract`, with the shards computed by Ray actors.

    The cache written is the one :func:`featurecache.extract` writes for the same arguments;
    on the CPU in float32 it is equal bit for bit.

    Parameters
    ----------
    data, cache, model, weights, layers, pool, image_size, batch_size, dtype, store_dtype, \
name, split, seed, shard_size, locking, progress
        As for :func:`featurecache.extract`. ``data`` and ``cache`` must be reachable under
        the same paths on every node (shared storage).
    address : str, optional
        Address of a running Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``).
        Without it (and without ``RAY_ADDRESS``) a local Ray instance is started for this call
        and shut down at its end. An already initialised Ray is used as it is.
    n_workers : int
        Ray actors, each holding one copy of the backbone (at most one per shard).
    gpus_per_worker, cpus_per_worker : float
        Resources each actor reserves. With GPUs the actors compute on ``cuda``.
    max_retries : int
        How often Ray restarts a dead actor and re-runs its task before the run fails.
    workers : int or "auto"
        Data-loading processes inside each actor (``auto``: ``cpus_per_worker - 1``, 0 for
        in-memory arrays).
    device : {"auto", "cpu", "cuda"}
        Device of the actors; ``auto`` is ``cuda`` when ``gpus_per_worker > 0``.

    Returns
    -------
    ExtractResult
        ``device`` reads like ``ray 2 x cpu``.

    Raises
    ------
    InvalidArgumentError, UnknownNameError, ConfigMismatchError, DatasetChangedError
        Before any work, when the arguments, dataset, cache or cluster do not fit.
    BatchError
        When a batch raises or yields NaN/Inf in a worker; committed shards are kept.
    CacheLockedError
        When another process writes the same model into the same cache.
    FeatureCacheError
        When a worker died more than ``max_retries`` times; committed shards are kept.
    """
    started = time.perf_counter()
    _check_ray_settings(n_workers, gpus_per_worker, cpus_per_worker, max_retries, workers)
    worker_device = _worker_device(device, gpus_per_worker)
    compute_dtype = _compute_dtype(dtype, worker_device, cache, name or model, locking)
    # The driver validates and registers on the CPU; the actors compute on worker_device.
    job = prepare(
        data, cache, model=model, weights=weights, layers=layers, pool=pool, image_size=image_size,
        device="cpu", dtype=compute_dtype, store_dtype=store_dtype, name=name, split=split,
        seed=seed, shard_size=shard_size, locking=locking, batch_size=batch_size, workers=0,
    )  # fmt: skip
    n_actors = 0
    with job.store.lock_model(job.model):
        plan = job.plan()
        written = 0
        if plan.work:
            spec = _WorkerSpec.from_job(
                job, weights, plan, worker_device, batch_size, workers, cpus_per_worker
            )
            ray = _import_ray()
            started_ray = _connect(ray, address, n_workers, cpus_per_worker)
            try:
                n_actors = _n_actors(
                    ray, n_workers, len(plan.work), gpus_per_worker, cpus_per_worker
                )
                written = _run(
                    ray, job, plan, spec, n_actors, gpus_per_worker, cpus_per_worker,
                    max_retries, progress,
                )  # fmt: skip
            finally:
                if started_ray:
                    ray.shutdown()
        elif not job.store.index_is_current():
            job.store.rebuild_index()
    result = job.result(plan, written, time.perf_counter() - started)
    return dataclasses.replace(result, device=f"ray {n_actors} x {worker_device}")


@dataclass(frozen=True)
class _WorkerSpec:
    """Everything an actor needs to rebuild the driver's :class:`ShardRunner` (picklable)."""

    store: Store
    model: str
    backbone: str
    weights: str | None
    seed: int
    image_size: int
    infos: dict[str, LayerInfo]
    pooling: str
    config: FeatureConfig
    device: str
    compute_dtype: str
    shard_size: int
    batch_size: int
    workers: int | str
    cpus: float

    @classmethod
    def from_job(
        cls, job: Job, weights: str | None, plan: Plan, device: str, batch_size: int,
        workers: int | str, cpus: float,
    ) -> _WorkerSpec:  # fmt: skip
        recorded = job.config.weights
        if recorded.startswith("file:"):
            weights = recorded  # an absolute path: the worker's working folder may differ
        return cls(
            store=job.store,
            model=job.model,
            backbone=job.config.backbone,
            weights=weights,
            seed=job.config.seed,
            image_size=job.config.image_size,
            infos=dict(job.infos),
            pooling=job.pooling,
            config=job.config,
            device=device,
            compute_dtype=job.compute_dtype,
            shard_size=plan.shard_size,
            batch_size=batch_size,
            workers=workers,
            cpus=cpus,
        )


class _ShardWorker:
    """A Ray actor: loads the backbone once, then computes and writes one shard per call."""

    def __init__(self, spec: _WorkerSpec, dataset: Dataset) -> None:
        self.spec = spec
        self.dataset = dataset
        self.error: FeatureCacheError | None = None
        try:
            self.runner = _build_runner(spec)
        except FeatureCacheError as error:
            # Raised from compute(), so the driver gets the error itself (Ray keeps only the
            # text of an error raised in __init__), and Ray does not retry it.
            self.error = error
        self.loader_workers = _loader_workers(spec.workers, dataset, spec.cpus)

    def compute(self, shard: int, layers: tuple[str, ...]) -> tuple[int, int]:
        """Compute one shard, write its file atomically, and return ``(shard, n_rows)``."""
        if self.error is not None:
            raise self.error
        spec = self.spec
        plan = Plan(spec.shard_size, len(self.dataset), ((shard, layers),))
        n_rows = 0
        for result in self.runner.run(self.dataset, plan, spec.batch_size, self.loader_workers):
            spec.store.write_shard(
                spec.model, result.shard, result.start, result.status, result.reasons,
                result.features, self.runner.layer_attrs, spec.config, self.runner.provenance,
            )  # fmt: skip
            n_rows += len(result.status)
        return shard, n_rows


def _build_runner(spec: _WorkerSpec) -> ShardRunner:
    """Load the backbone on this node and check it is the driver's, number for number."""
    backbone = load_backbone(
        spec.backbone, spec.weights, seed=spec.seed, image_size=spec.image_size
    )
    config = feature_config(backbone, spec.pooling, spec.config.dtype, spec.compute_dtype)
    differences = spec.config.differences(config)
    if differences:
        raise ConfigMismatchError(
            f"the Ray worker on {socket.gethostname()} built {spec.backbone} with another "
            f"configuration than the driver ({'; '.join(differences)}); install the same "
            "featurecache, torch, torchvision and weights files on every node."
        )
    device = torch.device(spec.device)
    return ShardRunner(backbone, spec.infos, spec.pooling, spec.config, device)


def _run(
    ray, job: Job, plan: Plan, spec: _WorkerSpec, n_actors: int, gpus: float, cpus: float,
    max_retries: int, progress: bool,
) -> int:  # fmt: skip
    """Run the plan on ``n_actors`` actors; list each finished shard in the index."""
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    actor_class = ray.remote(_ShardWorker).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_restarts=max_retries,
        max_task_retries=max_retries,
    )
    dataset_ref = ray.put(job.dataset)
    actors = [actor_class.remote(spec, dataset_ref) for _ in range(n_actors)]
    # Two tasks in flight per actor: the next shard is queued while the driver commits.
    pool = ActorPool([actor for actor in actors for _ in range(TASKS_PER_WORKER)])
    for shard, layers in plan.work:
        pool.submit(lambda actor, work: actor.compute.remote(*work), (shard, layers))
    logger.info(
        "extracting %d shards of %s on %d Ray workers (%s)",
        len(plan.work), job.model, n_actors, spec.device,
    )  # fmt: skip
    bar = tqdm(total=plan.n_rows, unit="img", desc=f"{job.model} (ray)", disable=not progress)
    written = rows = 0
    started = time.perf_counter()
    try:
        while pool.has_next():
            finished = [_next(ray, pool, timeout=None)]
            while pool.has_next():  # list every shard that is ready in one index rebuild
                try:
                    finished.append(_next(ray, pool, timeout=0))
                except TimeoutError:
                    break
            job.store.recover(job.model)  # log the shard files the workers wrote
            job.store.rebuild_index()
            for shard, n_rows in finished:
                written += 1
                rows += n_rows
                bar.update(n_rows)
                logger.info(
                    "committed shard %d of %s (%d/%d shards, %.1f img/s)",
                    shard, job.model, written, len(plan.work),
                    rows / max(time.perf_counter() - started, 1e-9),
                )  # fmt: skip
    except BaseException:
        _stop(ray, actors)
        with contextlib.suppress(Exception):  # the error that stopped the run matters more
            job.store.recover(job.model)  # log the shards written before it
            job.store.rebuild_index()
        raise
    finally:
        bar.close()
        _stop(ray, actors)
    return written


def _stop(ray, actors) -> None:
    for actor in actors:
        with contextlib.suppress(Exception):  # already dead, or Ray is shutting down
            ray.kill(actor)


def _next(ray, pool, timeout: float | None) -> tuple[int, int]:
    """The next finished task; featurecache's errors raised in a worker are raised as they are."""
    try:
        return pool.get_next_unordered(timeout=timeout)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, FeatureCacheError):
            raise error.cause from None
        raise
    except ray.exceptions.RayActorError as error:
        raise FeatureCacheError(
            f"a Ray worker died and could not be restarted or retried ({_first_line(error)}); "
            "the shards committed so far are kept: re-run the same command to resume."
        ) from error


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Ray colours its messages
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise InvalidArgumentError(
            "--engine ray needs Ray, which is not installed; install it on every node with "
            "pip install 'featurecache[ray]'."
        ) from error
    return ray


def _connect(ray, address: str | None, n_workers: int, cpus_per_worker: float) -> bool:
    """Initialise Ray unless it already is; return whether this call started it."""
    if ray.is_initialized():
        return False
    if (address and address != "local") or (address is None and os.environ.get("RAY_ADDRESS")):
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, SystemExit) as error:  # Ray exits when GCS never answers
            where = address or os.environ.get("RAY_ADDRESS")
            raise InvalidArgumentError(
                f"--address {where!r}: no Ray cluster answered ({_first_line(error)}); start one "
                "with `ray start --head` or leave --address out for a local instance."
            ) from error
    else:
        cpus = max(os.cpu_count() or 1, math.ceil(n_workers * cpus_per_worker))
        ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


def _n_actors(ray, n_workers: int, n_shards: int, gpus: float, cpus: float) -> int:
    """As many actors as asked for, at most one per shard and no more than the cluster holds."""
    total = ray.cluster_resources()
    fits = [n_workers, n_shards]
    if cpus > 0:
        fits.append(int(total.get("CPU", 0) // cpus))
    if gpus > 0:
        fits.append(int(total.get("GPU", 0) // gpus))
    n_actors = min(fits)
    if n_actors < 1:
        raise InvalidArgumentError(
            f"the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs; "
            f"one worker needs {cpus:g} CPUs and {gpus:g} GPUs. Lower --gpus-per-worker, or "
            "connect to a cluster with GPUs (--address)."
        )
    if n_actors < min(n_workers, n_shards):
        logger.warning(
            "the Ray cluster holds only %d of the %d requested workers (%g CPUs, %g GPUs)",
            n_actors, n_workers, total.get("CPU", 0), total.get("GPU", 0),
        )  # fmt: skip
    return n_actors


def _worker_device(device: str, gpus_per_worker: float) -> str:
    if device == "auto":
        return "cuda" if gpus_per_worker > 0 else "cpu"
    if device == "cuda" and gpus_per_worker <= 0:
        raise InvalidArgumentError(
            "--device cuda with --engine ray needs --gpus-per-worker > 0 (Ray hides the GPUs "
            f"from workers that reserve none); got --gpus-per-worker {gpus_per_worker:g}."
        )
    if device == "cpu" and gpus_per_worker > 0:
        raise InvalidArgumentError(
            f"--device cpu with --gpus-per-worker {gpus_per_worker:g} would reserve GPUs that "
            "are never used; drop --gpus-per-worker or use --device auto."
        )
    if device not in ("cpu", "cuda"):
        raise InvalidArgumentError(
            f"--device must be auto, cpu or cuda with --engine ray; got {device!r}."
        )
    return device


def _compute_dtype(
    dtype: str, worker_device: str, cache, model_name: str, locking: bool | None
) -> str:
    """Resolve ``auto`` for the workers' device, not the driver's."""
    if dtype != "auto":
        return dtype
    store = Store(cache, locking=locking)
    previous = store.read_config(model_name) if store.has_samples() else None
    if previous is not None:
        return previous.compute_dtype
    if worker_device == "cuda":
        return "bfloat16"
    return "auto"  # CPU workers: prepare() decides as on one machine


def _loader_workers(workers: int | str, dataset: Dataset, cpus_per_worker: float) -> int:
    if workers != "auto":
        return int(workers)
    if dataset.arrays is not None:
        return 0  # nothing to decode
    return max(0, min(8, int(cpus_per_worker) - 1))


def _check_ray_settings(n_workers, gpus, cpus, max_retries, workers) -> None:
    checks = [
        (isinstance(n_workers, int) and not isinstance(n_workers, bool) and n_workers > 0, f"--workers must be a positive integer with --engine ray; got {n_workers!r}."),
        (isinstance(gpus, (int, float)) and gpus >= 0, f"--gpus-per-worker must be a number >= 0; got {gpus!r}."),
        (isinstance(cpus, (int, float)) and cpus >= 0, f"The 'cpus_per_worker' parameter must be a number >= 0; got {cpus!r}."),
        (isinstance(max_retries, int) and max_retries >= 0, f"The 'max_retries' parameter must be an integer >= 0; got {max_retries!r}."),
        (workers == "auto" or (isinstance(workers, int) and workers >= 0), f"The 'workers' parameter (data-loading processes per Ray worker) must be 'auto' or an integer >= 0; got {workers!r}."),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise InvalidArgumentError(message)
