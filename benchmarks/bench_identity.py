"""The cost of content identity: hashing on extraction, cache-hit re-runs, opening the table.

Three figures, each measured within one run (the machine may be loaded: compare the ratios):

(a) ``jpeg``: on the JPEG folder of ``bench_jpeg.py`` (``jpeg_folder.py``), the time to stat
    and hash every file (:meth:`SampleTable.from_dataset`, what a new cache pays) against a
    whole ``extract`` of the same folder; interleaved, best of ``--repeats``. The target is
    at most 3 % of extraction time.
(b) ``rerun``: a cache-hit re-run over ``--n-files`` unchanged tiny files (64 bytes each, in
    two class folders): the bytes hashed (counted through the hashing function) and seconds
    of comparing the dataset with the stored table (stat every file, hash none), against
    the same comparison with ``verify`` (hash every file). Files are written, then left
    more than the racy window (2 s) before the table is made, as files of a real dataset are.
(c) ``open``: ``open_cache`` of a cache of ``--open-rows`` samples (format 2: fixed-width
    ids, int codes), against reading the same table in the format-1 layout (variable-length
    strings), in the same process.

    python benchmarks/bench_identity.py jpeg --n-images 96 --image-size 224
    python benchmarks/bench_identity.py rerun --n-files 100000
    python benchmarks/bench_identity.py open --open-rows 2000000 10000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from featurecache.cache import (  # noqa: E402
    SampleTable,
    Store,
    _legacy,  # noqa: E402
    _samples,  # noqa: E402
    open_cache,
)
from featurecache.cache import _format as fmt  # noqa: E402


def bench_jpeg(args) -> None:
    from bench_jpeg import time_extract
    from jpeg_folder import make_jpeg_folder

    from featurecache import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_jpeg_folder(Path(args.folder or tmp) / "jpeg", args.n_images)
        dataset = load_dataset(folder, split="none")
        size = sum(os.path.getsize(p) for p in dataset.paths)
        hashing, extracting = [], []
        args.weights, args.dtype, args.batch_size, args.device = "none", "float32", 32, "cpu"
        for _ in range(args.repeats):
            started = time.perf_counter()
            SampleTable.from_dataset(dataset)
            hashing.append(time.perf_counter() - started)
            extracting.append(time_extract(folder, args, "exact", 0))
    h, e = min(hashing), min(extracting)
    print(
        f"jpeg folder: {len(dataset)} files, {size / 1e6:.1f} MB; stat + hash every file "
        f"{h * 1e3:.1f} ms; extract ({args.model}, {args.image_size} px, CPU) {e:.2f} s; "
        f"identity = {100 * h / e:.2f} % of extraction (best of {args.repeats})"
    )


def _tiny_folder(root: Path, n_files: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n_files):
        folder = root / ("a", "b")[i % 2] / f"{(i // 2) // 1000:03d}"
        if i % 2000 < 2:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:07d}.png").write_bytes(rng.bytes(64))
    return root


def bench_rerun(args) -> None:
    from featurecache import load_dataset

    hashed = {"files": 0, "bytes": 0}
    original = _samples.file_digest

    def counting(path):
        hashed["files"] += 1
        hashed["bytes"] += os.path.getsize(path)
        return original(path)

    _samples.file_digest = counting
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        data = _tiny_folder(Path(tmp) / "data", args.n_files)
        written = time.perf_counter() - started
        time.sleep(2.5)  # older than the racy window, as a real dataset's files are
        started = time.perf_counter()
        dataset = load_dataset(data, split="none")
        scan = time.perf_counter() - started
        store = Store(Path(tmp) / "c.h5")
        started = time.perf_counter()
        store.create_samples(dataset, 1024)
        create = time.perf_counter() - started
        first = dict(hashed)
        figures = []
        for verify in (False, True, False):
            hashed.update(files=0, bytes=0)
            started = time.perf_counter()
            changes = store.sync_samples(dataset, verify=verify)
            figures.append((verify, time.perf_counter() - started, dict(hashed), changes))
    total = first["bytes"]
    print(
        f"rerun: {args.n_files:,} files of 64 bytes ({total / 1e6:.1f} MB; written in "
        f"{written:.1f} s, folder scan {scan:.1f} s); new table (hash all) {create:.2f} s"
    )
    for verify, seconds, count, changes in figures:
        print(
            f"  re-run{' --verify' if verify else ''}: {seconds:.2f} s, hashed {count['files']:,} "
            f"files ({count['bytes']:,} bytes of {total:,}); {changes.describe()}"
        )


def _ids(n: int) -> np.ndarray:
    """``train/class_7/img_0000123.jpg``: ids of 30 characters."""
    rows = np.arange(n)
    ids = np.char.add(np.char.add("train/class_", (rows % 1000).astype("U3")), "/img_")
    ids = np.char.add(np.char.add(ids, np.char.zfill(rows.astype("U7"), 7)), ".jpg")
    return ids.astype(f"U{int(np.char.str_len(ids).max())}")


def bench_open(args) -> None:
    for n in args.open_rows:
        with tempfile.TemporaryDirectory() as tmp:
            ids = _ids(n)
            labels = (np.arange(n) % 1000).astype(np.int64)
            splits = np.where(np.arange(n) % 5 == 0, "test", "train")
            table = SampleTable(
                ids, labels, splits, tuple(f"class_{k}" for k in range(1000)), source="bench",
                digests=np.zeros((n, 16), np.uint8), shard_size=4096,
            )  # fmt: skip
            path = Path(tmp) / "c.h5"
            Store(path).create_samples(table, 4096)
            v1 = Path(tmp) / "v1.h5"
            with h5py.File(v1, "w") as f:
                strings = h5py.string_dtype()
                f.create_dataset(fmt.sample_path("ids"), data=ids.astype(object), dtype=strings)
                f.create_dataset(fmt.sample_path("labels"), data=labels)
                f.create_dataset(
                    fmt.sample_path("splits"), data=splits.astype(object), dtype=strings
                )
                f["samples"].attrs["class_names"] = np.array(table.class_names, dtype=object)
            del ids, labels, splits, table
            times, v1_times = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                reader = open_cache(path)
                times.append(time.perf_counter() - started)
                assert reader.n_samples == n
                del reader
                started = time.perf_counter()
                with h5py.File(v1, "r") as f:
                    _legacy.read_table(f, identity=False)
                v1_times.append(time.perf_counter() - started)
        print(
            f"open: {n:,} samples: open_cache {min(times):.2f} s (format 2); the same table "
            f"in the format-1 layout read in {min(v1_times):.2f} s (best of {args.repeats})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="+", choices=("jpeg", "rerun", "open"))
    parser.add_argument("--n-images", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--folder", default=None, help="keep the JPEG folder here (reused)")
    parser.add_argument("--n-files", type=int, default=100_000)
    parser.add_argument("--open-rows", type=int, nargs="+", default=[2_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for what in args.what:
        {"jpeg": bench_jpeg, "rerun": bench_rerun, "open": bench_open}[what](args)


if __name__ == "__main__":
    main()
