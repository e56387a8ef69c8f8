"""The fast probes against logistic regression on Fashion-MNIST with EfficientNet-Lite0/1/2.

Three figures, on a stratified subset of ``builtin:fashion-mnist`` (the first
``--train-rows / 10`` train images and the first ``--test-rows / 10`` test images of every
class, in file order; the full 70,000 images x 3 models do not fit a 2-core CPU budget):

1. ridge, knn and logreg on ``--probe-model`` (default Lite0) at ``embedding`` and at
   ``--middle-layer``: CV and test accuracy, fit time (``fit_seconds`` of ``results.csv``:
   the CV search over the default grid plus the refit).
2. Whether the fast probes rank layers as logistic regression does: Spearman rank
   correlation of CV and of test accuracy between each fast probe and logreg over every
   (model, layer) of the default layers of all ``--models`` pooled, and per model.
3. The few-shot learning curve of the best combination (``pipelines.best``, by CV) with
   ``--shots`` and ``--draws``, and the curves of the other heads at the same layer.

Extraction: ``featurecache.extract`` with each model's default layers (plus ``--middle-layer``
when it is not one of them) into one cache; fitting: ``pipelines.fit`` with 5-fold
stratified CV on train, refit, scored once on test; nothing is chosen on test.

    python benchmarks/probes_fashion.py --train-rows 15000 --test-rows 5000 \
        --root /tmp/probes16 --jobs 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's featurecache

PROBES = ("ridge", "knn")
REFERENCE = "logreg"


def stratified_first(data, rows: dict[str, int]):
    """The first ``rows[split] / n_classes`` samples of every class of each split, in file order."""
    per_class = {split: count // len(data.class_names) for split, count in rows.items()}
    keep = np.concatenate(
        [
            np.flatnonzero((data.splits == split) & (data.labels == label))[:per_class[split]]
            for split in per_class
            for label in range(len(data.class_names))
        ]
    )  # fmt: skip
    keep.sort()
    wanted = ", ".join(f"first {n} per class of {split}" for split, n in per_class.items())
    return data.subset(keep, wanted)


def extract_all(args, cache: Path) -> None:
    """Every model's default layers (and the middle layer for the probe model) into ``cache``."""
    from featurecache import RunOptions, extract, load_dataset

    data = stratified_first(
        load_dataset("builtin:fashion-mnist"), {"train": args.train_rows, "test": args.test_rows}
    )
    print(f"data: {data.source}, {len(data)} images")
    cache.parent.mkdir(parents=True, exist_ok=True)
    options = RunOptions(batch_size=args.batch_size, workers=0, device="cpu")
    for model in args.models:
        extra = [args.middle_layer] if model == args.probe_model else []
        started = time.perf_counter()
        result = extract(
            data, cache, model=model, image_size=args.image_size, dtype=args.dtype,
            layers=_with_defaults(model, extra), options=options,
        )  # fmt: skip
        speed = "hit" if result.hit else f"{result.images_per_second:.1f} img/s"
        print(
            f"{model}: {speed} ({time.perf_counter() - started:.0f} s), "
            f"layers {', '.join(result.layers)}",
            flush=True,
        )


def _with_defaults(model: str, extra: list[str]) -> list[str]:
    from featurecache import list_layers

    defaults = [info.name for info in list_layers(model) if info.default]
    return defaults + [name for name in extra if name not in defaults]


