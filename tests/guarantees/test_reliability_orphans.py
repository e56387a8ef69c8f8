"""Processes of a killed run never block the next one (issue 19).

- ``extract`` with loader processes, killed with SIGKILL: its loaders, which outlive it
  for a few seconds, never hold the model's writer lock, so a resume started at once
  succeeds and equals an uninterrupted run.
- ``fit`` with worker processes, killed with SIGKILL: its workers die with it, so no
  process of the run is alive 10 s later and a reader of its stdout (``| tee``) reaches
  end of file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from _synthetic import write_cache
from _workers import SETTINGS, make_images, one_torch_thread, read_layers, run_options

from featurecache.cache._writer import Store
from featurecache.exceptions import CacheLockedError

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux processes")

MODEL, LAYERS = "resnet18", ["layer2", "embedding"]
N_ROWS = 32


def _wait_for(condition, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _workers(pid: int) -> list[psutil.Process]:
    """The loky workers among the processes of ``pid``."""
    found = []
    for process in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "LokyProcess" in " ".join(process.cmdline()):
                found.append(process)
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


#: ``featurecache ARGV...`` in a new interpreter (loaders forked, as from a shell), each
#: forward pass slowed down so that a kill lands mid-run; ``events/forward`` marks the first.
EXTRACT = """
import sys
from pathlib import Path
from _workers import _setup, _slow_down
from featurecache.app.cli import main
_setup(None, None)
_slow_down(0.05, Path(sys.argv[1]))
sys.exit(main(sys.argv[2:]))
"""


def _extract(data: Path, cache: Path, events: Path) -> subprocess.Popen:
    argv = [
        "extract", str(data), "--cache", str(cache), "--model", MODEL, "--weights", "none",
        "--layers", ",".join(LAYERS), "--image-size", "32", "--dtype", "float32",
        "--device", "cpu", "--workers", "2", "--batch-size", "2", "--shard-size", "4",
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    events.mkdir()
    return subprocess.Popen(
        [sys.executable, "-c", EXTRACT, str(events), *argv], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_resume_right_after_a_killed_extract_with_loader_processes(tmp_path):
    from featurecache import extract

    data = make_images(tmp_path / "data", n_per_class=N_ROWS // 2)
    reference = tmp_path / "reference.h5"
    with one_torch_thread():  # the uninterrupted run, here: the same kernels as the children
        extract(data, reference, **{**SETTINGS, "layers": LAYERS,
                                    "options": run_options(batch_size=2, shard_size=4)})  # fmt: skip

    cache = tmp_path / "c.h5"
    run = _extract(data, cache, tmp_path / "killed")
    try:
        assert _wait_for(lambda: (tmp_path / "killed" / "forward").exists(), timeout=120)
        assert _wait_for(lambda: len(_tree(run.pid)) >= 2, timeout=60), "no loader processes"
        loaders = _tree(run.pid)
        run.kill()
        run.wait()
        with Store(cache).lock_model(MODEL):  # what the resume takes first
            assert any(_alive(p) for p in loaders), "the loaders outlive the killed run a while"
    finally:
        run.stderr.close()
    with _extract(data, cache, tmp_path / "resume") as resume:  # at once
        assert resume.wait(timeout=300) == 0, resume.stderr.read()
    final, expected = read_layers(cache, MODEL, LAYERS), read_layers(reference, MODEL, LAYERS)
    for layer in LAYERS:
        assert final[layer][0].tobytes() == expected[layer][0].tobytes(), layer
        assert (final[layer][1] == 1).all()


def test_a_forked_child_never_holds_the_writer_lock(tmp_path):
    """A process forked while the lock is held (a loader) does not keep it once its parent
    lets go, and a refusal by a holder that is gone says so."""
    import multiprocessing

    cache = write_cache(tmp_path / "c.h5", shards=True, logged=True)
    store = Store(cache)
    forked = multiprocessing.get_context("fork")
    with store.lock_model("toy"):
        stop = forked.Event()
        loader = forked.Process(target=stop.wait, args=(60,), daemon=True)
        loader.start()
    try:
        with Store(cache).lock_model("toy"):  # the loader is alive: the lock is free
            pass
    finally:
        stop.set()
        loader.join()

    lock = store.model_dir("toy") / ".writer.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    with open(lock, "a+") as handle:  # another program holds the lock, naming a dead pid
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write(f"pid {pid} on {socket.gethostname()}")
        handle.flush()
        with pytest.raises(
            CacheLockedError,
            match=rf"^model 'toy' of '{cache}' is locked by pid {pid} on "
            rf"{socket.gethostname()}, which is no longer running; a process it started may "
            r"still hold the lock: wait a few seconds for it to exit \(or end it\), then re-run\.$",
        ):
            with Store(cache).lock_model("toy"):
                pass


@pytest.mark.slow
def test_no_process_of_a_killed_fit_outlives_it(tmp_path):
    # an MLP grid on 6,000 x 600 rows: minutes of work, so workers are busy when it is killed
    cache = write_cache(
        tmp_path / "c.h5", layers=[("wide", 600, 0.5)], n_per_class={"train": 2000, "test": 10}
    )
    command = [sys.executable, "-m", "featurecache", "fit", str(cache), "--out",
               str(tmp_path / "results"), "--heads", "mlp", "--jobs", "2"]  # fmt: skip
    # What `featurecache fit ... | tee log` does: the command's stdout is a pipe read to EOF.
    fit = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    reader = threading.Thread(target=fit.stdout.read, daemon=True)
    reader.start()
    run: list[psutil.Process] = []
    try:
        assert _wait_for(lambda: len(_workers(fit.pid)) >= 2, timeout=120, step=0.2), "no workers"
        time.sleep(2)  # the workers are inside their first task
        run = _tree(fit.pid)
        fit.kill()
        fit.wait()
        assert _wait_for(lambda: not any(_alive(p) for p in run), timeout=10, step=0.2), (
            f"alive 10 s after the kill: {[p.pid for p in run if _alive(p)]}"
        )
        reader.join(timeout=5)
        assert not reader.is_alive(), "the reader of the killed fit's stdout never reached EOF"
    finally:
        for process in run:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        fit.kill()
        fit.wait()
        reader.join(timeout=10)
        fit.stdout.close()


#: A process that forks a worker watching it (the fallback off Linux), prints the worker's
#: pid and exits.
ORPHAN = """
import os, sys, threading, time
from featurecache.core._process import _watch
parent = os.getpid()
pid = os.fork()
if pid == 0:
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(0.5)
os._exit(0)
"""


def test_a_worker_watching_its_parent_ends_with_it():
    done = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True)
    try:
        worker = psutil.Process(int(done.stdout))
    except psutil.NoSuchProcess:
        return  # already gone
    assert _wait_for(lambda: not _alive(worker), timeout=5, step=0.1), (
        "the worker outlived its parent"
    )
