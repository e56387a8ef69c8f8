"""The Ray engine: one actor per worker, one shard per task, the index on the driver.

Every actor receives the driver's :class:`Job` without its loaded backbone, loads the
backbone once and builds the same :class:`ShardRunner` as the in-process engine, so a
shard is computed the same way everywhere. An actor writes its shard with
:meth:`Job.write` (temporary file, then rename) and returns the shard's index; the
driver holds the model's writer lock and lists finished shards with :meth:`Job.publish`.
A shard is the unit of retry: Ray restarts a killed actor and re-runs its task, and
writing the same shard twice is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from featurecache.cache import FeatureConfig, ShardMeta
from featurecache.core._validation import (
    RAY_START,
    ParameterError,
    check_float,
    check_int,
    check_reachable,
    cluster_unreachable,
)
from featurecache.engines._job import Job
from featurecache.engines._options import RunOptions, resolve_loader_workers
from featurecache.engines._runner import Plan, resolve_dtype
from featurecache.exceptions import FeatureCacheError, InvalidArgumentError

__all__ = ["RayEngine"]

logger = logging.getLogger(__name__)

_OWNER = "RayEngine"
#: Tasks in flight per actor: the next shard is queued while the driver publishes.
TASKS_PER_WORKER = 2


@dataclass(frozen=True)
class RayEngine:
    """Compute shards on Ray actors, in this machine or on a cluster.

    The cache written is the one :class:`LocalEngine` writes for the same arguments; on
    the CPU in float32 it is equal bit for bit. The data and the cache must be reachable
    under the same paths on every node (shared storage).

    Parameters
    ----------
    address : str, optional
        Address of a running Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``).
        Without it (and without ``RAY_ADDRESS``) a local Ray instance is started for the
        call and shut down at its end. An already initialised Ray is used as it is.
    workers : int
        Ray actors, each holding one copy of the backbone (at most one per shard).
        Data-loading processes inside each actor are ``RunOptions.workers``.
    cpus_per_worker, gpus_per_worker : float
        Resources each actor reserves. With GPUs the actors compute on ``cuda``.
    max_retries : int
        How often Ray restarts a dead actor and re-runs its task before the run fails.

    Notes
    -----
    ``RunOptions.device`` is the actors' device: ``auto`` is ``cuda`` when
    ``gpus_per_worker > 0``, else ``cpu``. ``dtype="auto"`` is resolved by a Ray task
    that reserves the actors' resources, since the best dtype depends on the workers'
    hardware, not the driver's. ``ExtractResult.device`` reads like ``ray 2 x cpu``.
    """

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if not (self.address is None or isinstance(self.address, str)):
            raise ParameterError("address", _OWNER, "None or a Ray address (str)", self.address)
        check_int(self.workers, "workers", _OWNER, low=1)
        check_float(self.cpus_per_worker, "cpus_per_worker", _OWNER, low=0)
        check_float(self.gpus_per_worker, "gpus_per_worker", _OWNER, low=0)
        check_int(self.max_retries, "max_retries", _OWNER, low=0)

    @contextlib.contextmanager
    def session(self, options: RunOptions) -> Iterator[_RaySession]:
        session = _RaySession(self, options, _worker_device(options.device, self.gpus_per_worker))
        try:
            yield session
        finally:
            session.close()


class _RaySession:
    """One extraction on Ray: connects on first need, shuts down a Ray it started."""

    def __init__(self, engine: RayEngine, options: RunOptions, device: torch.device) -> None:
        self.engine = engine
        self.options = options
        self.device = device
        self.n_actors = 0
        self._ray = None
        self._started = False

    def resolve_dtype(self, dtype: str, previous: FeatureConfig | None) -> str:
        if dtype == "auto" and previous is None:  # the answer depends on the workers' hardware
            ray = self._connect()
            _n_actors(ray, self.engine, 1)  # raise, rather than wait, if no worker fits
            task = ray.remote(resolve_dtype).options(
                num_cpus=self.engine.cpus_per_worker, num_gpus=self.engine.gpus_per_worker
            )
            return ray.get(task.remote(dtype, self.device, previous))
        return resolve_dtype(dtype, self.device, previous)

    def run(self, job: Job, plan: Plan) -> int:
        ray = self._connect()
        self.n_actors = _n_actors(ray, self.engine, len(plan.work))
        return _run(ray, job, plan, self)

    def describe(self) -> str:
        return f"ray {self.n_actors} x {self.device}"

    def _connect(self):
        if self._ray is None:
            self._ray = _import_ray()
            self._started = _connect(self._ray, self.engine)
        return self._ray

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


class _ShardWorker:
    """A Ray actor: loads the backbone once, then computes and writes one shard per call."""

    def __init__(self, job: Job, options: RunOptions, device: str, cpus: float) -> None:
        self.job = job
        self.options = options
        self.error: FeatureCacheError | None = None
        try:
            self.runner = job.runner(torch.device(device))
        except FeatureCacheError as error:
            # Raised from compute(), so the driver gets the error itself (Ray keeps only the
            # text of an error raised in __init__), and Ray does not retry it.
            self.error = error
        self.loaders = resolve_loader_workers(
            options.workers, job.dataset, cpus, torch.device(device).type
        )

    def compute(self, part: Plan) -> list[ShardMeta]:
        """Compute one shard, write its file atomically, and return what the log records."""
        if self.error is not None:
            raise self.error
        results = self.runner.run(self.job.dataset, part, self.options.batch_size, self.loaders)
        return [self.job.write(result, self.runner) for result in results]


def _run(ray, job: Job, plan: Plan, session: _RaySession) -> int:
    """Run the plan on the session's actors; publish finished shards as they come."""
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    actors = _start_actors(ray, job, session)
    pool = ActorPool([actor for actor in actors for _ in range(TASKS_PER_WORKER)])
    for part in plan.parts():
        pool.submit(lambda actor, part: actor.compute.remote(part), part)
    logger.info(
        "extracting %d shards of %s on %d Ray workers (%s)",
        len(plan.work), job.model, len(actors), session.device,
    )  # fmt: skip
    progress = session.options.progress
    bar = tqdm(total=plan.n_rows, unit="img", desc=f"{job.model} (ray)", disable=not progress)
    written = 0
    try:
        while pool.has_next():
            finished = [meta for metas in _finished(ray, pool) for meta in metas]
            job.publish(finished)  # every shard that is ready, in one append
            written += len(finished)
            bar.update(sum(meta.stop - meta.start for meta in finished))
    except BaseException:
        _stop(ray, actors)  # shards written but not returned are logged by the next run
        raise
    finally:
        bar.close()
        _stop(ray, actors)
    return written