def probe_table(table, model: str, layers: list[str]) -> list[str]:
    """Figure 1: each head's CV, test accuracy and fit time at ``layers`` of ``model``."""
    lines = [
        f"## Figure 1: {model}, probes against logreg",
        "",
        "| layer | features | head | chosen | CV (5-fold) | test | fit s (CV + refit) "
        "| predict s / 1,000 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = table[(table["model"] == model) & table["layer"].isin(layers)]
    for layer in layers:
        for head in (*PROBES, REFERENCE):
            row = rows[(rows["layer"] == layer) & (rows["head"] == head)]
            if row.empty:
                continue
            r = row.iloc[0]
            lines.append(
                f"| {layer} | {int(r['n_features'])} | {head} | {_params(r['params'])} | "
                f"{r['cv_mean']:.4f} ± {r['cv_std']:.4f} | {r['test_accuracy']:.4f} | "
                f"{r['fit_seconds']:.1f} | {r['predict_seconds_per_1000']:.3f} |"
            )
    return lines


def _params(params: str) -> str:
    import json

    chosen = {k: v for k, v in json.loads(params).items() if k != "pca"}
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items()
    )


def rank_table(table) -> list[str]:
    """Figure 2: Spearman correlation of each fast probe's layer scores with logreg's."""
    from scipy.stats import spearmanr

    wide = table.pivot_table(
        index=["model", "layer"], columns="head", values=["cv_mean", "test_accuracy"]
    )
    groups = [("all models pooled", wide)]
    groups += [(model, part) for model, part in wide.groupby(level="model")]
    lines = [
        "## Figure 2: do the fast probes rank (model, layer) as logreg does? Spearman rho",
        "",
        "| pairs | n | "
        + " | ".join(f"{p} vs {REFERENCE}, {s}" for p in PROBES for s in ("CV", "test"))
        + " |",
        "| --- | --- |" + " --- |" * (2 * len(PROBES)),
    ]
    for name, part in groups:
        cells = []
        for probe in PROBES:
            for score in ("cv_mean", "test_accuracy"):
                rho = spearmanr(part[(score, probe)], part[(score, REFERENCE)]).statistic
                cells.append(f"{rho:.2f}")
        lines.append(f"| {name} | {len(part)} | " + " | ".join(cells) + " |")
    lines += ["", "Best layer by CV, per model:", ""]
    lines += ["| model | " + " | ".join((*PROBES, REFERENCE)) + " |", "| --- |" + " --- |" * 3]
    for model, part in wide.groupby(level="model"):
        cells = [part[("cv_mean", h)].idxmax()[1] for h in (*PROBES, REFERENCE)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Per-layer scores (CV / test):", ""]
    lines += [
        "| model | layer | depth | " + " | ".join((*PROBES, REFERENCE)) + " |",
        "| --- | --- | --- |" + " --- |" * (len(PROBES) + 1),
    ]
    depth = table.groupby(["model", "layer"])["depth"].first()
    order = sorted(wide.index, key=lambda key: (key[0], depth[key]))
    for (model, layer), row in wide.loc[order].iterrows():
        cells = [
            f"{row[('cv_mean', h)]:.4f} / {row[('test_accuracy', h)]:.4f}"
            for h in (*PROBES, REFERENCE)
        ]
        lines.append(
            f"| {model} | {layer} | {depth[(model, layer)]:.2f} | " + " | ".join(cells) + " |"
        )
    return lines


def curve_lines(curves, full, best) -> list[str]:
    """Figure 3: mean test accuracy ± 95 % interval over the draws, per head and shots.

    ``curves`` is ``curves.csv``; ``full`` (``results.csv`` of the same folder) gives the
    ``all`` point, the fit on every training row.
    """
    from scipy import stats

    lines = [
        f"## Figure 3: learning curve at {best['model']} / {best['layer']} "
        f"(best by CV: {best['head']})",
        "",
        "| head | shots per class | draws | test accuracy (mean ± 95 % CI) | selection |",
        "| --- | --- | --- | --- | --- |",
    ]
    for head in (*PROBES, REFERENCE):
        mark = " (best)" if head == best["head"] else ""
        part = curves[curves["head"] == head]
        for shots, draws in part.groupby("shots"):
            values = draws["test_accuracy"].to_numpy(dtype=float)
            half = 0.0
            if len(values) > 1:
                t = stats.t.ppf(0.975, len(values) - 1)
                half = t * values.std(ddof=1) / np.sqrt(len(values))
            lines.append(
                f"| {head}{mark} | {shots} | {len(values)} | {values.mean():.4f} ± {half:.4f} | "
                f"{draws['selection'].iloc[0]} |"
            )
        for _, row in full[full["head"] == head].iterrows():
            lines.append(
                f"| {head}{mark} | all ({int(row['n_train'])} rows) | 1 | "
                f"{row['test_accuracy']:.4f} | {row['selection']} |"
            )
    return lines


def time_probes(args, cache: Path, out: Path, heads: list[str]) -> int:
    """Figure 1 alone, fitted from scratch into ``out`` (emptied first)."""
    import shutil

    import pipelines

    shutil.rmtree(out, ignore_errors=True)
    layers = ["embedding", args.middle_layer]
    table = pipelines.fit(
        cache, out, models=[args.probe_model], layers=layers, heads=heads, cv=args.cv,
        seed=args.seed, n_jobs=args.jobs,
    )  # fmt: skip
    print(f"load at end {os.getloadavg()[0]:.2f}")
    print("\n".join(probe_table(table, args.probe_model, layers)))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
    )
    parser.add_argument("--probe-model", default="efficientnet_lite0")
    parser.add_argument("--middle-layer", default="blocks.10")
    parser.add_argument("--train-rows", type=int, default=15000, help="train images (stratified)")
    parser.add_argument("--test-rows", type=int, default=5000, help="test images (stratified)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shots", default="1,5,10,25,100,all")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="joblib workers of the fits")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="/tmp/probes16", help="cache and results go here")
    parser.add_argument(
        "--stage",
        choices=["all", "extract", "fit", "time"],
        default="all",
        help="time: fit figure 1's combinations again into a fresh folder (timing on a quiet "
        "machine), after extract",
    )
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):  # BLAS and OpenMP of this process
        return run(args)


