"""Fashion-MNIST with frozen EfficientNet-Lite features, against the published raw-pixel baselines.

Official split: 60,000 train / 10,000 test (``builtin:fashion-mnist``). For each backbone, the
default layers are extracted once into one cache; then every (model, layer) gets the heads of
``pipelines.fit`` with its protocol: hyper-parameters by stratified 5-fold CV on all of train,
refit on train, scored once on test; the best combination is picked by CV, never by test.

Two heads are too costly for CV on 60,000 rows, and get the subsample protocol instead: the
layer and the hyper-parameters are chosen by 5-fold stratified CV on one stratified subsample
of train, the winner is refitted on the full train split and scored once on test.

- ``svm`` (RBF, O(n²) per fit), per backbone, on its layers of at most ``--svm-max-features``
  features, with ``--svm-rows`` rows.
- ``--flatten-heads`` (logreg; svm after a PCA to ``--flatten-pca`` components) on flattened
  maps: with ``--flatten-layers``, those layers of ``--flatten-model`` are extracted again with
  ``pool="flatten"`` (C × H × W features, the spatial layout kept) and stored beside the pooled
  ones as ``<model>-flatten``; ``--flatten-rows`` rows.

Augmented views (issue 14): ``--views 4,8`` also extracts, for each K, every backbone with K
views of every training image (``--augment``; view 0 the plain one) and, with ``--tta SPEC``,
test-time views, stored as ``<model>-views<K>``; each gets every head with
``fit(..., views="train")`` (folds grouped by sample) and, with ``--tta``, once more with
``tta=--tta-mode``. ``--train-per-class N`` keeps N training images per class (seeded,
stratified; all of test): the small-data setting where augmentation should matter most.
``views.md`` (in the report folder) sets plain against views: CV with its spread, test,
extraction time per view, fit time.

Results go to ``results.csv`` (full CV), ``subsample.csv`` and ``comparison.md``.

    python benchmarks/fashion_mnist.py --image-size 96 --heads logreg,linsvm --svm-rows 10000 \
        --flatten-layers blocks.4,blocks.10 --flatten-rows 10000
    python benchmarks/fashion_mnist.py --models efficientnet_lite0 --train-per-class 100 \
        --views 4,8 --heads logreg --svm-rows 0 --report reports/fashion-mnist-views
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PUBLISHED = [  # Fashion-MNIST benchmark (zalandoresearch/fashion-mnist README), raw pixels
    ("LogisticRegression (scikit-learn, raw pixels)", 0.842),
    ("SVC (scikit-learn, raw pixels)", 0.897),
    ("XGBoost (raw pixels)", 0.898),
    ("HOG + SVM", 0.926),
]


def extract_logged(args, cache: Path, model: str, **features) -> float:
    """Extract ``model`` features of Fashion-MNIST into ``cache``, print how it went, and
    return the seconds it took (0 on a cache hit)."""
    from featurecache import RunOptions, extract

    cache.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = extract(
        dataset(args), cache, model=model, image_size=args.image_size, dtype=args.dtype,
        options=RunOptions(batch_size=args.batch_size, progress=True), **features,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"{features.get('name', model)}: {'hit' if result.hit else f'{result.images_per_second:.1f} img/s'} "
          f"({seconds:.0f}s) layers {', '.join(result.layers)}")  # fmt: skip
    return 0.0 if result.hit else seconds


def dataset(args):
    """Fashion-MNIST, or with ``--train-per-class N`` N seeded training images per class and
    all of test."""
    from featurecache._data import Dataset, load_dataset

    data = load_dataset("builtin:fashion-mnist")
    if not args.train_per_class:
        return data
    rng = np.random.default_rng(args.seed)
    train = data.splits == "train"
    keep = [
        rng.choice(np.flatnonzero(train & (data.labels == k)), args.train_per_class, replace=False)
        for k in np.unique(data.labels[train])
    ]
    keep = np.sort(np.concatenate([*keep, np.flatnonzero(~train)]))
    return Dataset(
        source=f"{data.source} ({args.train_per_class} train images per class, seed {args.seed})",
        ids=data.ids[keep], labels=data.labels[keep], splits=data.splits[keep],
        class_names=data.class_names, arrays=data.arrays[keep],
    )  # fmt: skip


def views_name(model: str, k: int) -> str:
    return f"{model}-views{k}"


def extract_views(args, cache: Path) -> dict[str, float]:
    """Every backbone with K views for each K of ``--views``; seconds per extraction."""
    seconds = {}
    for k in args.views:
        for model in args.models:
            name = views_name(model, k)
            seconds[name] = extract_logged(
                args, cache, model, name=name, views=k, augment=args.augment, tta=args.tta
            )
    return seconds


def fit_views(args, cache: Path, results: Path):
    """Every head on the views models: trained on all views, then (with ``--tta``) scored
    with test-time augmentation; the results folder's whole table."""
    import pipelines

    names = [views_name(model, k) for k in args.views for model in args.models]
    options = {"models": names, "heads": args.heads, "cv": args.cv, "seed": args.seed,
               "n_jobs": args.jobs}  # fmt: skip
    table = pipelines.fit(cache, results, views="train", **options)
    if args.tta:
        table = pipelines.fit(cache, results, views="train", tta=args.tta_mode, **options)
    return table