def _start_actors(ray, job: Job, session: _RaySession) -> list:
    """``session.n_actors`` actors, each sent the job (without its backbone) once."""
    engine = session.engine
    actor_class = ray.remote(_ShardWorker).options(
        num_cpus=engine.cpus_per_worker,
        num_gpus=engine.gpus_per_worker,
        max_restarts=engine.max_retries,
        max_task_retries=engine.max_retries,
    )
    job_ref = ray.put(job.portable())
    device = str(session.device)
    return [
        actor_class.remote(job_ref, session.options, device, engine.cpus_per_worker)
        for _ in range(session.n_actors)
    ]


def _finished(ray, pool) -> list[list[ShardMeta]]:
    """Wait for the next finished task, then take every other one that is ready."""
    finished = [_next(ray, pool, timeout=None)]
    while pool.has_next():
        try:
            finished.append(_next(ray, pool, timeout=0))
        except TimeoutError:
            break
    return finished


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
            "RayEngine needs Ray, which is not installed; install it on every node with "
            "pip install 'featurecache[ray]'."
        ) from error
    return ray


def _connect(ray, engine: RayEngine) -> bool:
    """Initialise Ray unless it already is; return whether this call started it.

    Ray's own log lines (connecting, starting a local instance) show with ``-v`` only.
    """
    if ray.is_initialized():
        return False
    quiet = {} if logger.isEnabledFor(logging.INFO) else {"logging_level": logging.ERROR}
    address = engine.address
    if (address and address != "local") or (address is None and os.environ.get("RAY_ADDRESS")):
        address = address or os.environ["RAY_ADDRESS"]
        check_reachable(address, "Ray cluster", RAY_ADVICE)
        try:
            ray.init(address=address, log_to_driver=False, **quiet)
        except (ConnectionError, SystemExit) as error:  # Ray exits when GCS never answers
            reason = "none runs on this node" if address == "auto" else _first_line(error)
            raise cluster_unreachable(address, "Ray cluster", reason, RAY_ADVICE) from error
    else:
        cpus = max(os.cpu_count() or 1, math.ceil(engine.workers * engine.cpus_per_worker))
        ray.init(
            address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False, **quiet
        )
    return True


RAY_ADVICE = RAY_START + ", or give no address to run on a local Ray instance"


def _n_actors(ray, engine: RayEngine, n_shards: int) -> int:
    """As many actors as asked for, at most one per shard and no more than the cluster holds."""
    total = ray.cluster_resources()
    cpus, gpus = engine.cpus_per_worker, engine.gpus_per_worker
    fits = [engine.workers, n_shards]
    if cpus > 0:
        fits.append(int(total.get("CPU", 0) // cpus))
    if gpus > 0:
        fits.append(int(total.get("GPU", 0) // gpus))
    n_actors = min(fits)
    if n_actors < 1:
        raise InvalidArgumentError(
            f"the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs; "
            f"one worker needs {cpus:g} CPUs and {gpus:g} GPUs. Lower gpus_per_worker or "
            "cpus_per_worker, or connect to a cluster with GPUs (address)."
        )
    if n_actors < min(engine.workers, n_shards):
        logger.warning(
            "the Ray cluster holds only %d of the %d requested workers (%g CPUs, %g GPUs)",
            n_actors, engine.workers, total.get("CPU", 0), total.get("GPU", 0),
        )  # fmt: skip
    return n_actors


def _worker_device(device: str, gpus_per_worker: float) -> torch.device:
    """The actors' device: ``cuda`` exactly when they reserve GPUs (Ray hides the others)."""
    if device == "auto":
        return torch.device("cuda" if gpus_per_worker > 0 else "cpu")
    if device == "cuda" and gpus_per_worker <= 0:
        raise ParameterError(
            "gpus_per_worker", _OWNER,
            "> 0 for device 'cuda' (Ray hides the GPUs from workers that reserve none)",
            gpus_per_worker,
        )  # fmt: skip
    if device == "cpu" and gpus_per_worker > 0:
        raise ParameterError(
            "gpus_per_worker", _OWNER, "0 for device 'cpu' (reserved GPUs would go unused)",
            gpus_per_worker, "Leave it at 0, or use device 'auto'.",
        )  # fmt: skip
    if device not in ("cpu", "cuda"):
        raise ParameterError("device", "RunOptions", "'auto', 'cpu' or 'cuda' on Ray", device)
    return torch.device(device)
