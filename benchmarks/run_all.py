"""`make bench`: run the extraction, JPEG and head-search benchmarks and print one table.

Each benchmark runs in its own process (so neither inherits the other's threads or
caches) and writes its figures as JSON; this script prints them side by side with
the machine they came from. Pass ``--quick`` for a smaller run (minutes, not tens of minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, args: list[str], out: Path) -> dict:
    command = [sys.executable, str(HERE / script), *args, "--json", str(out)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                "",
            )
    except OSError:
        pass
    return f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    args = parser.parse_args()
    extract_args = ["--n-images", "128" if args.quick else "512", "--batch-size", "32"]
    jpeg_args = ["--n-images", "128" if args.quick else "1024", "--batch-size", "32"]
    heads_args = ["--n-samples", "12000" if args.quick else "60000"]
    with tempfile.TemporaryDirectory() as folder:
        extraction = run("bench_extract.py", extract_args, Path(folder) / "extract.json")
        jpeg = run("bench_jpeg.py", jpeg_args, Path(folder) / "jpeg.json")
        heads = run("bench_heads.py", heads_args, Path(folder) / "heads.json")
    n = extraction["args"]["n_images"]
    rows = [
        (name, f"{seconds:.2f} s", f"{n / seconds:.1f} img/s")
        for name, seconds in extraction["seconds"].items()
    ]
    rows += [
        (f"jpeg: {name[4:]}", f"{jpeg['n_images'] / rate:.2f} s", f"{rate:.1f} img/s")
        for name, rate in jpeg["rates"].items()
    ]
    rows += [
        (f"heads: {name}", f"{seconds:.1f} s", "") for name, seconds in heads["seconds"].items()
    ]
    print(f"\nfeaturecache benchmarks on {machine()}")
    print(f"extraction: {extraction['args']['model']}, {n} images at {extraction['args']['image_size']}px, "
          f"batch {extraction['args']['batch_size']}, {extraction['args']['dtype']}; heads: {heads['description']}")  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':{width}s}  {'time':>10s}  {'throughput':>12s}")
    for name, seconds, rate in rows:
        print(f"{name:{width}s}  {seconds:>10s}  {rate:>12s}")
    print(f"\nextraction (a, 4 layers) / bare loop: {extraction['ratio_a_b']:.2f} (target >= 0.90); "
          f"4 layers / 1 layer: {extraction['ratio_4_1']:.2f} (target <= 1.10)")  # fmt: skip
    for name, ratio in jpeg["ratios"].items():
        print(f"jpeg: {name[4:]} / limit ({jpeg['args']['model']}, {jpeg['n_images']} photos): "
              f"{ratio:.2f} (target >= 0.91)")  # fmt: skip
    print(f"head search speed-up over GridSearchCV: {heads['speedup']:.2f}x (target >= 2); "
          f"CV gap of the chosen C: {heads['cv_gap']:.4f} (target <= 0.002)")  # fmt: skip


if __name__ == "__main__":
    main()