def select_on_subsample(
    cache,
    head_name: str,
    model: str,
    layers: list[str],
    rows: int,
    seed: int,
    jobs: int,
    grid: dict | None = None,
) -> dict:
    """Choose the layer and hyper-parameters of one head on a train subsample; refit on all of train.

    Every candidate layer gets 5-fold stratified CV on the same stratified subsample of ``rows``
    train rows; the best by CV mean is refitted on the full train split and scored once on test.
    """
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    import pipelines
    from pipelines._heads import build_pipeline

    head = pipelines.get_head(head_name)
    started = time.perf_counter()
    found = {}
    for layer in layers:
        X, y, _ = cache.load(model, layer, split="train")
        X_sub, _, y_sub, _ = train_test_split(X, y, train_size=rows, stratify=y, random_state=seed)
        found[layer] = pipelines.search(head, X_sub, y_sub, grid=grid, cv=5, seed=seed, n_jobs=jobs)
        print(f"{head_name} CV on {model}/{layer} ({rows} rows): {found[layer].params} "
              f"{found[layer].cv_mean:.4f}", flush=True)  # fmt: skip
    layer = max(found, key=lambda name: found[name].cv_mean)
    X, y, _ = cache.load(model, layer, split="train")
    X_test, y_test, _ = cache.load(model, layer, split="test")
    estimator = build_pipeline(head, found[layer].params, X, y, seed=seed)
    accuracy = accuracy_score(y_test, estimator.predict(X_test))
    print(f"{head_name} on {model}/{layer} (chosen on {rows} rows, refit on {len(y)}): "
          f"test {accuracy:.4f}", flush=True)  # fmt: skip
    return {
        "model": model, "layer": layer, "n_features": X.shape[1], "head": head_name,
        "selection_rows": rows, "train_rows": len(y),
        "params": json.dumps(found[layer].params, default=str), "cv_mean": found[layer].cv_mean,
        "cv_std": found[layer].cv_std, "test_accuracy": accuracy,
        "candidates": json.dumps({name: found[name].cv_mean for name in found}),
        "fit_seconds": time.perf_counter() - started,
    }  # fmt: skip


