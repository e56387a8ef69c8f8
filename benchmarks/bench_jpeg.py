"""Extraction from a folder of JPEG photos against its two limits: decoding and the forward pass.

Interleaved, best of ``--repeats``, on a deterministic folder of photo-sized JPEGs
(``jpeg_folder.py``: crops and rescales of scikit-learn's sample photos, 400-1,200 px a
side, quality 90):

(a) ``featurecache.extract`` from the folder, everything included (model set-up, decoding,
    preprocessing, forward, pooling, shard files, index);
(b) decode + preprocess alone: the extractor's own data loader with the same number of
    processes, no forward;
(c) the bare forward (``model(x)``, channels_last, the compute dtype ``--dtype`` resolves to)
    on tensors preprocessed beforehand.

The limit: on the CPU, decoding and the forward share the same cores, so an image costs the
time of both, limit = 1 / (1/b + 1/c), with (b) measured on every core (``--cpus``); on a
GPU host decoding runs on other cores than the forward, limit = min(b, c), except with
``--decode gpu``, where decoding shares the GPU with the forward: 1 / (1/b + 1/c) again.
The figure of merit is (a) / limit. (a) includes the set-up every extraction pays once (model
build, layer discovery, the BatchNorm-fold check, loader start: about 1 s on 2 cores), so
small folders understate it; the issue's figure is for 1,536 photos.

    python benchmarks/bench_jpeg.py --n-images 1536 --model resnet18 --decode exact fast
    python benchmarks/bench_jpeg.py --n-images 1536 --device cuda --model resnet50 \
        --decode exact fast gpu --workers auto 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from jpeg_folder import make_jpeg_folder

from featurecache import RunOptions, extract, load_backbone, load_dataset
from featurecache.engines._options import resolve_loader_workers
from featurecache.engines._runner import (
    COMPUTE_DTYPES,
    data_loader,
    resolve_device,
    resolve_dtype,
)
from featurecache.models._decode import decode_jpegs


def time_extract(folder: Path, args, decode: str, workers: int | str) -> float:
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        extract(
            folder, Path(cache) / "bench.h5", model=args.model, weights=args.weights,
            image_size=args.image_size, dtype=args.dtype, decode=decode, split="none",
            options=RunOptions(batch_size=args.batch_size, workers=workers, device=args.device),
        )  # fmt: skip
        return time.perf_counter() - started


def time_decode(dataset, preprocess, decode: str, batch_size: int, workers: int, device) -> float:
    """Decode + preprocess every image through the extractor's loader, nothing else.

    With ``decode="gpu"`` the loader reads bytes and the batches decode on ``device``.
    """
    started = time.perf_counter()
    pin = decode == "gpu" and device.type == "cuda"
    for batch in data_loader(dataset, preprocess, decode, batch_size, workers, pin_memory=pin):
        if decode == "gpu":
            decoded = decode_jpegs(batch[5], device)
            torch.stack([preprocess(image) for image in decoded if isinstance(image, torch.Tensor)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def time_forward(model, batches, device: torch.device, dtype: torch.dtype) -> float:
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    started = time.perf_counter()
    with torch.inference_mode(), autocast:
        for x in batches:
            model(x.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def preprocessed_batches(dataset, preprocess, decode: str, batch_size: int, device):
    batches = []
    for _, images, ok, reasons, *_ in data_loader(
        dataset, preprocess, decode, batch_size, 0, pin_memory=False
    ):
        if not ok.all():
            raise RuntimeError(f"undecodable benchmark image: {reasons}")
        x = images.contiguous(memory_format=torch.channels_last)
        batches.append(x.pin_memory() if device.type == "cuda" else x)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default="none", help="random weights by default")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto|float32|bfloat16|float16")
    parser.add_argument(
        "--decode", nargs="+", default=["exact", "fast"], help="exact|fast|gpu (each timed)"
    )
    parser.add_argument(
        "--workers", nargs="+", default=["auto"], help="extract's loader processes (each timed)"
    )
    parser.add_argument(
        "--cpus", type=int, default=len(os.sched_getaffinity(0)), help="cores for the CPU limit"
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of N (after a warm-up)")
    parser.add_argument("--folder", default=None, help="keep the JPEG folder here (reused)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    workers = [value if value == "auto" else int(value) for value in args.workers]

    with tempfile.TemporaryDirectory() as scratch:
        folder = make_jpeg_folder(Path(args.folder or scratch) / "jpegs", args.n_images)
        figures = run(folder, args, workers, args.decode)
    report(figures, args)


def run(folder: Path, args, workers: list[int | str], modes: list[str]) -> dict:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    backbone = load_backbone(args.model, args.weights, image_size=args.image_size)
    dataset = load_dataset(folder, split="none")
    loaders = {value: resolve_loader_workers(value, dataset) for value in workers}
    n_loaders = loaders[workers[0]]
    preprocess = backbone.preprocess
    model = backbone.module.eval().to(device).to(memory_format=torch.channels_last)
    cpu_mode = next((mode for mode in modes if mode != "gpu"), "exact")
    batches = preprocessed_batches(dataset, preprocess, cpu_mode, args.batch_size, device)
    processes = sorted({n_loaders, args.cpus} if device.type == "cpu" else {n_loaders})

    methods = {
        _extract_name(mode, value, n): lambda mode=mode, value=value: time_extract(
            folder, args, mode, value
        )
        for mode in modes
        for value, n in loaders.items()
    }
    for mode in modes:
        for n in [n_loaders] if mode == "gpu" else processes:
            methods[_decode_name(mode, n)] = lambda mode=mode, n=n: time_decode(
                dataset, preprocess, mode, args.batch_size, n, device
            )
    methods[FORWARD] = lambda: time_forward(model, batches, device, COMPUTE_DTYPES[dtype])
    for fn in methods.values():
        fn()  # warm-up: page cache, loader start-up, kernels
    timings = {name: [] for name in methods}
    for _ in range(args.repeats):  # round robin: every method sees the same machine load
        for name, fn in methods.items():
            timings[name].append(fn())
    rates = {name: len(dataset) / min(values) for name, values in timings.items()}
    forward = rates[FORWARD]
    limits, ratios = {}, {}
    for mode in modes:
        if device.type == "cpu" or mode == "gpu":  # decoding shares the forward's hardware
            decode = rates[_decode_name(mode, args.cpus if mode != "gpu" else n_loaders)]
            limits[mode] = (1 / (1 / decode + 1 / forward), "1 / (1/decode + 1/forward)")
        else:
            decode = rates[_decode_name(mode, n_loaders)]
            limits[mode] = (min(decode, forward), "min(decode, forward)")
        for value, n in loaders.items():
            name = _extract_name(mode, value, n)
            ratios[name] = rates[name] / limits[mode][0]
    return {
        "rates": rates,
        "limits": limits,
        "ratios": ratios,
        "device": str(device),
        "compute_dtype": dtype,
        "n_images": len(dataset),
        "megapixels": _megapixels(dataset),
        "threads": torch.get_num_threads(),
    }


FORWARD = "(c) bare forward, preprocessed tensors"


def _extract_name(mode: str, workers: int | str, n: int) -> str:
    shown = f"{workers} ({n})" if workers == "auto" else str(workers)
    return f"(a) extract, decode {mode}, workers {shown}"


def _decode_name(mode: str, processes: int) -> str:
    where = " + device" if mode == "gpu" else ""
    return f"(b) decode {mode} + preprocess, {processes} processes{where}"


def _megapixels(dataset) -> float:
    from PIL import Image

    total = 0
    for path in dataset.paths:
        with Image.open(path) as image:
            total += image.width * image.height
    return total / len(dataset) / 1e6


def report(figures: dict, args) -> None:
    print(
        f"\n{args.model} ({args.weights} weights), {figures['n_images']} JPEGs "
        f"({figures['megapixels']:.2f} MP on average), {args.image_size}px, batch "
        f"{args.batch_size}, {figures['compute_dtype']} on {figures['device']} "
        f"({platform.processor() or platform.machine()}, {figures['threads']} threads), "
        f"best of {args.repeats} interleaved"
    )
    print(f"{'step':52s} {'img/s':>8s}")
    for name, rate in figures["rates"].items():
        print(f"{name:52s} {rate:8.1f}")
    for mode, (limit, rule) in figures["limits"].items():
        print(f"{'limit, decode ' + mode + ': ' + rule:52s} {limit:8.1f}")
    print()
    for name, ratio in figures["ratios"].items():
        print(f"{name[4:]} / limit = {ratio:.2f}  (target >= 0.91: at most 1.1x the time)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **figures}, indent=1))


if __name__ == "__main__":
    main()
