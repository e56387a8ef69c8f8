"""Scanning a local folder: ``load_dataset`` on class folders of N files, two source trees.

Each round times one scan per tree, in fresh processes, alternating which goes first, so both
meet the same machine load; the ratio of the medians compares them.

    python benchmarks/bench_folder_scan.py --files 20000 --rounds 7 --trees OLD_TREE .

A tree is a folder holding the ``featurecache`` package (a checkout, or ``git archive REV
featurecache | tar -x -C DIR``). The files are empty (the scan reads names only).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_TIMED = """
import sys, time
import featurecache
from featurecache import load_dataset
start = time.perf_counter()
dataset = load_dataset(sys.argv[1])
print(time.perf_counter() - start, len(dataset), featurecache.__file__)
"""


def make_folder(root: Path, n_files: int, n_classes: int = 20) -> Path:
    """``train/`` and ``test/`` split folders of ``n_classes`` class folders, ``n_files`` in all
    (with a hidden file and a text file per class folder among them)."""
    per_class = n_files // (2 * n_classes)
    for split in ("train", "test"):
        for c in range(n_classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            for i in range(per_class - 2):
                (folder / f"{i:05d}.jpg").touch()
            (folder / ".DS_Store").touch()
            (folder / "notes.txt").touch()
    return root


def scan_seconds(tree: Path, data: Path) -> tuple[float, int]:
    """One scan's seconds and samples, importing ``tree``'s package (checked)."""
    # Run outside any checkout: ``python -c`` puts the working folder first on the path.
    out = subprocess.run(
        [sys.executable, "-c", _TIMED, str(data)],
        env={"PYTHONPATH": str(tree.resolve())},
        cwd=data.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not out[2].startswith(str(tree.resolve())):
        raise RuntimeError(f"{tree} was not the tree imported: {out[2]}")
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trees", nargs=2, type=Path, required=True, metavar=("A", "B"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_folder(Path(tmp) / "data", args.files)
        times: dict[Path, list[float]] = {tree: [] for tree in args.trees}
        counts = set()
        for k in range(args.rounds):
            for tree in args.trees if k % 2 == 0 else args.trees[::-1]:
                seconds, n = scan_seconds(tree, data)
                times[tree].append(seconds)
                counts.add(n)
    a, b = (statistics.median(times[t]) for t in args.trees)
    print(f"samples: {sorted(counts)}")
    for tree in args.trees:
        print(f"{tree}: median {statistics.median(times[tree]):.3f} s, runs {times[tree]}")
    print(f"B / A: {b / a:.2f}")


if __name__ == "__main__":
    main()
