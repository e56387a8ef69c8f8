"""The cost of naming a head's features: ``Cache.features_digest`` against reading them.

``fit`` computes the digest of the exact feature rows of every (model, layer) it fits, to
decide which heads it may reuse. The digest reads the commit log only, so its cost must not
grow with the width (or bytes) of the layer. The script writes two caches with the same
shards and rows through the real write path, one narrow (``--narrow`` features) and one wide
(``--wide``), and times, interleaved, best of ``--repeats``:

- ``features_digest`` of every row, narrow and wide (their ratio should be about 1);
- ``load_rows`` of the same layer (warm: SHA-256 already checked once), for scale.

    python benchmarks/bench_features_digest.py
    python benchmarks/bench_features_digest.py --shards 1000 --rows 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurecache.cache import FeatureConfig, SampleTable, Store, open_cache  # noqa: E402


def write(path: Path, n_shards: int, rows: int, n_features: int) -> Path:
    """A logged cache of one model and one layer, ``n_shards`` shards of ``rows`` rows."""
    n = n_shards * rows
    rng = np.random.default_rng(0)
    samples = SampleTable(
        np.array([f"s{i:08d}" for i in range(n)], dtype=object),
        rng.integers(0, 2, n).astype(np.int64),
        np.array(["train"] * n, dtype=object),
        ("a", "b"),
        source="synthetic",
    )
    config = FeatureConfig(
        backbone="toy", weights="none", weights_sha256="0" * 64,
        preprocessing={"resize_size": 32, "crop_size": 32, "mean": [0.5], "std": [0.5]},
        pooling="avg", dtype="float32", compute_dtype="float32",
    )  # fmt: skip
    store = Store(path)
    store.create_samples(samples, rows)
    store.register_model("toy", config)
    attrs = {"embedding": {"depth": 1.0, "depth_index": 0}}
    for shard in range(n_shards):
        start = shard * rows
        values = {"embedding": rng.normal(size=(rows, n_features)).astype(np.float32)}
        meta = store.write_shard(
            "toy", shard, start, np.ones(rows, np.int8), [""] * rows, values, attrs, config,
            {"torch_version": "none"},
        )  # fmt: skip
        store.publish("toy", [meta])
    store.rebuild_index()
    return path


def best(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--narrow", type=int, default=16)
    parser.add_argument("--wide", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        caches = {
            width: open_cache(write(Path(folder) / f"{width}.h5", args.shards, args.rows, width))
            for width in (args.narrow, args.wide)
        }
        rows = np.arange(args.shards * args.rows)
        for cache in caches.values():
            cache.load_rows("toy", "embedding")  # the first read checks every SHA-256
        digest, load = {w: [] for w in caches}, {w: [] for w in caches}
        for _ in range(3):  # interleaved rounds
            for width, cache in caches.items():
                digest[width].append(
                    best(lambda c=cache: c.features_digest("toy", "embedding", rows), args.repeats)
                )
                load[width].append(
                    best(lambda c=cache: c.load_rows("toy", "embedding"), args.repeats)
                )
    print(f"{args.shards} shards of {args.rows} rows ({args.shards * args.rows:,} rows)")
    for width in caches:
        mb = args.shards * args.rows * width * 4 / 1e6
        print(
            f"  {width:5d} features ({mb:8.1f} MB): features_digest {min(digest[width]) * 1e3:7.2f}"
            f" ms, load_rows {min(load[width]) * 1e3:8.2f} ms"
        )
    ratio = min(digest[args.wide]) / min(digest[args.narrow])
    print(f"features_digest wide / narrow: {ratio:.2f} (target: about 1, whatever the width)")
    share = min(digest[args.wide]) / min(load[args.wide])
    print(f"features_digest / load_rows of the wide layer: {share:.4f}")


if __name__ == "__main__":
    main()
