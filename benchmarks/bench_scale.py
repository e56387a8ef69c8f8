"""Extraction from tar shards against the same JPEGs in a folder, and the JPEG folder at its limit.

On a deterministic folder of photo-sized JPEGs (``jpeg_folder.py``) and the same files
written as webdataset tar shards (key: the file's path without extension, ``jpg``, ``cls``),
interleaved, ``--repeats`` runs of each after a warm-up:

- ``scan``: ``load_dataset`` of the folder, and of the shards (reads every shard once: keys,
  labels, the content digest of each image);
- ``extract``: ``featurecache.extract`` from the folder and from the shards (everything
  included: set-up, decoding, forward, shard files, index), ``--workers`` loader processes;
- ``extract, forward on cores - k threads``: the same from the folder with
  ``LocalEngine(forward_threads=cores - k)`` (``--k``), the loader processes unchanged;
- the limit's two terms: (d) decode + preprocess of every image in one process on one
  thread, (f) the bare forward on preprocessed tensors with a thread per core.

The limit (issue 22): limit = d / cores + f, the decode spread over every core plus the
forward on all of them; the figure of merit is extract / limit (target <= 1.15).
Each extraction also reports its timeline: set-up (until the first batch is asked for),
waiting for data, forward passes, writing shards, and the rest (pooling, copies, index).

    python benchmarks/bench_scale.py --n-images 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from jpeg_folder import make_jpeg_folder

from featurecache import LocalEngine, RunOptions, extract, load_backbone, load_dataset
from featurecache.cache import Store
from featurecache.engines._runner import (
    COMPUTE_DTYPES,
    ShardRunner,
    data_loader,
    resolve_device,
    resolve_dtype,
)

SHARD = 128  # images per tar shard


def write_shards(folder: Path, out: Path) -> str:
    """The folder's images as tar shards of ``SHARD`` images; returns their brace pattern."""
    dataset = load_dataset(folder, split="none")
    out.mkdir(parents=True, exist_ok=True)
    n_shards = -(-len(dataset) // SHARD)
    for shard in range(n_shards):
        path = out / f"{shard:06d}.tar"
        if path.exists():
            continue
        with tarfile.open(path.with_suffix(".tmp"), "w") as tar:
            for i in range(shard * SHARD, min((shard + 1) * SHARD, len(dataset))):
                key = dataset.ids[i].rsplit(".", 1)[0]
                tar.add(dataset.paths[i], arcname=f"{key}.jpg")
                _add_text(tar, f"{key}.cls", str(int(dataset.labels[i])))
        path.with_suffix(".tmp").replace(path)
    return str(out / f"{{000000..{n_shards - 1:06d}}}.tar")


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    import io

    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class Timeline:
    """Where one extraction's time goes, from hooks on the runner and the store."""

    def __init__(self) -> None:
        self.runners: list[ShardRunner] = []
        self.forward = self.write = 0.0
        self.first_batch: float | None = None

    def install(self):
        timeline = self
        init, forward, write = ShardRunner.__init__, ShardRunner._forward, Store.write_shard

        def init_hook(self, *args, **kwargs):
            init(self, *args, **kwargs)
            timeline.runners.append(self)

        def forward_hook(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return forward(self, *args, **kwargs)
            finally:
                timeline.forward += time.perf_counter() - started

        def write_hook(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return write(self, *args, **kwargs)
            finally:
                timeline.write += time.perf_counter() - started

        ShardRunner.__init__, ShardRunner._forward, Store.write_shard = (
            init_hook, forward_hook, write_hook,
        )  # fmt: skip
        return lambda: (
            setattr(ShardRunner, "__init__", init)
            or setattr(ShardRunner, "_forward", forward)
            or setattr(Store, "write_shard", write)
        )

    def stages(self, total: float) -> dict[str, float]:
        waited = sum(r.clock.waited for r in self.runners)
        loop = sum(r.clock.total for r in self.runners)
        return {
            "set-up": total - loop,
            "data wait": waited,
            "forward": self.forward,
            "write shards": self.write,
            "other in loop": loop - waited - self.forward - self.write,
        }


def time_extract(data, args, threads: int | None = None) -> tuple[float, dict]:
    """One extraction, its forward on ``threads`` (``LocalEngine(forward_threads=)``)."""
    timeline = Timeline()
    restore = timeline.install()
    try:
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            extract(
                data, Path(cache) / "bench.h5", model=args.model, weights=args.weights,
                image_size=args.image_size, dtype=args.dtype, split="none",
                options=RunOptions(batch_size=args.batch_size, workers=args.workers,
                                   device="cpu"),
                engine=LocalEngine(forward_threads=threads),
            )  # fmt: skip
            total = time.perf_counter() - started
    finally:
        restore()
    return total, timeline.stages(total)


def time_scan(data) -> tuple[float, dict]:
    started = time.perf_counter()
    load_dataset(data, split="none")
    return time.perf_counter() - started, {}


def time_decode_one_core(dataset, preprocess, batch_size: int) -> tuple[float, dict]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        for _ in data_loader(dataset, preprocess, "exact", batch_size, 0):
            pass
        return time.perf_counter() - started, {}
    finally:
        torch.set_num_threads(before)


def time_forward(model, batches, dtype: torch.dtype, threads: int) -> tuple[float, dict]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    try:
        started = time.perf_counter()
        with torch.inference_mode(), autocast:
            for x in batches:
                model(x)
        return time.perf_counter() - started, {}
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default="none", help="random weights by default")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--workers", default="auto", help="extract's loader processes")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--k", type=int, default=1, help="forward threads = cores - k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None, help="keep the JPEGs and shards here")
    parser.add_argument("--only", nargs="*", default=None, help="run only these methods")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.workers = args.workers if args.workers == "auto" else int(args.workers)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.folder or scratch)
        folder = make_jpeg_folder(root / "jpegs", args.n_images)
        shards = write_shards(folder, root / "shards")
        figures = run(folder, shards, args)
    report(figures, args)


def run(folder: Path, shards: str, args) -> dict:
    device = resolve_device("cpu")
    dtype = resolve_dtype(args.dtype, device)
    args.dtype = dtype
    backbone = load_backbone(args.model, args.weights, image_size=args.image_size)
    dataset = load_dataset(folder, split="none")
    model = backbone.module.eval().to(memory_format=torch.channels_last)
    batches = [
        images.contiguous(memory_format=torch.channels_last)
        for _, images, *_ in data_loader(dataset, backbone.preprocess, "exact", args.batch_size, 0)
    ]
    forward_threads = max(1, args.cores - args.k)
    methods = {
        "scan folder": lambda: time_scan(folder),
        "scan shards": lambda: time_scan(shards),
        "extract folder": lambda: time_extract(folder, args),
        "extract shards": lambda: time_extract(shards, args),
        f"extract folder, forward on {forward_threads} threads": lambda: time_extract(
            folder, args, forward_threads
        ),
        "(d) decode + preprocess, 1 process, 1 thread": lambda: time_decode_one_core(
            dataset, backbone.preprocess, args.batch_size
        ),
        f"(f) bare forward, {args.cores} threads": lambda: time_forward(
            model, batches, COMPUTE_DTYPES[dtype], args.cores
        ),
        f"bare forward, {forward_threads} threads": lambda: time_forward(
            model, batches, COMPUTE_DTYPES[dtype], forward_threads
        ),
    }
    if args.only:
        methods = {k: v for k, v in methods.items() if any(o in k for o in args.only)}
    for fn in methods.values():
        fn()  # warm-up: page cache, kernels, loader start-up
    seconds = {name: [] for name in methods}
    stages = {name: [] for name in methods}
    for _ in range(args.repeats):  # round robin: every method meets the same load
        for name, fn in methods.items():
            took, timeline = fn()
            seconds[name].append(took)
            stages[name].append(timeline)
            print(f"{name}: {took:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    return {
        "seconds": seconds,
        "stages": stages,
        "n_images": len(dataset),
        "compute_dtype": dtype,
        "load": os.getloadavg(),
    }


def report(figures: dict, args) -> None:
    n, seconds = figures["n_images"], figures["seconds"]
    print(
        f"\n{args.model} ({args.weights} weights), {n} JPEGs, {args.image_size}px, batch "
        f"{args.batch_size}, {figures['compute_dtype']}, {args.cores} cores "
        f"({platform.processor() or platform.machine()}), workers {args.workers}, "
        f"{args.repeats} interleaved runs, load average after {figures['load'][0]:.1f}"
    )
    print(f"{'method':52s} {'median s':>9s} {'min..max s':>14s} {'img/s':>7s}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:52s} {median:9.2f} {min(values):6.2f}..{max(values):<6.2f} {n / median:7.1f}")
    decode = next((v for k, v in seconds.items() if k.startswith("(d)")), None)
    forward = next((v for k, v in seconds.items() if k.startswith("(f)")), None)
    if decode and forward:
        print("\nper run (the same round): limit = d / cores + f; extract / limit")
        for i in range(len(decode)):
            limit = decode[i] / args.cores + forward[i]
            ratios = ", ".join(
                f"{name} {values[i] / limit:.2f}x"
                for name, values in seconds.items()
                if name.startswith("extract")
            )
            print(f"  run {i + 1}: limit {limit:.2f} s; {ratios}")
    if "extract folder" in seconds and "extract shards" in seconds:
        pairs = [
            s / f for s, f in zip(seconds["extract shards"], seconds["extract folder"], strict=True)
        ]
        print(f"\nshards / folder time per run: {', '.join(f'{p:.2f}' for p in pairs)}")
    print("\ntimeline of each extraction (median over runs, seconds):")
    for name, runs in figures["stages"].items():
        if runs and runs[0]:
            parts = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            print(f"  {name}: " + ", ".join(f"{key} {value:.2f}" for key, value in parts.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **figures}, indent=1))


if __name__ == "__main__":
    main()
