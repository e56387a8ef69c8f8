"""Stage 2 past the memory: stream a float16 layer, and fit heads on it in bounded memory.

The script writes a synthetic ``--rows x --features`` float16 layer the way extraction
writes it (shards of 1,024 rows committed through :class:`~featurecache.cache.Store`, one
layer, 10 classes, 80 % train and 20 % test), then reports:

- ``read``: the throughput of :meth:`Cache.iter_batches` (float32 windows) against a
  contiguous HDF5 read of the same float16 bytes upcast to float32, and against
  :meth:`Cache.load_rows` (best of ``--repeats`` interleaved runs; target >= 0.9x);
- ``fit``: for each ``--runs`` entry (heads), ``featurecache fit CACHE --heads H --cv 3
  --memory M --jobs 1`` in a child process: its wall time and its peak RSS (``VmHWM`` of
  the child, read by the child itself as it exits), with the strategy of every head;
- the figure of a 10,000,000 x 1,280 layer, extrapolated from the measured per-row costs
  with the arithmetic printed.

    python benchmarks/bench_out_of_core.py --rows 100000          # a quick look
    python benchmarks/bench_out_of_core.py                        # 1,000,000 x 384
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featurecache.cache import FeatureConfig, SampleTable, Store, open_cache  # noqa: E402

SHARD_ROWS = 1024
N_CLASSES = 10
# What a fit holds per row whatever the budget: the sample table, the fitting rows, their folds.
_BOOKKEEPING = """
import sys
import numpy as np
from featurecache.cache import open_cache
from pipelines.heads._search import stratified_splits
from pipelines.rows._stream import fold_groups

def rss():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS"))

