"""``--decode fast`` against ``exact``: decoding speed, feature difference, accuracy difference.

1. Speed: decode + preprocess in one process over the ``bench_jpeg.py`` folder, interleaved,
   best of ``--repeats``: ``exact`` and ``fast`` as featurecache decodes them (simplejpeg for
   plain JPEGs where installed), the same through PIL alone, and ``exact`` as it was before
   decode modes (PIL with two extra copies).
2. Features and accuracy: scikit-learn's digits (8 x 8) upscaled to photo size (400-1,000 px
   a side, bicubic) and saved as JPEG (quality 90) in class folders; ``featurecache extract``
   with each decode mode under its own model name, then ``pipelines.fit`` (logreg, 5-fold CV
   on the training split, the test split scored once). Reports the features' relative
   difference and both test accuracies.

    python benchmarks/fast_decode.py --n-images 256 --model efficientnet_lite0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from jpeg_folder import make_jpeg_folder
from PIL import Image

from featurecache import RunOptions, extract, load_backbone, open_cache
from featurecache.models._decode import read_image


def decoders(preprocess):
    """Name -> function(path) returning the preprocessed image."""
    import torch

    def before(path):  # load_image before this change: PIL, convert, two copies, CHW copy
        with Image.open(path) as image:
            rgb = np.array(image.convert("RGB"), dtype=np.uint8)
        return preprocess(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())

    def pil(path, reduce: bool):
        with Image.open(path) as image:
            if reduce:
                height, width = preprocess.resized_size(image.height, image.width)
                image.draft(None, (width, height))
            rgb = np.array(image.convert("RGB"))
        return preprocess(torch.from_numpy(rgb).permute(2, 0, 1))

    return {
        "exact, before (PIL, copies)": before,
        "exact, PIL": lambda path: pil(path, False),
        "exact": lambda path: preprocess(read_image(path, preprocess, "exact")),
        "fast, PIL draft": lambda path: pil(path, True),
        "fast": lambda path: preprocess(read_image(path, preprocess, "fast")),
    }


def speed(folder: Path, preprocess, repeats: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)  # one decoding process, as one loader worker
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    functions = decoders(preprocess)
    best = dict.fromkeys(functions, float("inf"))
    for fn in functions.values():
        fn(paths[0])
    for _ in range(repeats):
        for name, fn in functions.items():
            started = time.perf_counter()
            for path in paths:
                fn(path)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: len(paths) / seconds for name, seconds in best.items()}


def make_digits_folder(root: Path, seed: int = 0) -> Path:
    """Every digit as a photo-sized JPEG under ``root/{train,test}/<digit>/``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rows = np.arange(len(digits.target))
    train, _ = train_test_split(rows, test_size=0.25, stratify=digits.target, random_state=seed)
    train = set(train.tolist())
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "train" if i in train else "test"
        path = root / split / str(label) / f"{i:04d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, i])
        width, height = (int(v) for v in rng.integers(400, 1001, size=2))
        pixels = Image.fromarray(np.uint8(255 - image * 255 / 16))
        pixels.resize((width, height), Image.BICUBIC).convert("RGB").save(path, quality=90)
    return root


def accuracy(root: Path, args) -> dict:
    from pipelines import fit

    cache = root / "cache.h5"
    options = RunOptions(batch_size=args.batch_size, workers=args.workers)
    seconds = {}
    for mode in ("exact", "fast"):
        started = time.perf_counter()
        extract(
            root / "digits", cache, model=args.model, layers=args.layers, decode=mode,
            name=f"{args.model}-{mode}", options=options,
        )  # fmt: skip
        seconds[mode] = time.perf_counter() - started
    opened = open_cache(cache)
    differences = {}
    for layer in args.layers:
        X = {mode: opened.load(f"{args.model}-{mode}", layer)[0] for mode in seconds}
        gap = np.linalg.norm(X["fast"] - X["exact"], axis=1)
        norm = np.linalg.norm(X["exact"], axis=1)
        cosine = np.sum(X["fast"] * X["exact"], axis=1) / (norm * np.linalg.norm(X["fast"], axis=1))
        differences[layer] = {
            "relative_l2_median": float(np.median(gap / norm)),
            "relative_l2_max": float(np.max(gap / norm)),
            "cosine_min": float(np.min(cosine)),
        }
    table = fit(cache, root / "results", heads=["logreg"], n_jobs=1)
    scores = {
        (row["model"], row["layer"]): float(row["test_accuracy"]) for _, row in table.iterrows()
    }
    return {
        "extract_seconds": seconds,
        "features": differences,
        "test_accuracy": {
            layer: {mode: scores[(f"{args.model}-{mode}", layer)] for mode in seconds}
            for layer in args.layers
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=256, help="photos for the speed part")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--layers", nargs="+", default=["blocks.4", "embedding"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None, help="keep the generated folders here")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.workers = args.workers if args.workers == "auto" else int(args.workers)

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.folder or scratch)
        preprocess = load_backbone(args.model, "none").preprocess
        photos = make_jpeg_folder(base / "jpegs", args.n_images)
        rates = speed(photos, preprocess, args.repeats)
        print(f"\ndecode + preprocess, one process, {args.n_images} photos (400-1,200 px):")
        for name, rate in rates.items():
            base = rates["exact, before (PIL, copies)"]
            print(f"  {name:28s} {rate:7.1f} img/s  ({rate / base:.2f}x before)")
        figures = {"args": vars(args), "decode_rates": rates}
        if not args.skip_accuracy:
            digits = make_digits_folder(base / "accuracy" / "digits").parent
            figures.update(accuracy(digits, args))
            print(f"\ndigits as photo-sized JPEGs, {args.model}, logreg (5-fold CV), test split:")
            for layer in args.layers:
                acc, diff = figures["test_accuracy"][layer], figures["features"][layer]
                print(
                    f"  {layer:12s} accuracy exact {acc['exact']:.4f}, fast {acc['fast']:.4f} "
                    f"({acc['fast'] - acc['exact']:+.4f}); features: relative L2 median "
                    f"{diff['relative_l2_median']:.4f}, max {diff['relative_l2_max']:.4f}, "
                    f"min cosine {diff['cosine_min']:.5f}"
                )
            seconds = figures["extract_seconds"]
            print(f"  extract: exact {seconds['exact']:.1f} s, fast {seconds['fast']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
