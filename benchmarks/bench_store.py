"""The cache's bookkeeping at scale: commit cost at shard 10 and at shard 10,000, and reads.

The script commits ``--shards`` shards of ``--rows`` rows through the real write path
(:meth:`Store.write_shard`, :meth:`Store.publish`, :meth:`Store.rebuild_index_if_due`,
and one :meth:`Store.rebuild_index` at the end, as an extraction does), with tiny features
(``--features`` float32 values for each of two layers), so only the bookkeeping is timed.
It reports:

- the mean cost of one commit over the first and over the last 1,000 commits, and their
  ratio (target <= 1.5);
- the total bookkeeping time as a share of a 10 M-image extraction at 3,000 img/s
  (target <= 5 %), scaled from the shards committed here;
- the cost of :meth:`Store.compact`, which an extraction runs at its end;
- the read throughput of one layer through the public reader after compaction, first read
  in the process (each segment's digest checked; target >= 0.5x), then ``load_rows`` (the
  layer's bytes; target >= 0.9x) and ``load`` (with labels and ids), against a contiguous
  HDF5 read of the same bytes, and the time ``open_cache`` takes to read the sample table;
- with ``--open N [N ...]``: the time ``open_cache`` takes on caches of N samples
  (targets: 2,000,000 in <= 1.0 s, 10,000,000 in <= 5 s).

    python benchmarks/bench_store.py                      # 10,000 shards of 1,024 rows
    python benchmarks/bench_store.py --shards 2000        # a quicker look
    python benchmarks/bench_store.py --shards 2000 --open 2000000 10000000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurecache.cache import (  # noqa: E402
    FeatureConfig,
    SampleTable,
    Store,
    open_cache,
)

LAYERS = ("early", "embedding")
TARGET_IMAGES, TARGET_RATE = 10_000_000, 3_000.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1024, help="rows per shard")
    parser.add_argument("--features", type=int, default=16, help="features per layer")
    parser.add_argument("--window", type=int, default=1000, help="commits averaged at each end")
    parser.add_argument("--folder", default=None, help="where to write (default: a temp folder)")
    parser.add_argument("--open", type=int, nargs="*", default=[], help="samples to open")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "c.h5"
        costs, total = commit_all(path, args.shards, args.rows, args.features)
        report_commits(costs, total, args.shards, args.rows, args.window)
        t = time.perf_counter()
        segments = Store(path).compact("bench")
        print(f"compact: {segments} segments in {time.perf_counter() - t:.1f} s")
        report_first_read(path, args.shards * args.rows, args.features)
        report_reads(path, args.shards * args.rows, args.features)
        for n in args.open:
            report_open(Path(folder) / f"open-{n}.h5", n)
    return 0


def _samples(n: int) -> SampleTable:
    return SampleTable(
        ids=np.array([f"{i:09d}" for i in range(n)], dtype=object),
        labels=np.arange(n) % 10,
        splits=np.where(np.arange(n) % 5 == 0, "test", "train").astype(object),
        class_names=tuple(f"c{k}" for k in range(10)),
        source="bench_store",
    )


def report_first_read(path: Path, n_rows: int, n_features: int, repeats: int = 5) -> None:
    """The first read of the layer in a new process (digests checked), against a
    contiguous read of the same bytes in another new process, interleaved ``repeats`` times."""
    plain = path.with_name("contiguous-first.h5")
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros((n_rows, n_features), np.float32))
    reader = (
        "import sys,time; from featurecache.cache import open_cache; c=open_cache(sys.argv[1]); "
        "t=time.perf_counter(); c.load_rows('bench','embedding'); print(time.perf_counter()-t)"
    )
    contiguous = (
        "import sys,time,h5py; t=time.perf_counter(); f=h5py.File(sys.argv[1],'r'); "
        "f['x'][:]; print(time.perf_counter()-t)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    times: dict[str, list[float]] = {"first": [], "contiguous": []}
    for _ in range(repeats):
        for name, code, target in (("first", reader, path), ("contiguous", contiguous, plain)):
            out = subprocess.run([sys.executable, "-c", code, str(target)], env=env,
                                 capture_output=True, text=True, check=True)  # fmt: skip
            times[name].append(float(out.stdout))
    first, base = min(times["first"]), min(times["contiguous"])
    megabytes = n_rows * n_features * 4 / 1e6
    print(f"first read in a new process ({megabytes:.0f} MB, digests checked), best of {repeats}: "
          f"{megabytes / first:.0f} MB/s, {base / first:.2f}x a contiguous h5py read in a new "
          f"process ({megabytes / base:.0f} MB/s; target >= 0.5x)")  # fmt: skip


def report_open(path: Path, n: int) -> None:
    """``open_cache`` on a cache of ``n`` samples (the sample table only), best of 3."""
    store = Store(path)
    store.create_samples(_samples(n), 1024)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        open_cache(path)
        times.append(time.perf_counter() - t)
    print(f"open_cache ({n:,} samples), best of 3: {min(times):.2f} s")


def commit_all(path: Path, n_shards: int, rows: int, n_features: int) -> tuple[np.ndarray, float]:
    n = n_shards * rows
    store = Store(path)
    samples = _samples(n)
    config = FeatureConfig(
        backbone="synthetic",
        weights_sha256="0" * 64,
        preprocessing={},
        pooling="avg",
        dtype="float32",
        compute_dtype="float32",
    )
    started = time.perf_counter()
    store.create_samples(samples, rows)
    store.register_model("bench", config)
    attrs = {
        layer: {"depth": (i + 1) / len(LAYERS), "depth_index": i} for i, layer in enumerate(LAYERS)
    }
    status = np.ones(rows, dtype=np.int8)
    reasons = [""] * rows
    rng = np.random.default_rng(0)
    costs = np.empty(n_shards)
    with store.lock_model("bench"):
        for shard in range(n_shards):
            features = {
                layer: rng.standard_normal((rows, n_features)).astype(np.float32)
                for layer in LAYERS
            }
            t = time.perf_counter()
            meta = store.write_shard(
                "bench", shard, shard * rows, status, reasons, features, attrs, config
            )
            store.publish("bench", [meta])
            store.rebuild_index_if_due()
            costs[shard] = time.perf_counter() - t
        t = time.perf_counter()
        store.rebuild_index()
        final = time.perf_counter() - t
    total = float(costs.sum() + final)
    print(f"setup + {n_shards} commits + final index: {time.perf_counter() - started:.1f} s "
          f"(final index rebuild {final:.2f} s)")  # fmt: skip
    return costs, total


def report_commits(costs: np.ndarray, total: float, n_shards: int, rows: int, window: int) -> None:
    window = min(window, n_shards // 2)
    first, last = costs[:window].mean(), costs[-window:].mean()
    images = n_shards * rows
    extraction = images / TARGET_RATE
    share = total / extraction
    scaled = share  # per image the same: bookkeeping scales with the shards, like the run
    print(f"mean commit, first {window}: {first * 1e3:.2f} ms; last {window}: {last * 1e3:.2f} ms; "
          f"ratio {last / first:.2f} (target <= 1.5)")  # fmt: skip
    print(f"slowest commit {costs.max() * 1e3:.0f} ms (an index rebuild); median "
          f"{np.median(costs) * 1e3:.2f} ms")  # fmt: skip
    print(f"bookkeeping {total:.1f} s for {images:,} images = {share * 100:.2f} % of an "
          f"extraction at {TARGET_RATE:,.0f} img/s ({extraction:,.0f} s); at "
          f"{TARGET_IMAGES:,} images the same share: {scaled * 100:.2f} % (target <= 5 %)")  # fmt: skip


def report_reads(path: Path, n_rows: int, n_features: int, repeats: int = 5) -> None:
    """One layer through the public reader against a contiguous read of the same bytes.

    Reported: opening the cache (the sample table), the first read in this process, then
    the best of ``repeats`` interleaved runs of ``load_rows`` (the
    layer's bytes and row numbers: what the contiguous read gets), ``load`` (also labels and
    ids) and the contiguous read.
    """
    t = time.perf_counter()
    reader = open_cache(path)
    opened = time.perf_counter() - t
    t = time.perf_counter()
    X, _ = reader.load_rows("bench", "embedding")
    first = time.perf_counter() - t
    assert X.shape == (n_rows, n_features)
    plain = path.with_name("contiguous.h5")
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=X)
    megabytes = X.nbytes / 1e6
    del X
    times: dict[str, list[float]] = {"contiguous": [], "load_rows": [], "load": []}
    for _ in range(repeats):
        t = time.perf_counter()
        with h5py.File(plain, "r") as f:
            f["x"][:]
        times["contiguous"].append(time.perf_counter() - t)
        t = time.perf_counter()
        reader.load_rows("bench", "embedding")
        times["load_rows"].append(time.perf_counter() - t)
        t = time.perf_counter()
        reader.load("bench", "embedding")
        times["load"].append(time.perf_counter() - t)
    base = min(times["contiguous"])
    print(f"open_cache ({n_rows:,} samples): {opened:.2f} s")
    print(f"read one layer ({megabytes:.0f} MB), best of {repeats}: contiguous h5py "
          f"{megabytes / base:.0f} MB/s; first read in this process {megabytes / first:.0f} "
          f"MB/s ({base / first:.2f}x)")  # fmt: skip
    notes = {"load_rows": "target >= 0.9x", "load": "the layer with its labels and ids"}
    for name, note in notes.items():
        best = min(times[name])
        print(f"  {name}: {megabytes / best:.0f} MB/s ({base / best:.2f}x contiguous; {note})")


if __name__ == "__main__":
    raise SystemExit(main())
