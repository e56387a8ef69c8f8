"""A scheduler or cluster that does not answer is one line naming the address and how to start
one (exit 1), and nothing else reaches stderr without ``-v``: no library log, no retries."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from _synthetic import write_cache
from PIL import Image

from featurecache.core._validation import CONNECT_SECONDS

RAY_START = (
    "start a cluster with `ray start --head --port 6379` (and `ray start --address HEAD_IP:6379` "
    "on the other nodes), then pass that address or `auto` on one of its nodes"
)


@pytest.fixture
def dead_address() -> str:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


def _featurecache(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "featurecache", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _folder(root) -> str:
    for label in ("a", "b"):
        (root / "photos" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(root / "photos" / label / f"{i}.png")
    return str(root / "photos")


@pytest.mark.parametrize(
    "backend, message",
    [
        (
            "dask",
            "featurecache: error: no Dask scheduler answered at tcp://{address} (connection "
            "refused); start a scheduler with `dask scheduler --port 8786` and its workers with "
            "`dask worker tcp://SCHEDULER_IP:8786`, then pass that address, or give no address "
            "to fit on a local Dask cluster.\n",
        ),
        (
            "ray",
            "featurecache: error: no Ray cluster answered at tcp://{address} (connection "
            f"refused); {RAY_START}, or give no address to fit on a local Ray instance.\n",
        ),
    ],
)
def test_fit_on_a_scheduler_that_does_not_answer_is_one_line(
    backend, message, dead_address, tmp_path
):
    pytest.importorskip("distributed" if backend == "dask" else "ray")
    cache = write_cache(tmp_path / "c.h5")
    address = f"tcp://{dead_address}"
    started = time.monotonic()
    done = _featurecache(
        "fit", str(cache), "--out", "results", "--backend", backend, "--address", address,
        cwd=tmp_path,
    )  # fmt: skip
    assert (done.returncode, done.stderr, done.stdout) == (
        1,
        message.format(address=dead_address),
        "",
    )
    assert time.monotonic() - started < 30 + CONNECT_SECONDS  # no client retrying for minutes
    assert not (tmp_path / "results").exists()


@pytest.mark.ray
def test_extract_on_a_ray_cluster_that_does_not_answer_is_one_line(dead_address, tmp_path):
    pytest.importorskip("ray")
    done = _featurecache(
        "extract", _folder(tmp_path), "--cache", "c.h5", "--engine", "ray",
        "--address", dead_address, "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (
        f"featurecache: error: no Ray cluster answered at {dead_address} (connection refused); "
        f"{RAY_START}, or give no address to run on a local Ray instance.\n"
    )


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_cluster_too_small_for_one_worker_is_one_line_without_ray_logs(tmp_path):
    pytest.importorskip("ray")
    argv = [
        "extract", _folder(tmp_path), "--cache", "c.h5", "--engine", "ray",
        "--gpus-per-worker", "1", "--no-progress",
    ]  # fmt: skip
    done = _featurecache(*argv, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "featurecache: error: the Ray cluster has {cpus} CPUs and 0 GPUs; one worker needs 1 "
        "CPUs and 1 GPUs. Lower gpus_per_worker or cpus_per_worker, or connect to a cluster "
        "with GPUs (address).\n"
    ).format(cpus=done.stderr.split(" has ")[1].split(" ")[0])