def run(args) -> int:
    root = Path(args.root)
    stem = f"fashion-{args.image_size}-train{args.train_rows}-test{args.test_rows}"
    cache = root / f"{stem}.h5"
    print(f"load at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if args.stage in ("all", "extract"):
        import torch

        torch.set_num_threads(args.threads)
        extract_all(args, cache)
    if args.stage == "extract":
        return 0

    import pipelines

    heads = [*PROBES, REFERENCE]
    if args.stage == "time":
        return time_probes(args, cache, root / f"{stem}-timing", heads)
    started = time.perf_counter()
    table = pipelines.fit(
        cache, root / f"{stem}-results", models=args.models, heads=heads, cv=args.cv,
        seed=args.seed, n_jobs=args.jobs,
    )  # fmt: skip
    print(f"fit {len(table)} combinations in {time.perf_counter() - started:.0f} s", flush=True)
    best = pipelines.best(table)
    started = time.perf_counter()
    pipelines.fit(
        cache, root / f"{stem}-curve", models=[best["model"]], layers=[best["layer"]],
        heads=heads, cv=args.cv, seed=args.seed, n_jobs=args.jobs, shots=args.shots,
        draws=args.draws,
    )  # fmt: skip
    print(f"learning curves in {time.perf_counter() - started:.0f} s", flush=True)

    import pandas as pd

    curves = pd.read_csv(root / f"{stem}-curve" / "curves.csv")
    full = pd.read_csv(root / f"{stem}-curve" / "results.csv")
    n_train, n_test = int(table["n_train"].iloc[0]), int(table["n_test"].iloc[0])
    lines = [
        f"{n_train} train / {n_test} test images, {args.image_size} px, {args.cv}-fold CV, "
        f"{args.jobs} job(s), {args.threads} thread(s); load at end {os.getloadavg()[0]:.2f}",
        "",
        *probe_table(table, args.probe_model, ["embedding", args.middle_layer]),
        "",
        *rank_table(table),
        "",
        *curve_lines(curves, full, best),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
