"""SIGTERM on a running `featurecache fit` stops its worker processes too, with exit 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _synthetic import write_cache

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_sigterm_during_fit_stops_the_workers(tmp_path):
    # an MLP grid on 6,000 x 600 rows: minutes of work, so workers are busy when the signal lands
    cache = write_cache(
        tmp_path / "c.h5", layers=[("wide", 600, 0.5)], n_per_class={"train": 2000, "test": 10}
    )
    command = [sys.executable, "-m", "featurecache.app.cli", "fit", str(cache), "--out",
               str(tmp_path / "results"), "--heads", "mlp", "--jobs", "2"]  # fmt: skip
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as fit:
        try:
            assert _wait_for(lambda: len(_children(fit.pid)) >= 2, timeout=120), "no workers"
            time.sleep(2)  # the workers are inside their first task
            workers = _children(fit.pid)
            fit.send_signal(signal.SIGTERM)
            _, stderr = fit.communicate(timeout=60)
        finally:
            for pid in _children(fit.pid):
                os.kill(pid, signal.SIGKILL)
            fit.kill()
    assert fit.returncode == 143
    assert stderr.strip().endswith(
        "featurecache: terminated; finished shards and combinations are kept, re-run to resume."
    )
    assert _wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=30), (
        f"workers still running after SIGTERM: {sorted(p for p in workers if _alive(p))}"
    )
