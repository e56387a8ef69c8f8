"""Extraction throughput: featurecache against a bare loop and a naive torch.cat loop.

Same data, model, batch size and compute dtype for every row:

(a) ``featurecache.extract`` with 4 layers (and with the embedding alone), everything
    included: preprocessing, hooks, pooling, shard files, index;
(b) a bare ``model(x)`` loop over tensors that were preprocessed beforehand;
(c) the naive loop that grows its output with ``torch.cat`` per batch.

Targets (issue 2): (a, 4 layers) >= 0.9 x (b), and 4 layers <= 1.1 x the time of 1 layer.

    python benchmarks/bench_extract.py --n-images 512 --model efficientnet_lite0 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featurecache import RunOptions, extract, load_backbone
from featurecache.data._datasets import Dataset
from featurecache.engines._runner import resolve_device


def make_dataset(n_images: int, side: int) -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, side, side, 3), dtype=np.uint8)
    return Dataset.from_arrays(
        images, np.arange(n_images) % 2, ["train"] * n_images, ["a", "b"], source="bench"
    )


def time_featurecache(dataset, args, layers) -> float:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        extract(
            dataset, Path(folder) / "bench.h5", model=args.model, weights=args.weights, layers=layers,
            image_size=args.image_size, dtype=args.dtype,
            options=RunOptions(
                batch_size=args.batch_size, workers=0, device=args.device, shard_size=args.shard_size
            ),
        )  # fmt: skip
        return time.perf_counter() - started


def preprocessed_batches(dataset, backbone, batch_size):
    tensors = torch.stack([backbone.preprocess(dataset.load_image(i)) for i in range(len(dataset))])
    return list(tensors.split(batch_size))


def time_loop(model, batches, device, dtype, grow: bool) -> float:
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    output = torch.empty(0)
    started = time.perf_counter()
    with torch.inference_mode(), autocast:
        for x in batches:
            y = model(x.to(device))
            if grow:
                output = torch.cat([output, y.float().cpu()])
            else:
                y.float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", help="float32|bfloat16|float16")
    parser.add_argument(
        "--repeats", type=int, default=2, help="best of N timed runs (after one warm-up)"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    backbone = load_backbone(args.model, args.weights, image_size=args.image_size)
    # Images already at the resize size, so (a) pays for decoding-free preprocessing only.
    dataset = make_dataset(args.n_images, backbone.preprocess.resize_size)
    layers4 = list(backbone.default_layers)[-4:]
    batches = preprocessed_batches(dataset, backbone, args.batch_size)
    model = backbone.module.to(device)
    model_cl = load_backbone(args.model, args.weights, image_size=args.image_size).module.to(device)
    model_cl = model_cl.to(memory_format=torch.channels_last)
    batches_cl = [b.contiguous(memory_format=torch.channels_last) for b in batches]

    methods = {
        "(a) featurecache extract, 4 layers": lambda: time_featurecache(dataset, args, layers4),
        "(a) featurecache extract, embedding only": lambda: time_featurecache(
            dataset, args, ["embedding"]
        ),
        "(b) bare model(x) loop, preloaded tensors": lambda: time_loop(
            model, batches, device, dtype, False
        ),
        "(b') bare loop, channels_last": lambda: time_loop(
            model_cl, batches_cl, device, dtype, False
        ),
        "(c) naive loop growing torch.cat": lambda: time_loop(model, batches, device, dtype, True),
    }
    # Round-robin repeats, best of each: every method sees the same machine conditions.
    for fn in methods.values():
        fn()  # warm-up
    timings = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            timings[name].append(fn())
    rows = {name: min(values) for name, values in timings.items()}
    n = args.n_images
    print(f"\nmodel {args.model} ({backbone.weights}), {n} images at {args.image_size}px, batch {args.batch_size}, "
          f"{args.dtype} on {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")  # fmt: skip
    print(f"{'method':46s} {'seconds':>8s} {'img/s':>8s}")
    for name, seconds in rows.items():
        print(f"{name:46s} {seconds:8.2f} {n / seconds:8.1f}")
    a4 = n / rows["(a) featurecache extract, 4 layers"]
    b = max(
        n / rows["(b) bare model(x) loop, preloaded tensors"],
        n / rows["(b') bare loop, channels_last"],
    )
    cost = (
        rows["(a) featurecache extract, 4 layers"]
        / rows["(a) featurecache extract, embedding only"]
    )
    print(f"\n(a, 4 layers) / best (b) = {a4 / b:.2f}  (target >= 0.90)")
    print(f"time 4 layers / time 1 layer = {cost:.2f}  (target <= 1.10)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "seconds": rows, "ratio_a_b": a4 / b, "ratio_4_1": cost},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
