"""Early exit: an early-layer-only pass against the full forward pass it replaced.

For each ``MODEL:LAYER``, the extractor's own :class:`ShardRunner` computes that one layer
over the same in-memory images (no decoding, no cache writes) twice, interleaved, best
of ``--repeats``: with early exit (the forward ends after the layer) and without (the
whole network runs, as before). It also checks that both give the same numbers bit for bit.

    python benchmarks/bench_early_exit.py --pairs efficientnet_lite0:blocks.4 resnet18:layer1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from featurecache import load_backbone
from featurecache.data._datasets import Dataset
from featurecache.engines._runner import Plan, ShardRunner, resolve_device, resolve_dtype
from featurecache.models._layers import default_pool
from featurecache.models._rebuild import feature_config


def make_dataset(n_images: int, side: int) -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, side, side, 3), dtype=np.uint8)
    return Dataset.from_arrays(images, np.arange(n_images) % 2, ["train"] * n_images, ["a", "b"])


def runners(model: str, layer: str, args, device):
    backbone = load_backbone(model, "none", image_size=args.image_size)
    infos = {info.name: info for info in backbone.layers}
    config = feature_config(
        backbone, default_pool(infos[layer].kind), "float32", resolve_dtype(args.dtype, device)
    )
    pooling = config.pooling
    return {
        early: ShardRunner(backbone, infos, pooling, config, device, early_exit=early)
        for early in (True, False)
    }, backbone


def features(runner: ShardRunner, dataset: Dataset, layer: str, batch_size: int):
    plan = Plan(len(dataset), len(dataset), ((0, (layer,)),))
    started = time.perf_counter()
    (result,) = runner.run(dataset, plan, batch_size, 0)
    return time.perf_counter() - started, result.features[layer]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs", nargs="+", default=["efficientnet_lite0:blocks.4", "resnet18:layer1"]
    )
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)

    rows = {}
    for pair in args.pairs:
        model, layer = pair.split(":")
        pair_runners, backbone = runners(model, layer, args, device)
        dataset = make_dataset(args.n_images, backbone.preprocess.resize_size)
        outputs = {
            early: features(r, dataset, layer, args.batch_size)[1]
            for early, r in pair_runners.items()
        }  # fmt: skip  (warm-up)
        if not np.array_equal(outputs[True], outputs[False]):
            raise AssertionError(f"{pair}: early exit changed the features")
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.repeats):
            for early, runner in pair_runners.items():
                best[early] = min(best[early], features(runner, dataset, layer, args.batch_size)[0])
        rates = {early: args.n_images / seconds for early, seconds in best.items()}
        rows[pair] = {
            "full": rates[False],
            "early": rates[True],
            "speedup": rates[True] / rates[False],
            "dtype": pair_runners[True].config.compute_dtype,
        }
    print(f"\n{args.n_images} images at {args.image_size}px, batch {args.batch_size}, {device}, "
          f"{torch.get_num_threads()} threads; features equal bit for bit in every row")  # fmt: skip
    print(
        f"{'model:layer':32s} {'dtype':>9s} {'full img/s':>11s} {'early img/s':>12s} {'speed-up':>9s}"
    )
    for pair, row in rows.items():
        print(f"{pair:32s} {row['dtype']:>9s} {row['full']:11.1f} {row['early']:12.1f} "
              f"{row['speedup']:8.2f}x")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
