"""Fashion-MNIST with frozen EfficientNet-Lite features, against the published raw-pixel baselines.

Official split: 60,000 train / 10,000 test (``builtin:fashion-mnist``). For each backbone, the
default layers are extracted once into one cache; then every (model, layer) gets the heads of
``pipelines.fit`` with its protocol: hyper-parameters by stratified k-fold CV on train, refit on
train, scored once on test; the best combination is picked by CV, never by test.

The RBF SVM costs O(n²) per fit, so its grid is not cross-validated on all 60,000 rows: with
``--svm-rows N`` the script chooses, per model, the layer (among layers of at most
``--svm-max-features`` features) and C and gamma by 5-fold stratified CV on a stratified
subsample of N train rows, then refits the chosen head on the full train split and scores it
once on the full test split. Test never selects anything. The results go to ``svm.csv`` and ``comparison.md``.

    python benchmarks/fashion_mnist.py --models efficientnet_lite0 --image-size 96 \
        --heads logreg,linsvm --svm-rows 10000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PUBLISHED = [  # Fashion-MNIST benchmark (zalandoresearch/fashion-mnist README), raw pixels
    ("LogisticRegression (scikit-learn, raw pixels)", 0.842),
    ("SVC (scikit-learn, raw pixels)", 0.897),
    ("XGBoost (raw pixels)", 0.898),
    ("HOG + SVM", 0.926),
]


def extract_all(args) -> Path:
    from featurecache import extract

    cache = Path(args.cache or f"data/cache/fashion-mnist-{args.image_size}.h5")
    cache.parent.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        started = time.perf_counter()
        result = extract(
            "builtin:fashion-mnist", cache, model=model, image_size=args.image_size,
            batch_size=args.batch_size, dtype=args.dtype, progress=True,
        )  # fmt: skip
        print(f"{model}: {'hit' if result.hit else f'{result.images_per_second:.1f} img/s'} "
              f"({time.perf_counter() - started:.0f}s) layers {', '.join(result.layers)}")  # fmt: skip
    return cache


def fit_svm_subsample(
    cache_path: Path, results: Path, table, rows: int, seed: int, jobs: int, max_features: int
) -> list[dict]:
    """The svm head per model: layer and (C, gamma) chosen by CV on a train subsample, refitted on all of train.

    Only layers of at most ``max_features`` features are candidates (an RBF SVM on 60,000 rows of
    a 1,280-wide layer takes about an hour on 2 cores); the rule is fixed before any fit.
    """
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    import pipelines
    from pipelines._heads import build_pipeline

    cache = pipelines.open_cache(cache_path)
    head = pipelines.get_head("svm")
    records = []
    for model in sorted(set(table["model"])):
        started = time.perf_counter()
        found = {}
        for entry in cache.entries:
            if entry.model != model or entry.n_features > max_features:
                continue
            X, y, _ = cache.load(model, entry.layer, split="train")
            X_sub, _, y_sub, _ = train_test_split(
                X, y, train_size=rows, stratify=y, random_state=seed
            )
            found[entry.layer] = pipelines.search(head, X_sub, y_sub, cv=5, seed=seed, n_jobs=jobs)
            print(
                f"svm CV on {model}/{entry.layer} ({rows} rows): {found[entry.layer].params} {found[entry.layer].cv_mean:.4f}"
            )
        layer = max(found, key=lambda name: found[name].cv_mean)
        X, y, _ = cache.load(model, layer, split="train")
        X_test, y_test, _ = cache.load(model, layer, split="test")
        estimator = build_pipeline(head, found[layer].params, X, y, seed=seed)
        accuracy = accuracy_score(y_test, estimator.predict(X_test))
        records.append({
            "model": model, "layer": layer, "head": "svm", "selection_rows": rows, "train_rows": len(y),
            "params": json.dumps(found[layer].params, default=str), "cv_mean": found[layer].cv_mean,
            "test_accuracy": accuracy, "fit_seconds": time.perf_counter() - started,
        })  # fmt: skip
        print(
            f"svm on {model}/{layer} (chosen on {rows} rows, refit on {len(y)}): test {accuracy:.4f}"
        )
    import pandas as pd

    pd.DataFrame(records).to_csv(results / "svm.csv", index=False)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
    )
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--heads", type=lambda s: s.split(","), default=["logreg", "linsvm"])
    parser.add_argument(
        "--svm-rows", type=int, default=10000, help="train rows for the svm head (0: skip)"
    )
    parser.add_argument(
        "--svm-max-features", type=int, default=512, help="svm only on layers this narrow"
    )
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--jobs", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--results", default=None)
    parser.add_argument("--report", default="reports/fashion-mnist")
    parser.add_argument("--stage", choices=["all", "extract", "fit"], default="all")
    args = parser.parse_args()

    import pipelines

    cache = (
        extract_all(args)
        if args.stage in ("all", "extract")
        else Path(args.cache or f"data/cache/fashion-mnist-{args.image_size}.h5")
    )
    if args.stage == "extract":
        return
    results = Path(args.results or f"data/cache/fashion-mnist-{args.image_size}-results")
    started = time.perf_counter()
    table = pipelines.fit(
        cache,
        results,
        models=args.models,
        heads=args.heads,
        cv=args.cv,
        seed=args.seed,
        n_jobs=args.jobs,
    )
    print(f"fit {len(table)} combinations in {time.perf_counter() - started:.0f}s")
    svm = (
        fit_svm_subsample(
            cache, results, table, args.svm_rows, args.seed, args.jobs, args.svm_max_features
        )
        if args.svm_rows
        else []
    )
    report = pipelines.report(results, args.report)
    write_comparison(Path(report), table, svm, args)
    print(f"report: {report / 'report.html'}")


def write_comparison(report: Path, table, svm: list[dict], args) -> None:
    """comparison.md: our best heads beside the published raw-pixel figures."""
    lines = [
        "# Fashion-MNIST: frozen features against the published raw-pixel baselines",
        "",
        f"Reproduce: `python benchmarks/fashion_mnist.py --models {','.join(args.models)} "
        f"--image-size {args.image_size} --heads {','.join(args.heads)} --svm-rows {args.svm_rows} "
        f"--svm-max-features {args.svm_max_features}`",
        "",
        "| method | test accuracy |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {acc:.3f} |" for name, acc in PUBLISHED]
    for model, group in table.groupby("model"):
        best = group.sort_values("cv_mean", ascending=False).iloc[0]
        lines.append(
            f"| **{model}** @ {args.image_size}px, {best['layer']} + {best['head']} (best by CV) | **{best['test_accuracy']:.3f}** |"
        )
    for record in svm:
        lines.append(
            f"| **{record['model']}** @ {args.image_size}px, {record['layer']} + svm (C, gamma chosen by CV on {record['selection_rows']} train rows, refit on {record['train_rows']}) | **{record['test_accuracy']:.3f}** |"
        )
    lines += [
        "",
        "## Which layer wins, per backbone (best head by CV at each layer)",
        "",
        "| model | layer | head | CV | test |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (model, layer), group in table.groupby(["model", "layer"], sort=False):
        best = group.sort_values("cv_mean", ascending=False).iloc[0]
        lines.append(
            f"| {model} | {layer} | {best['head']} | {best['cv_mean']:.4f} | {best['test_accuracy']:.4f} |"
        )
    (report / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
