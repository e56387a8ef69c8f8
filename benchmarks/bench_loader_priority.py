"""How the loader processes share the cores with a forward pass on the CPU.

Extraction of a JPEG folder (``jpeg_folder.py``) with ResNet-18 at 224 px, interleaved rounds,
under four schedules of the loader processes:

- one process at normal priority (the default before the loaders yielded the cores);
- one process at the lowest priority (``nice 19``);
- one process per core at the lowest priority (the default on the CPU);
- one process per core at ``nice 10``.

Each line prints the time of one extraction and its timeline (set-up, data wait, forward,
shard writes, the rest), as ``bench_scale.py`` measures it.

    python benchmarks/bench_loader_priority.py --n-images 3072 --repeats 2
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import bench_scale
from jpeg_folder import make_jpeg_folder

from featurecache.engines import _runner


def _priority(level: int):
    def lower(worker_id: int) -> None:
        if level:
            os.nice(level)

    return lower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folder", default="data/bench-loader-priority")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    folder = make_jpeg_folder(Path(args.folder), args.n_images)
    run = argparse.Namespace(
        model="resnet18", weights="none", image_size=224, batch_size=32, dtype="auto"
    )
    schedules = {
        "1 process, normal priority": (0, 1),
        "1 process, nice 19": (19, 1),
        f"{cores} processes, nice 19 (default)": (19, cores),
        f"{cores} processes, nice 10": (10, cores),
    }
    for _ in range(args.repeats):
        for name, (level, workers) in schedules.items():
            _runner._lowest_priority = _priority(level)
            run.workers = workers
            took, stages = bench_scale.time_extract(folder, run)
            timeline = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
            print(f"{name}: {took:.2f} s ({timeline}; load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
