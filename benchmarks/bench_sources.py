"""Extraction throughput per backbone source: one model each, random weights, one image size.

Each model extracts its ``embedding`` of the same folder of random PNG images into a fresh
cache with :func:`featurecache.extract` (decode, the source's own preprocessing, forward,
pool, write). Repeats are interleaved (every model sees the same machine load) and the best
of them is reported. Pairs show what a source costs over the same architecture: torchvision
against timm ResNet-50, timm against Hugging Face ViT-S/14 (DINOv2); OpenCLIP's ViT-B/32
image tower and the embedded EfficientNet-Lite0 complete the sources.

    python benchmarks/bench_sources.py --n-images 256 --image-size 112 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` random 128 x 160 PNG images in two class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def hf_dinov2_folder(root: Path) -> str:
    """A local Hugging Face repository: DINOv2-small's architecture, config-built (no download)."""
    import transformers

    transformers.Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
        patch_size=14, image_size=518,
    ).save_pretrained(root)  # fmt: skip
    transformers.BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
        do_center_crop=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(root)  # fmt: skip
    return f"hf:{root}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="auto")
    args = parser.parse_args()

    import torch

    from featurecache import RunOptions, extract

    workdir = Path(tempfile.mkdtemp(prefix="bench_sources-"))
    data = write_images(workdir / "images", args.n_images)
    models = {
        "torchvision": "resnet50",
        "timm": "timm:resnet50",
        "embedded": "efficientnet_lite0",
        "open_clip": "open_clip:ViT-B-32",
        "timm (ViT-S/14)": "timm:vit_small_patch14_dinov2",
        "hf (ViT-S/14)": hf_dinov2_folder(workdir / "hf-dinov2-small"),
    }
    workers = args.workers if args.workers == "auto" else int(args.workers)
    options = RunOptions(batch_size=args.batch_size, workers=workers, progress=False)
    speeds: dict[str, list[float]] = {label: [] for label in models}
    for repeat in range(args.repeats):
        for label, model in models.items():
            cache = workdir / f"{repeat}-{len(speeds[label])}-{abs(hash(label))}.h5"
            started = time.perf_counter()
            result = extract(
                data, cache, model=model, weights="none", layers=["embedding"],
                image_size=args.image_size, dtype="float32", split="none", options=options,
            )  # fmt: skip
            speeds[label].append(result.images_per_second)
            print(f"repeat {repeat + 1} {label:18s} {result.images_per_second:7.1f} img/s "
                  f"(call {time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip

    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.n_images} images at {args.image_size} px, "
        f"batch {args.batch_size}, float32, embedding only, best of {args.repeats} interleaved"
    )
    print(f"{'source':18s} {'model':34s} {'best img/s':>10s} {'all':>24s}")
    for label, model in models.items():
        shown = model if not model.startswith("hf:/") else "hf:<DINOv2-small config>"
        runs = ", ".join(f"{s:.1f}" for s in speeds[label])
        print(f"{label:18s} {shown:34s} {max(speeds[label]):10.1f} {runs:>24s}")


if __name__ == "__main__":
    main()