before = rss()
cache = open_cache(sys.argv[1])
rows = np.flatnonzero((cache.labels >= 0) & (cache.splits == "train"))
y = cache.labels[rows]
splits = stratified_splits(y, 3, 0)
group = fold_groups(len(rows), splits)
print("BOOKKEEPING", (rss() - before) * 1024 / cache.n_samples)
"""
# The child fit: run the command line, then print its own peak RSS and user+system time.
_CHILD = """
import json, resource, sys, time
from featurecache.app.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - start
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("CHILD " + json.dumps({"code": code, "wall_s": wall, "peak_rss_mb": hwm / 1024}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=384)
    parser.add_argument("--memory", default="1GB", help="fit --memory of every run")
    parser.add_argument("--runs", default="ridge;logreg;ridge,logreg",
                        help="';'-separated --heads of each fit run ('': reads only)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "c.h5"
        t = time.perf_counter()
        write_layer(path, args.rows, args.features)
        print(f"wrote {args.rows:,} x {args.features} float16 ({args.rows * args.features * 2 / 1e9:.2f} GB) "
              f"in {time.perf_counter() - t:.0f} s")  # fmt: skip
        report_reads(path, args.rows, args.features, args.repeats)
        per_row = bookkeeping(path)
        results = [
            fit_run(path, Path(folder), heads, args.memory)
            for heads in args.runs.split(";")
            if heads
        ]
        extrapolate(results, args.rows, args.features, per_row)
    return 0


def write_layer(path: Path, n_rows: int, n_features: int) -> None:
    """Commit ``n_rows`` rows in shards of 1,024, as an extraction does."""
    n_shards = -(-n_rows // SHARD_ROWS)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, n_rows)
    splits = np.where(rng.random(n_rows) < 0.2, "test", "train").astype(object)
    store = Store(path)
    samples = SampleTable(
        ids=np.array([f"{i:09d}" for i in range(n_rows)], dtype=object), labels=labels,
        splits=splits, class_names=tuple(f"c{k}" for k in range(N_CLASSES)),
        source="bench_out_of_core",
    )  # fmt: skip
    config = FeatureConfig(
        backbone="synthetic", weights_sha256="0" * 64, preprocessing={}, pooling="avg",
        dtype="float16", compute_dtype="float32",
    )  # fmt: skip
    store.create_samples(samples, SHARD_ROWS)
    store.register_model("bench", config)
    centroids = rng.normal(size=(N_CLASSES, n_features)) * 0.15
    attrs = {"embedding": {"depth": 1.0, "depth_index": 0}}
    with store.lock_model("bench"):
        for shard in range(n_shards):
            start, stop = shard * SHARD_ROWS, min(n_rows, (shard + 1) * SHARD_ROWS)
            n = stop - start
            X = centroids[labels[start:stop]] + rng.standard_normal((n, n_features))
            features = {"embedding": X.astype(np.float16)}
            meta = store.write_shard(
                "bench", shard, start, np.ones(n, np.int8), [""] * n, features, attrs, config
            )
            store.publish("bench", [meta])
            store.rebuild_index_if_due()
        store.rebuild_index()


def report_reads(path: Path, n_rows: int, n_features: int, repeats: int) -> None:
    """``iter_batches`` against a contiguous read of the same bytes (best of ``repeats``)."""
    cache = open_cache(path)
    X, _ = cache.load_rows("bench", "embedding")  # the first read checks every SHA-256
    plain = path.with_name("contiguous.h5")
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=X.astype(np.float16))
    del X
    megabytes = n_rows * n_features * 2 / 1e6
    times: dict[str, list[float]] = {"contiguous": [], "iter_batches": [], "load_rows": []}
    for _ in range(repeats):
        t = time.perf_counter()
        with h5py.File(plain, "r") as f:
            f["x"][:].astype(np.float32)
        times["contiguous"].append(time.perf_counter() - t)
        t = time.perf_counter()
        n = sum(len(batch.rows) for batch in cache.iter_batches("bench", "embedding"))
        times["iter_batches"].append(time.perf_counter() - t)
        assert n == n_rows
        t = time.perf_counter()
        cache.load_rows("bench", "embedding")
        times["load_rows"].append(time.perf_counter() - t)
    base = min(times["contiguous"])
    print(f"read one layer ({megabytes:.0f} MB as float16, float32 out), best of {repeats} "
          f"interleaved: contiguous h5py + upcast {megabytes / base:.0f} MB/s")  # fmt: skip
    for name in ("iter_batches", "load_rows"):
        best = min(times[name])
        print(f"  {name}: {megabytes / best:.0f} MB/s ({base / best:.2f}x contiguous; "
              f"target >= 0.9x for iter_batches)")  # fmt: skip


def bookkeeping(path: Path) -> float:
    """Bytes a fit holds per sample whatever the budget (sample table, rows, folds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _BOOKKEEPING, str(path)], capture_output=True,
                          text=True, env=env, check=True)  # fmt: skip
    per_row = float(done.stdout.split()[-1])
    print(f"bookkeeping (sample table, fitting rows, folds): {per_row:.0f} bytes per sample")
    return per_row


def fit_run(path: Path, folder: Path, heads: str, memory: str) -> dict:
    """``featurecache fit`` in a child process: its peak RSS, time and strategies."""
    out = folder / f"results-{heads.replace(',', '-')}"
    command = [sys.executable, "-c", _CHILD, "fit", str(path), "--out", str(out), "--heads",
               heads, "--cv", "3", "--memory", memory, "--jobs", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("CHILD ")), None)
    if done.returncode or line is None:
        print(f"fit --heads {heads} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
        return {"heads": heads, "failed": True}
    record = {"heads": heads, **json.loads(line[len("CHILD ") :])}
    print(f"fit --heads {heads} --cv 3 --memory {memory}: {record['wall_s']:.0f} s, peak RSS "
          f"{record['peak_rss_mb']:.0f} MB")  # fmt: skip
    for text in done.stdout.splitlines():
        if " / " in text and ":" in text and not text.startswith("best"):
            print(f"  {text}")
    import pandas as pd

    table = pd.read_csv(out / "results.csv")
    for _, row in table.iterrows():
        print(f"  {row['head']}: CV {row['cv_mean']:.4f}, test {row['test_accuracy']:.4f}, "
              f"fit {row['fit_seconds']:.0f} s, {row['strategy']}")  # fmt: skip
    record["fit_seconds"] = dict(zip(table["head"], table["fit_seconds"], strict=True))
    return record


def extrapolate(results: list[dict], n_rows: int, n_features: int, per_row: float) -> None:
    """10,000,000 x 1,280 from the measured runs: time per row scales with the rows and, for
    the Gram of ridge, with the square of the features (each logreg pass with the features);
    the memory above the interpreter with the features (windows, the search sample) and
    their square (the Gram sums)."""
    big_rows, big_features = 10_000_000, 1280
    row_factor = big_rows / n_rows
    print(f"10,000,000 x 1,280 (extrapolated; x{row_factor:.0f} rows, "
          f"x{big_features / n_features:.2f} features):")  # fmt: skip
    for record in results:
        if record.get("failed"):
            continue
        for head, seconds in record["fit_seconds"].items():
            power = 2 if head == "ridge" else 1
            scale = row_factor * (big_features / n_features) ** power
            print(f"  {head} ({record['heads']} run): {seconds:.0f} s x {row_factor:.0f} x "
                  f"({big_features}/{n_features})^{power} = {seconds * scale / 3600:.1f} h")  # fmt: skip
        base = 210.0  # MB: the interpreter with numpy, scipy, scikit-learn, pandas, h5py
        rows_mb = per_row * n_rows / 1e6
        above = record["peak_rss_mb"] - base - rows_mb
        gram = 8 * (big_features**2 - n_features**2) * 7 / 1e6  # 3 folds + total + eigh
        big_rows_mb = per_row * big_rows / 1e6
        peak = base + big_rows_mb + above * big_features / n_features + gram
        print(f"  peak RSS ({record['heads']}): {base:.0f} + bookkeeping {per_row:.0f} B x 10 M "
              f"= {big_rows_mb:.0f} + ({record['peak_rss_mb']:.0f} - {base:.0f} - {rows_mb:.0f}) "
              f"x {big_features}/{n_features} + Gram growth {gram:.0f} = {peak:.0f} MB "
              f"(at the same --memory)")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
