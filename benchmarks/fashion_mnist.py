"""Fashion-MNIST through the product: `featurecache extract`, `fit` and `report`, nothing else.

This script only runs ``featurecache`` commands (as subprocesses, the way a user types them),
then reads ``results.csv`` to write ``REPORT/comparison.md``: the exact commands in order with
their wall time, the best combination by CV with its test accuracy beside the published
anchors, and with ``--ablation`` the gain of each ingredient. Every choice (backbone,
resolution, layer or feature set, head and its hyper-parameters) is made by 5-fold CV on
train; test is scored once per combination and never chooses anything. TTA changes test
scoring only (CV is on the plain view), so it is decided in advance (``--tta``) and reported
as such.

The recipe, per backbone ``M`` at ``--image-size S``:

1. ``extract builtin:fashion-mnist --model M --image-size S --layers blocks.10,blocks.14
   --pool flatten [--tta flip] --name M-S-flat`` (the maps, their spatial layout kept), and
   ``extract ... --layers embedding --name M-S`` (the pooled penultimate layer);
2. ``fit CACHE --heads logreg,nystroem --pca 256 --combine M-S-flat:blocks.10+blocks.14
   M-S-flat:blocks.10+M-S:embedding --combine-pca 128`` (each part standardised and reduced
   on its own inside the folds), and with ``--tta`` the same ``fit ... --tta mean-proba``
   into the same results folder (finished combinations are reused);
3. ``report RESULTS --out REPORT``.

``--ablation`` also extracts every backbone at ``--ablation-size`` (resolution) and reports,
each against its CV spread: the best feature set against the best single layer
(combination), the best ``nystroem`` against the best ``logreg`` (kernel), the best at ``S``
against the best at the ablation size (resolution), and the chosen combination with and
without TTA (a test gain; CV is the same). ``--per-class N`` runs on N training and
``--test-per-class`` test images per class (seeded), written as a PNG folder first: a
smoke run of the whole pipeline.

    python benchmarks/fashion_mnist.py --ablation                 # the full run (hours)
    python benchmarks/fashion_mnist.py --per-class 100 --test-per-class 50 --image-size 64 \
        --ablation-size 32 --ablation --work /tmp/fm --report /tmp/fm/report   # minutes
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ANCHORS = (  # published, official split
    ("HOG + SVM", 0.926),
    ("small CNNs trained on the data", "0.919–0.932"),
    ("VGG16", 0.935),
    ("ResNet-18 with augmentation", 0.949),
    ("MobileNet", 0.950),
    ("WRN-28-10", 0.959),
)
LINEAR = ("logreg", "linsvm", "ridge")


@dataclass
class Runner:
    """Runs ``featurecache`` commands and keeps each one with its wall time."""

    log: list[tuple[str, float]] = field(default_factory=list)

    def __call__(self, *args: str) -> None:
        shown = "featurecache " + shlex.join(args)
        print(f"$ {shown}", flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "featurecache", *args], check=True)
        self.log.append((shown, time.perf_counter() - started))


def main() -> None:
    args = parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = subset_folder(work / "data", args) if args.per_class else "builtin:fashion-mnist"
    cache, results = work / "fashion-mnist.h5", work / "results"
    run = Runner()
    sizes = [args.image_size] + ([args.ablation_size] if args.ablation else [])
    for model in args.models:
        for size in sizes:
            extract(run, data, cache, model, size, args)
    sets = [s for model in args.models for size in sizes for s in feature_sets(model, size)]
    fit_args = [
        str(cache), "--out", str(results), "--heads", ",".join(args.heads), "--pca",
        str(args.pca), "--combine", *sets, "--combine-pca", str(args.combine_pca), "--cv",
        str(args.cv), "--seed", str(args.seed), "--jobs", str(args.jobs),
    ]  # fmt: skip
    run("fit", *fit_args)
    if args.tta:  # TTA changes test scoring only: applied to the combination CV chose
        tta_fit(run, fit_args, results)
        run("fit", *fit_args)  # every combination reused; run.json describes the main fit
    run("report", str(results), "--out", args.report, "--force")
    write_comparison(Path(args.report), results, run.log, args, sizes)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["efficientnet_lite0"])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--ablation", action="store_true", help="report each ingredient's gain")
    parser.add_argument("--ablation-size", type=int, default=64)
    parser.add_argument("--flat-layers", default="blocks.10,blocks.14")
    parser.add_argument("--heads", type=lambda s: s.split(","), default=["logreg", "nystroem"])
    parser.add_argument("--pca", type=int, default=256)
    parser.add_argument("--combine-pca", type=int, default=128)
    parser.add_argument("--tta", default="flip", help="test-time views ('' for none)")
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=0, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=0, help="test images per class")
    parser.add_argument("--work", default="data/fashion-mnist-run", help="cache, results, subset")
    parser.add_argument("--report", default="reports/fashion-mnist")
    return parser.parse_args()


def names(model: str, size: int) -> tuple[str, str]:
    """The model names of the flattened maps and of the pooled embedding in the cache."""
    return f"{model}-{size}-flat", f"{model}-{size}"


def tta_fit(run: Runner, fit_args: list[str], results: Path) -> None:
    """``fit --tta mean-proba`` of the best combination by CV (a single layer; feature sets
    are scored on plain rows), into the same results folder."""
    import pandas as pd

    import pipelines

    chosen = pipelines.best(pd.read_csv(results / "results.csv"))
    if (chosen["model"], chosen["layer"]) in set_names(results):
        print(f"TTA skipped: the best combination is the feature set {chosen['layer']}")
        return
    base = fit_args[: fit_args.index("--combine")] + fit_args[fit_args.index("--cv") :]
    heads = base.index("--heads") + 1
    base[heads] = chosen["head"]
    run("fit", *base, "--models", chosen["model"], "--layers", chosen["layer"], "--tta",
        "mean-proba")  # fmt: skip


def set_names(results: Path) -> set[tuple[str, str]]:
    """The (model, layer) of every feature set in the results folder (from its records)."""
    from pipelines.results._results import ResultsFolder

    return {(r["model"], r["layer"]) for r in ResultsFolder(results).records()
            if "feature_set" in r}  # fmt: skip


def extract(run: Runner, data: str, cache: Path, model: str, size: int, args) -> None:
    flat, pooled = names(model, size)
    common = [
        data, "--cache", str(cache), "--model", model, "--image-size", str(size),
        "--batch-size", str(args.batch_size), "--no-progress", "--offline",
    ]  # fmt: skip
    tta = ["--tta", args.tta] if args.tta else []
    run("extract", *common, "--layers", args.flat_layers, "--pool", "flatten", *tta,
        "--name", flat)  # fmt: skip
    run("extract", *common, "--layers", "embedding", *tta, "--name", pooled)


def feature_sets(model: str, size: int) -> list[str]:
    """The two sets of a backbone at one size: two depths of maps, and maps + embedding."""
    flat, pooled = names(model, size)
    return [f"{flat}:blocks.10+blocks.14", f"{flat}:blocks.10+{pooled}:embedding"]


def subset_folder(folder: Path, args) -> str:
    """``--per-class`` training and ``--test-per-class`` test images per class (seeded) as a
    PNG folder ``train/<class>/``, ``test/<class>/``; returns its path."""
    from PIL import Image

    from featurecache.data._datasets import load_dataset

    if folder.is_dir():
        return str(folder)
    data = load_dataset("builtin:fashion-mnist")
    rng = np.random.default_rng(args.seed)
    partial = folder.with_name(folder.name + ".partial")
    for split, n in (("train", args.per_class), ("test", args.test_per_class or args.per_class)):
        for k, name in enumerate(data.class_names):
            rows = np.flatnonzero((data.splits == split) & (data.labels == k))
            target = partial / split / name.replace("/", "-")
            target.mkdir(parents=True, exist_ok=True)
            for i in rng.choice(rows, n, replace=False):
                Image.fromarray(data.arrays[i]).save(target / f"{data.ids[i]}.png")
    partial.rename(folder)
    return str(folder)


# -- comparison.md --------------------------------------------------------------------


def write_comparison(report: Path, results: Path, log, args, sizes: list[int]) -> None:
    import pandas as pd

    import pipelines

    table = pd.read_csv(results / "results.csv")
    sets = set_names(results)
    table["is_set"] = [(m, lay) in sets for m, lay in zip(table["model"], table["layer"],
                                                          strict=True)]  # fmt: skip
    plain = table[table["tta"] == "none"]
    chosen = pipelines.best(plain)
    lines = [
        "# Fashion-MNIST through the product",
        "",
        _data_line(plain, args),
        "",
        "Every choice (backbone, resolution, layer or feature set, head, hyper-parameters) is "
        f"made by {args.cv}-fold stratified CV on train; test is scored once per combination "
        "and chooses nothing. TTA (scoring test rows on the mean over their test-time views) "
        "is decided in advance: CV is on the plain view, so it cannot choose it.",
        "",
        "## Result",
        "",
        "| method | test accuracy |",
        "| --- | --- |",
        *[
            f"| {name} (published) | {acc if isinstance(acc, str) else f'{acc:.3f}'} |"
            for name, acc in ANCHORS
        ],  # fmt: skip
        f"| **{_label(chosen)}**, best by CV ({chosen['cv_mean']:.4f} ± "
        f"{chosen['cv_std']:.4f}) | **{chosen['test_accuracy']:.4f}** |",
    ]
    with_tta = _tta_sibling(table, chosen)
    if with_tta is not None:
        lines.append(f"| **the same, with TTA ({args.tta}, mean-proba)** | "
                     f"**{with_tta['test_accuracy']:.4f}** |")  # fmt: skip
    lines += ["", "## Commands, in order (wall time on this machine)", ""]
    lines += [f"    {command}    # {seconds:.0f} s" for command, seconds in log]
    lines += ["", f"Total: {sum(s for _, s in log) / 60:.1f} min.", ""]
    if args.ablation:
        lines += _ablation(table, plain, chosen, sizes)
    report.mkdir(parents=True, exist_ok=True)
    (report / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _data_line(plain, args) -> str:
    n_train, n_test = int(plain["n_train"].max()), int(plain["n_test"].max())
    if args.per_class:
        return (f"Data: a seeded subset, {n_train:,} train and {n_test:,} test images "
                f"({args.per_class} and {args.test_per_class or args.per_class} per class): a "
                "smoke run, not comparable with the anchors.")  # fmt: skip
    return f"Data: the official split, {n_train:,} train and {n_test:,} test images."


def _label(row) -> str:
    return f"{row['model']} / {row['layer']} / {row['head']} {row['params']}"


def _tta_sibling(table, row):
    same = table[(table["model"] == row["model"]) & (table["layer"] == row["layer"])
                 & (table["head"] == row["head"]) & (table["tta"] != "none")]  # fmt: skip
    return same.iloc[0] if len(same) else None


def _ablation(table, plain, chosen, sizes: list[int]) -> list[str]:
    """Each ingredient: the best with it against the best without, by CV."""
    import pipelines

    def best(rows):
        return pipelines.best(rows) if len(rows) else None

    size_of = {m: int(m.split("-")[-2] if m.endswith("-flat") else m.split("-")[-1])
               for m in plain["model"] if "+" not in m}  # fmt: skip
    at = [plain["model"].map(lambda m, s=s: all(
        size_of.get(p) == s for p in m.split("+"))) for s in sizes]  # fmt: skip
    rows = [
        ("combination (best feature set vs best single layer)",
         best(plain[plain["is_set"]]), best(plain[~plain["is_set"]])),
        ("kernel (best nystroem vs best linear head)",
         best(plain[plain["head"] == "nystroem"]), best(plain[plain["head"].isin(LINEAR)])),
    ]  # fmt: skip
    if len(sizes) > 1:
        rows.append((f"resolution ({sizes[0]} px vs {sizes[1]} px)",
                     best(plain[at[0]]), best(plain[at[1]])))  # fmt: skip
    lines = [
        "## Ablation: the gain of each ingredient",
        "",
        "Each row sets the best combination (by CV) with the ingredient against the best "
        "without it. The gain is judged against the CV spread (the larger CV std of the two).",
        "",
        "| ingredient | with (CV ± std, test) | without (CV ± std, test) | CV gain | vs spread "
        "| test gain |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, with_it, without in rows:
        if with_it is None or without is None:
            lines.append(f"| {name} | not fitted | | | | |")
            continue
        gain = with_it["cv_mean"] - without["cv_mean"]
        spread = max(with_it["cv_std"], without["cv_std"])
        lines.append(
            f"| {name} | {_cell(with_it)} | {_cell(without)} | {gain:+.4f} | "
            f"{'beyond' if gain > spread else 'within'} ± {spread:.4f} | "
            f"{with_it['test_accuracy'] - without['test_accuracy']:+.4f} |"
        )
    tta = _tta_sibling(table, chosen)
    if tta is not None:
        lines.append(
            f"| TTA on the chosen combination | test {tta['test_accuracy']:.4f} | test "
            f"{chosen['test_accuracy']:.4f} | (same CV) | | "
            f"{tta['test_accuracy'] - chosen['test_accuracy']:+.4f} |"
        )
    return lines + [""]


def _cell(row) -> str:
    return (f"{row['model']} / {row['layer']} / {row['head']}: {row['cv_mean']:.4f} ± "
            f"{row['cv_std']:.4f}, {row['test_accuracy']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
