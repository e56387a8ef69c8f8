"""Overhead of the Ray engine against in-process extraction, on the same machine.

The same extraction runs into fresh caches three times:

1. in process (``featurecache.extract``, data loading in the main process);
2. Ray, one worker holding every core (the engine's own overhead);
3. Ray, one worker per core (scale-out on this machine).

For each it prints the wall time, the fixed cost before the first shard is committed
(Ray: actor start and backbone load) and the steady throughput between the first and the
last commit, then checks that the Ray caches equal the in-process one bit for bit.

    .venv/bin/python benchmarks/bench_ray.py
    .venv/bin/python benchmarks/bench_ray.py --n-images 1024 --model efficientnet_lite0 --image-size 224
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from featurecache.cache import _format as fmt


class _Commits(logging.Handler):
    """Records when each shard is committed (both engines log one line per shard)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("committed shard"):
            self.times.append(record.created)


def _write_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """ImageNet-like JPEGs (about 500x375, quality 90) in two classes."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    for i in range(n):
        pixels = np.roll(base, int(rng.integers(0, 500)), axis=1)
        noise = rng.integers(0, 32, pixels.shape, dtype=np.uint8)
        Image.fromarray(pixels // 2 + noise).save(
            root / ("a", "b")[i % 2] / f"{i:06d}.jpg", quality=90
        )
    return root


def _run(label, fn, commits: _Commits, n_images: int, shard_size: int, n_workers: int) -> dict:
    """Time one extraction; steady throughput is measured after every worker's first shard."""
    commits.times.clear()
    start = time.time()
    result = fn()
    wall = time.time() - start
    times = sorted(commits.times)
    first = times[0] - start if times else float("nan")
    warm = min(n_workers, len(times)) - 1  # the commit that ends the first round of shards
    steady_rows = n_images - min(n_workers * shard_size, n_images)
    span = times[-1] - times[warm] if times else 0.0
    steady = steady_rows / span if span > 0 else float("nan")
    row = {"label": label, "wall_s": wall, "first_commit_s": first, "steady_img_s": steady}
    row["overall_img_s"] = result.rows_computed / wall
    print(
        f"{label:34s} wall {wall:7.2f} s   first shard after {first:6.2f} s   "
        f"steady {steady:7.1f} img/s   overall {row['overall_img_s']:7.1f} img/s",
        flush=True,
    )
    return row


def _decode_rate(data: Path, model: str, weights, image_size: int, n: int = 128) -> float:
    """Images per second that one core decodes and preprocesses (what feeds a GPU worker)."""
    import torch

    from featurecache.data._datasets import load_dataset
    from featurecache.models._registry import load_backbone

    preprocess = load_backbone(model, weights, image_size=image_size).preprocess
    dataset = load_dataset(data)
    n = min(n, len(dataset))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for row in range(n):
            preprocess(dataset.load_image(row))
        return n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def _features(cache: Path, model: str) -> dict[str, bytes]:
    with h5py.File(cache, "r") as f:
        return {
            name: f[fmt.features_path(model, name)][()].tobytes()
            for name in f[fmt.features_path(model)]
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="default: the backbone's own")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="cores to use")
    args = parser.parse_args(argv)

    import ray
    import torch

    from featurecache import RayEngine, RunOptions, extract

    commits = _Commits()
    engines = logging.getLogger("featurecache.engines")  # both engines commit through it
    engines.addHandler(commits)
    engines.setLevel(logging.INFO)
    torch.set_num_threads(args.cpus)
    settings = dict(
        model=args.model,
        weights=args.weights,
        image_size=args.image_size,
        dtype="float32",
        options=RunOptions(
            device="cpu", shard_size=args.shard_size, batch_size=args.batch_size, workers=0
        ),
    )
    print(
        f"# {args.model} at {args.image_size}px, {args.n_images} JPEGs (~500x375), float32, "
        f"shards of {args.shard_size}, batches of {args.batch_size}; "
        f"{args.cpus} cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"ray {ray.__version__}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _write_jpegs(tmp / "images", args.n_images)
        rate = _decode_rate(data, args.model, args.weights, args.image_size)
        print(f"{'decode + preprocess, 1 core':34s} {rate:7.1f} img/s", flush=True)
        caches = {k: tmp / k / "cache.h5" for k in ("local", "ray1", "rayn")}
        for cache in caches.values():
            cache.parent.mkdir()
        rows = [
            _run(
                f"in-process ({args.cpus} threads)",
                lambda: extract(data, caches["local"], **settings),
                commits, args.n_images, args.shard_size, 1,
            )
        ]  # fmt: skip
        start = time.time()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        print(f"{'ray.init (local instance)':34s} wall {time.time() - start:7.2f} s", flush=True)
        try:
            rows.append(
                _run(
                    f"ray 1 worker x {args.cpus} cpus",
                    lambda: extract(
                        data, caches["ray1"], **settings,
                        engine=RayEngine(workers=1, cpus_per_worker=args.cpus),
                    ),
                    commits, args.n_images, args.shard_size, 1,
                )
            )  # fmt: skip
            rows.append(
                _run(
                    f"ray {args.cpus} workers x 1 cpu",
                    lambda: extract(
                        data, caches["rayn"], **settings,
                        engine=RayEngine(workers=args.cpus, cpus_per_worker=1),
                    ),
                    commits, args.n_images, args.shard_size, args.cpus,
                )
            )  # fmt: skip
        finally:
            ray.shutdown()
        reference = _features(caches["local"], args.model)
        for key in ("ray1", "rayn"):
            same = _features(caches[key], args.model) == reference
            print(f"{key}: features equal to in-process bit for bit: {same}")
    local, ray1 = rows[0], rows[1]
    print(
        f"overhead of ray (1 worker, same cores) vs in-process: wall "
        f"{100 * (ray1['wall_s'] / local['wall_s'] - 1):+.1f}%, steady throughput "
        f"{100 * (ray1['steady_img_s'] / local['steady_img_s'] - 1):+.1f}%, fixed start-up "
        f"{ray1['first_commit_s'] - local['first_commit_s']:+.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
