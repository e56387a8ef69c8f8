"""A fit under an address-space limit below the layer's float32 size: streamed, it succeeds;
in memory, under the same limit, it fails (so the limit bites)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from _synthetic import write_cache

ROOT = Path(__file__).resolve().parents[3]
N_ROWS, N_FEATURES = 100_000, 256  # 102 MB as float32, 51 MB on disk as float16
HEADROOM = 92 << 20  # the limit: the fit's own baseline plus less than the layer (97.7 MiB)
# Runs the command line, then prints the address space it reached (VmPeak).
_CHILD = """
import sys
from featurecache.app.cli import main
code = main(sys.argv[1:])
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmPeak"))
print("VMPEAK", peak * 1024)
sys.exit(code)
"""
_ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "OPENBLAS_NUM_THREADS": "1",  # a BLAS thread reserves its own buffers
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",  # each thread's malloc arena reserves 64 MB of address space
}


def _fit(cache: Path, out: Path, grid: Path, memory: str, limit: int | None = None):
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    command = [sys.executable, "-c", _CHILD, "fit", str(cache), "--out", str(out), "--heads",
               "ridge,logreg", "--cv", "3", "--memory", memory, "--jobs", "1", "--grid",
               str(grid)]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, env=_ENV, preexec_fn=cap if limit else None,
        timeout=300,
    )  # fmt: skip


def _peak(done) -> int:
    line = next(x for x in done.stdout.splitlines() if x.startswith("VMPEAK"))
    return int(line.split()[1])


@pytest.mark.slow
def test_a_streamed_fit_runs_in_less_address_space_than_the_layer(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"logreg": {"C": [1.0], "max_iter": [10]}}))
    small = write_cache(tmp_path / "small.h5", n_classes=4, n_per_class={"train": 300, "test": 60},
                        layers=(("embedding", N_FEATURES, 0.3),), dtype="float16", shards=True,
                        logged=True, shard_size=1024)  # fmt: skip
    # The same command on a small layer: what the interpreter and the code path need.
    baseline = _fit(small, tmp_path / "r0", grid, "64MB")
    assert baseline.returncode == 0, baseline.stderr
    limit = _peak(baseline) + HEADROOM
    large = write_cache(tmp_path / "large.h5", n_classes=4,
                        n_per_class={"train": N_ROWS // 5, "test": N_ROWS // 20},
                        layers=(("embedding", N_FEATURES, 0.3),), dtype="float16", shards=True,
                        logged=True, shard_size=1024)  # fmt: skip
    assert HEADROOM < N_ROWS * N_FEATURES * 4  # below the layer's float32 size

    streamed = _fit(large, tmp_path / "r1", grid, "64MB", limit)
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    assert "toy / embedding / ridge: exact, streamed Gram (80,000 rows)" in streamed.stdout
    assert "refit on 80,000 (streamed L-BFGS)" in streamed.stdout

    in_memory = _fit(large, tmp_path / "r2", grid, "8GB", limit)
    assert in_memory.returncode != 0
    assert "MemoryError" in in_memory.stderr or "Unable to allocate" in in_memory.stderr
