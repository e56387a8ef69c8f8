"""Where a fit's joblib workers run: the backends, their worker count, the cluster connection.

The local backends (``loky``, ``threading``, ``multiprocessing``) run workers of this
machine, which end with the fit. ``dask`` connects ``distributed.Client(address)`` and
``ray`` registers ``ray.util.joblib`` and connects to ``address``; both packages are imported
only when asked for. Results do not depend on the backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from featurecache.core._process import die_with_parent
from featurecache.core._validation import (
    DASK_START,
    RAY_START,
    ParameterError,
    check_optional_int,
    check_reachable,
    cluster_unreachable,
)
from featurecache.exceptions import InvalidArgumentError

__all__ = ["BACKENDS", "LOCAL_BACKENDS", "check_n_jobs", "check_backend", "parallel_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("loky", "threading", "multiprocessing", "dask", "ray")
#: Backends whose workers are processes or threads of this machine.
LOCAL_BACKENDS = ("loky", "threading", "multiprocessing")
#: Backends whose workers are processes started by this one.
_WORKER_PROCESSES = ("loky", "multiprocessing")

DASK_ADVICE = DASK_START + ", or give no address to fit on a local Dask cluster"
RAY_ADVICE = RAY_START + ", or give no address to fit on a local Ray instance"


def check_n_jobs(n_jobs: Any, backend: str = "loky", owner: str = "fit") -> int | None:
    """``None`` or a nonzero int; on this machine's backends at most 4 workers per CPU (at
    least 32): joblib would otherwise start every one of 100,000 workers asked for.

    Parameters
    ----------
    n_jobs : Any
        The value given.
    backend : str
        One of :data:`BACKENDS`.
    owner : str
        The function whose parameter it is, for the message.

    Returns
    -------
    int or None

    Raises
    ------
    ParameterError
        ``n_jobs`` is not ``None`` or a nonzero int, or asks for too many local workers.
    """
    value = check_optional_int(n_jobs, "n_jobs", owner)
    most = max(32, 4 * (os.cpu_count() or 1)) if backend in LOCAL_BACKENDS else None
    if value == 0 or (most is not None and value is not None and value > most):
        limit = f", at most {most} here (4 per CPU)" if most is not None else ""
        raise ParameterError(
            "n_jobs", owner, f"None or a nonzero int (-1: all cores{limit})", n_jobs
        )
    return value


def check_backend(backend: str) -> None:
    """Refuse ``dask`` or ``ray`` when its package is not installed.

    Raises
    ------
    InvalidArgumentError
        The backend's package cannot be imported.
    """
    needs = {"dask": ("distributed", "dask"), "ray": ("ray", "ray")}
    if backend not in needs:
        return
    module, extra = needs[backend]
    try:
        __import__(module)
    except ImportError as error:
        raise InvalidArgumentError(
            f"backend {backend!r} needs the {module!r} package, which is not installed; "
            f"pip install 'featurecache[{extra}]' or use backend 'loky'."
        ) from error


@contextlib.contextmanager
def parallel_backend(backend: str, address: str | None) -> Iterator[None]:
    """Run joblib calls inside on ``backend``; dask and ray are imported only here.

    Parameters
    ----------
    backend : str
        One of :data:`BACKENDS`, checked by :func:`check_backend`.
    address : str or None
        The Dask scheduler or Ray cluster; ``None`` starts a local one.
    """
    from joblib import parallel_config

    if backend == "dask":
        client = _dask_client(address)
        try:
            with parallel_config(backend="dask"):
                yield
        finally:
            client.close()
        return
    if backend == "ray":
        import ray
        from ray.util.joblib import register_ray

        register_ray()
        started = not ray.is_initialized()
        if started:
            _ray_init(ray, address)
        try:
            with parallel_config(backend="ray"):
                yield
        finally:
            if started:  # shut down only the instance this call started
                ray.shutdown()
        return
    # Workers of this machine end with the fit: a fit killed with SIGKILL leaves none running
    # (holding its stdout, so that `featurecache fit ... | tee log` would never end).
    extra = {"initializer": die_with_parent, "initargs": (os.getpid(),)}
    with parallel_config(backend=backend, **(extra if backend in _WORKER_PROCESSES else {})):
        yield


def _dask_client(address: str | None):
    """A Dask client of the scheduler at ``address`` (a local cluster without one)."""
    from distributed import Client

    if not address:
        return Client()
    check_reachable(address, "Dask scheduler", DASK_ADVICE)
    try:
        return Client(address)
    except (OSError, TimeoutError) as error:  # something answered that is not a scheduler
        raise cluster_unreachable(
            address, "Dask scheduler", _first_line(error), DASK_ADVICE
        ) from error


def _ray_init(ray, address: str | None) -> None:
    """Connect to the Ray cluster at ``address`` (a local instance without one), quietly unless -v."""
    quiet = {} if logger.isEnabledFor(logging.INFO) else {"logging_level": logging.ERROR}
    if address and address != "local":
        check_reachable(address, "Ray cluster", RAY_ADVICE)
    try:
        ray.init(address=address, include_dashboard=False, **quiet)
    except ConnectionError as error:  # `auto` with no cluster on this node
        reason = "none runs on this node" if address == "auto" else _first_line(error)
        raise cluster_unreachable(address or "auto", "Ray cluster", reason, RAY_ADVICE) from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