def fit_subsampled(cache_path: Path, results: Path, args, flattened: str | None) -> list[dict]:
    """The heads too costly for full CV on 60,000 rows, with the subsample protocol; subsample.csv.

    - ``svm`` per backbone, on its pooled layers of at most ``--svm-max-features`` features (an
      RBF SVM on 60,000 rows of a 1,280-wide layer takes about an hour on 2 cores); the rule is
      fixed before any fit.
    - ``--flatten-heads`` on the flattened layers, when ``--flatten-layers`` is given; ``svm``
      there gets a PCA step of ``--flatten-pca`` components (fitted inside each CV fold).
    """
    import pandas as pd

    import pipelines

    cache = pipelines.open_cache(cache_path)
    records = []
    if args.svm_rows:
        for model in args.models:
            narrow = [
                entry.layer
                for entry in cache.entries
                if entry.model == model and entry.n_features <= args.svm_max_features
            ]
            records.append(
                select_on_subsample(
                    cache, "svm", model, narrow, args.svm_rows, args.seed, args.jobs
                )
            )
    for head in args.flatten_heads if flattened else []:
        grid = {"pca": [args.flatten_pca]} if head == "svm" else None
        records.append(
            select_on_subsample(
                cache,
                head,
                flattened,
                args.flatten_layers,
                args.flatten_rows,
                args.seed,
                args.jobs,
                grid,
            )  # fmt: skip
        )
    pd.DataFrame(records).to_csv(results / "subsample.csv", index=False)
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
    parser.add_argument(
        "--flatten-layers",
        type=lambda s: s.split(","),
        default=[],
        help="also extract these layers with pool=flatten and fit logreg on them",
    )
    parser.add_argument("--flatten-model", default="efficientnet_lite0")
    parser.add_argument(
        "--flatten-rows", type=int, default=10000, help="train rows to choose C and the layer"
    )
    parser.add_argument(
        "--flatten-heads",
        type=lambda s: s.split(","),
        default=["logreg"],
        help="heads for the flattened layers (logreg, svm)",
    )
    parser.add_argument(
        "--flatten-pca", type=int, default=256, help="PCA components before the svm head"
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
    parser.add_argument(
        "--views", type=lambda s: [int(k) for k in s.split(",")], default=[],
        help="also extract K augmented views per training image for each K (e.g. 4,8) and fit "
        "on them",
    )  # fmt: skip
    parser.add_argument("--augment", default="flip,rrc:0.5-1", help="augmentation of the views")
    parser.add_argument("--tta", default=None, help="test-time views, e.g. flip (default: none)")
    parser.add_argument("--tta-mode", default="mean-proba", choices=["mean-proba", "mean-feature"])
    parser.add_argument(
        "--train-per-class", type=int, default=0,
        help="keep N seeded training images per class, all of test (0: all 60,000)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.train_per_class and args.svm_rows:
        print("--train-per-class: the svm subsample protocol is skipped (put svm in --heads)")
        args.svm_rows = 0

    import pipelines

    stem = f"fashion-mnist-{args.image_size}" + (
        f"-per{args.train_per_class}-seed{args.seed}" if args.train_per_class else ""
    )
    cache = Path(args.cache or f"data/cache/{stem}.h5")
    flattened = f"{args.flatten_model}-flatten" if args.flatten_layers else None
    if args.stage in ("all", "extract"):
        extraction = {model: extract_logged(args, cache, model) for model in args.models}
        extraction.update(extract_views(args, cache))
        if flattened:
            # Global average pooling throws away where a feature fired; on 28 x 28 garments the
            # layout is much of the signal, so the flattened (C x H x W) maps of mid-level
            # blocks are a second representation of the same frozen network, stored beside
            # the pooled ones under their own name.
            extract_logged(
                args, cache, args.flatten_model, layers=args.flatten_layers, pool="flatten",
                name=flattened,
            )  # fmt: skip
    if args.stage == "extract":
        return
    results = Path(args.results or f"data/cache/{stem}-results")
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
    every = fit_views(args, cache, results) if args.views else table
    subsampled = fit_subsampled(cache, results, args, flattened)
    report = pipelines.report(results, args.report)
    write_comparison(Path(report), table, subsampled, args)
    if args.views:
        seconds = extraction if args.stage == "all" else {}
        write_views(Path(report), every, seconds, args)
    print(f"report: {report / 'report.html'}")


def write_views(report: Path, table, extraction: dict[str, float], args) -> None:
    """views.md: for each backbone, layer and head, plain against every K (and TTA): CV with
    its spread, test, extraction time per view, fit time."""
    lines = [
        "# Fashion-MNIST: plain features against augmented views",
        "",
        f"Reproduce: `{reproduce_command(args)}`",
        "",
        f"Training images per class: {args.train_per_class or 'all'}; augmentation "
        f"`{args.augment}`; test-time views `{args.tta or 'none'}`. CV: {args.cv}-fold, the same "
        "folds for every variant, grouped by sample; held-out rows scored on their plain view. "
        "Extraction per view: the views model's extraction time (its test-time views "
        "included) divided by K.",
        "",
        "| model | layer | head | variant | CV mean ± std | test | extraction s per view | fit s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in args.models:
        names = [model] + [views_name(model, k) for k in args.views]
        rows = table[table["model"].isin(names)].sort_values(
            ["layer", "head", "n_views", "n_tta"], kind="mergesort"
        )
        for _, r in rows.iterrows():
            variant = "plain" if r["views"] == "none" else f"views ×{r['n_views']}"
            variant += "" if r["tta"] == "none" else f", TTA {r['tta']} ×{r['n_tta']}"
            seconds = extraction.get(r["model"])
            per_view = f"{seconds / max(r['n_views'], 1):.1f}" if seconds else "not measured"
            lines.append(
                f"| {model} | {r['layer']} | {r['head']} | {variant} | {r['cv_mean']:.4f} ± "
                f"{r['cv_std']:.4f} | {r['test_accuracy']:.4f} | {per_view} | "
                f"{r['fit_seconds']:.1f} |"
            )
    (report / "views.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def reproduce_command(args) -> str:
    command = (
        f"python benchmarks/fashion_mnist.py --models {','.join(args.models)} "
        f"--image-size {args.image_size} --heads {','.join(args.heads)} --svm-rows {args.svm_rows} "
        f"--svm-max-features {args.svm_max_features}"
    )
    if args.views:
        command += f" --views {','.join(map(str, args.views))} --augment {args.augment}"
        command += f" --tta {args.tta} --tta-mode {args.tta_mode}" if args.tta else ""
    if args.train_per_class:
        command += f" --train-per-class {args.train_per_class} --seed {args.seed}"
    if args.flatten_layers:
        command += (
            f" --flatten-model {args.flatten_model} --flatten-layers {','.join(args.flatten_layers)}"
            f" --flatten-rows {args.flatten_rows} --flatten-heads {','.join(args.flatten_heads)}"
        )
        if "svm" in args.flatten_heads:
            command += f" --flatten-pca {args.flatten_pca}"
    return command


def write_comparison(report: Path, table, subsampled: list[dict], args) -> None:
    """comparison.md: our best heads beside the published raw-pixel figures."""
    import pipelines

    plain = table[table["views"].fillna("none").isin(["none", ""])] if "views" in table else table
    n_train, n_test = int(plain["n_train"].max()), int(plain["n_test"].max())
    split = (
        f"{args.train_per_class} seeded per class of the official 60,000"
        if args.train_per_class
        else "the official split"
    )
    lines = [
        "# Fashion-MNIST: frozen features against the published raw-pixel baselines",
        "",
        f"Reproduce: `{reproduce_command(args)}`",
        "",
        f"Train rows: {n_train:,} ({split}); test: {n_test:,}. Every choice below (layer, head, "
        "C, gamma) is made by 5-fold stratified CV on train; test is scored once per row.",
        "",
        "Fitted in the results folder (earlier runs' combinations are kept and reused): "
        + _fitted_heads(table)
        + ".",
        "",
        "| method | test accuracy |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {acc:.3f} |" for name, acc in PUBLISHED]
    for model, group in table.groupby("model"):
        best = pipelines.best(group)
        lines.append(
            f"| **{model}** @ {args.image_size}px, {best['layer']} + {best['head']} (best layer and head by CV on {n_train:,}) | **{best['test_accuracy']:.3f}** |"
        )
    for record in subsampled:
        lines.append(
            f"| **{record['model']}** @ {args.image_size}px, {record['layer']} ({record['n_features']} features) + {record['head']} (layer and {_params_names(record)} chosen by CV on {record['selection_rows']:,} train rows, refit on {record['train_rows']:,}) | **{record['test_accuracy']:.3f}** |"
        )
    lines += [
        "",
        f"## Which layer wins, per backbone (best head by CV at each layer, CV on {n_train:,})",
        "",
        "| model | layer | head | CV | test |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (model, layer), group in table.groupby(["model", "layer"], sort=False):
        best = pipelines.best(group)
        lines.append(
            f"| {model} | {layer} | {best['head']} | {best['cv_mean']:.4f} | {best['test_accuracy']:.4f} |"
        )
    if subsampled:
        lines += [
            "",
            "## Subsample protocol: CV of every candidate layer",
            "",
            "| model | head | layer | CV on the subsample | chosen |",
            "| --- | --- | --- | --- | --- |",
        ]
        for record in subsampled:
            for layer, cv in json.loads(record["candidates"]).items():
                chosen = "yes" if layer == record["layer"] else ""
                lines.append(
                    f"| {record['model']} | {record['head']} | {layer} | {cv:.4f} | {chosen} |"
                )
    (report / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fitted_heads(table) -> str:
    """Which heads each model got, with full CV, and on how many layers."""
    parts = []
    for model, group in table.groupby("model"):
        counts = group.groupby("head")["layer"].nunique()
        heads = ", ".join(f"{head} ({n} layers)" for head, n in counts.items())
        parts.append(f"{model}: {heads}")
    return "; ".join(parts)


def _params_names(record: dict) -> str:
    return ", ".join(name for name in json.loads(record["params"]) if name != "pca")


if __name__ == "__main__":
    main()
