"""What the reliability tests run in child processes, and the helpers they share.

Children are forked from a ``forkserver`` that has imported torch and featurecache
once, so a child starts in a fraction of a second and can be killed many times in
one test. A child runs one extraction (or one command line) and reports its outcome
in a JSON file, which survives SIGKILL where pipes and queues would not.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import resource
import signal
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from featurecache.cache import _format as fmt
from featurecache.engines._options import RunOptions


def run_options(**changes) -> RunOptions:
    """The tests' execution settings: the CPU, data loaded in the main process."""
    return RunOptions(**{"workers": 0, "device": "cpu", **changes})


# A small, cheap configuration: random weights, 32 px, float32 everywhere.
SETTINGS = dict(
    model="resnet18",
    weights="none",
    image_size=32,
    dtype="float32",
    options=run_options(),
)
PRELOAD = [
    "featurecache.extraction._extract",
    "featurecache.cache._writer",
    "featurecache.app.cli",
    "pipelines",
    "featurecache.app._fit_commands",
    "_workers",
]


@contextlib.contextmanager
def one_torch_thread():
    """Single-threaded torch kernels for the block: runs that must agree bit for bit use the
    same kernels, and two processes on two shared cores do not oversubscribe them."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_images(root: Path, n_per_class: int, classes=("ant", "bee"), seed: int = 0) -> Path:
    """Write ``n_per_class`` random RGB PNGs of varied sizes into each class folder."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = (int(v) for v in rng.integers(34, 48, 2))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def read_layers(cache: Path, model: str, layers) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer: (features, status)}`` read with plain h5py, as any reader would."""
    with h5py.File(cache, "r") as f:
        return {
            layer: (f[fmt.features_path(model, layer)][:], f[fmt.status_path(model, layer)][:])
            for layer in layers
        }


def snapshot(folder: Path, skip_locks: bool = True) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (lock files hold only the holder's pid)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (skip_locks and p.name.endswith(".lock"))
    }


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp-*"))


def context():
    """The forkserver context, preloading torch and featurecache once for all children."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start(target, *args, **kwargs):
    """Start ``target(*args, **kwargs)`` in a forked child and return the process."""
    process = context().Process(target=target, args=args, kwargs=kwargs, daemon=True)
    process.start()
    return process


def outcome(path: Path) -> dict | None:
    """The JSON outcome a child wrote, or None if it wrote none (killed)."""
    return json.loads(path.read_text()) if path.exists() else None


def _report(path: Path | None, value: dict) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _deny_locks() -> None:
    """Make every fcntl lock fail as on a file system without locks (NFS without lockd)."""
    import errno
    import fcntl

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    fcntl.flock = fcntl.lockf = refuse


def _setup(env: dict | None, fsize: int | None, deny_locks: bool = False) -> None:
    import threading

    import torch
    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a killed child would leak.
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(1)  # two children on two shared cores: no thread oversubscription
    os.environ.update(env or {})
    if deny_locks:
        _deny_locks()
    if fsize is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write returns EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


def _slow_down(pause: float, events: Path) -> None:
    """Pause in every forward pass and before every fsync, widening the windows a kill can hit.

    The first forward pass creates ``events/forward``, so the test knows when work began.
    """
    from featurecache.cache import _atomic
    from featurecache.engines._runner import ShardRunner

    forward, fsync = ShardRunner._forward, _atomic.fsync_file

    def slow_forward(self, *args, **kwargs):
        if not (events / "forward").exists():
            (events / "forward").touch()
        time.sleep(pause)
        return forward(self, *args, **kwargs)

    def slow_fsync(path):
        time.sleep(pause)
        fsync(path)

    ShardRunner._forward = slow_forward
    _atomic.fsync_file = slow_fsync


def _stall(events: Path) -> None:
    """Block the first forward pass for good, after creating ``events/forward``: a kill then
    lands before the first commit."""
    from featurecache.engines._runner import ShardRunner

    def stalled_forward(self, *args, **kwargs):
        (events / "forward").touch()
        time.sleep(3600)

    ShardRunner._forward = stalled_forward


def run_extract(
    data,
    cache,
    arguments: dict,
    result: Path | None = None,
    *,
    env: dict | None = None,
    fsize: int | None = None,
    pause: float = 0.0,
    events: Path | None = None,
    deny_locks: bool = False,
    stall: bool = False,
) -> None:
    """Run :func:`featurecache.extract` and write its outcome (or its error) to ``result``.

    ``pause`` slows every forward pass and fsync; ``stall`` blocks the first forward pass.
    """
    _setup(env, fsize, deny_locks)
    if pause:
        _slow_down(pause, events)
    if stall:
        _stall(events)
    from featurecache.exceptions import FeatureCacheError
    from featurecache.extraction._extract import extract

    try:
        done = extract(data, cache, **{**SETTINGS, **arguments})
    except FeatureCacheError as error:
        _report(result, {"error": type(error).__name__, "message": str(error)})
        sys.exit(error.exit_code)
    _report(
        result,
        {"n_ok": done.n_ok, "n_failed": done.n_failed, "shards_written": done.shards_written},
    )


def run_cli(
    argv: list[str],
    result: Path,
    *,
    env: dict | None = None,
    fsize: int | None = None,
    deny_locks: bool = False,
) -> None:
    """Run ``featurecache.app.cli.main(argv)`` and record its exit code, stdout and stderr."""
    _setup(env, fsize, deny_locks)
    from featurecache.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    _report(result, {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    sys.exit(code)
