"""Time the default logreg grid with 5-fold CV: pipelines.search against a plain GridSearchCV.

The script writes a synthetic cache (float32 features with class structure, in
a plain index written by ``featurecache.cache.write_arrays``) into a temporary folder, reads
the train split back with ``pipelines.open_cache``, then runs

- plain: ``GridSearchCV(Pipeline([StandardScaler(), LogisticRegression(...)]),
  {"clf__C": default grid}, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
  n_jobs=JOBS, refit=False)`` written directly in scikit-learn;
- pipelines: ``pipelines.search("logreg", X, y, cv=5, seed=seed, n_jobs=JOBS)``.

Both use the same estimator settings, folds and number of workers. The target
is a speed-up of at least 2x while the C chosen by pipelines has a CV score
(as measured by the plain search) within 0.002 of the plain search's best.

Then the fast probes on the same folds and workers (skip them with ``--skip-probes``):
``pipelines.search("ridge", ...)`` (exact CV over its 19 alphas) and
``pipelines.search("knn", ...)`` (24 (k, T) pairs), each with its default grid.

    python benchmarks/bench_heads.py                     # 60,000 x 1,280
    python benchmarks/bench_heads.py --n-samples 12000    # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurecache.cache import FeatureConfig, SampleTable, write_arrays  # noqa: E402


def write_cache(path: Path, n_samples: int, n_features: int, n_classes: int, seed: int) -> None:
    """Classes are Gaussian clouds in a 32-dimensional subspace, buried in isotropic noise."""
    rng = np.random.default_rng(seed)
    latent_dim = 32
    centers = rng.normal(scale=0.45, size=(n_classes, latent_dim))
    mixing = rng.normal(scale=1.0 / np.sqrt(latent_dim), size=(latent_dim, n_features))
    y = rng.integers(0, n_classes, size=n_samples)
    splits = np.where(rng.random(n_samples) < 0.8, "train", "test")
    X = np.empty((n_samples, n_features), dtype=np.float32)
    for start in range(0, n_samples, 4096):
        stop = min(n_samples, start + 4096)
        latent = centers[y[start:stop]] + rng.normal(size=(stop - start, latent_dim))
        noise = rng.normal(size=(stop - start, n_features))
        X[start:stop] = (latent @ mixing * 2.0 + noise).astype(np.float32)
    samples = SampleTable(
        ids=np.array([f"{i:07d}" for i in range(n_samples)], dtype=object),
        labels=y.astype(np.int64),
        splits=splits.astype(object),
        class_names=tuple(f"c{k}" for k in range(n_classes)),
        source="synthetic benchmark",
    )
    config = FeatureConfig(
        backbone="synthetic",
        weights_sha256="0" * 64,
        preprocessing={},
        pooling="avg",
        dtype="float32",
        compute_dtype="float32",
    )
    write_arrays(
        path,
        samples,
        {"synthetic": {"embedding": X}},
        {"synthetic": config},
        layer_attrs={"synthetic": {"embedding": {"depth": 1.0}}},
    )


def plain_search(X, y, grid, cv, seed, jobs):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    import pipelines

    head = pipelines.get_head("logreg")
    pipe = Pipeline([("scale", StandardScaler()), ("clf", head.make_classifier(seed))])
    folds = StratifiedKFold(cv, shuffle=True, random_state=seed)
    search = GridSearchCV(pipe, {"clf__C": grid}, cv=folds, n_jobs=jobs, refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    return search


def time_probes(X, y, args) -> dict:
    """Seconds, chosen parameters and CV score of ridge and knn with their default grids."""
    import pipelines

    figures = {}
    print(f"\n{'probe':<8} {'candidates':>10} {'seconds':>9} {'best CV':>9}  chosen")
    for name in ("ridge", "knn"):
        start = time.perf_counter()
        found = pipelines.search(name, X, y, cv=args.cv, seed=args.seed, n_jobs=args.jobs)
        seconds = time.perf_counter() - start
        chosen = {k: v for k, v in found.params.items() if k != "pca"}
        print(
            f"{name:<8} {len(found.candidates):>10} {seconds:9.1f} {found.cv_mean:9.4f}  {chosen}"
        )
        for doubt in found.warnings:
            print(f"         warning: {doubt}")
        figures[name] = {"seconds": seconds, "cv_mean": found.cv_mean, "params": chosen}
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=60_000)
    parser.add_argument("--n-features", type=int, default=1_280)
    parser.add_argument("--n-classes", type=int, default=10)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-plain", action="store_true", help="time pipelines.search only")
    parser.add_argument("--skip-probes", action="store_true", help="no ridge and knn rows")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import pipelines

    grid = [float(c) for c in pipelines.get_head("logreg").default_grid["C"]]
    print(
        f"{args.n_samples} x {args.n_features} float32, {args.n_classes} classes, "
        f"{args.cv}-fold CV, C grid {grid}, {args.jobs} jobs on {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.h5"
        start = time.perf_counter()
        write_cache(path, args.n_samples, args.n_features, args.n_classes, args.seed)
        written = time.perf_counter() - start
        start = time.perf_counter()
        X, y, _ = pipelines.open_cache(path).load("synthetic", "embedding", split="train")
        loaded = time.perf_counter() - start
    print(f"cache written in {written:.1f} s; train split {X.shape} read in {loaded:.1f} s")

    rows = []
    plain = None
    if not args.skip_plain:
        start = time.perf_counter()
        plain = plain_search(X, y, grid, args.cv, args.seed, args.jobs)
        plain_seconds = time.perf_counter() - start
        rows.append(
            ("GridSearchCV", plain_seconds, plain.best_params_["clf__C"], plain.best_score_)
        )
    start = time.perf_counter()
    ours = pipelines.search("logreg", X, y, cv=args.cv, seed=args.seed, n_jobs=args.jobs)
    ours_seconds = time.perf_counter() - start
    rows.append(("pipelines.search", ours_seconds, ours.params["C"], ours.cv_mean))

    reference = rows[0][1]
    print(f"\n{'method':<18} {'seconds':>9} {'best C':>8} {'best CV':>9} {'speed-up':>9}")
    for method, seconds, best_c, score in rows:
        print(f"{method:<18} {seconds:9.1f} {best_c:8g} {score:9.4f} {reference / seconds:8.2f}x")
    if plain is not None:
        scores = dict(zip(grid, plain.cv_results_["mean_test_score"], strict=True))
        ours_by_plain = scores[float(ours.params["C"])]
        gap = plain.best_score_ - ours_by_plain
        speedup = reference / ours_seconds
        print(
            f"\nCV score (plain search) of the C chosen by pipelines: {ours_by_plain:.4f}, "
            f"{gap:.4f} below the best; target <= 0.002: {'ok' if gap <= 0.002 else 'MISSED'}"
        )
        print(f"speed-up {speedup:.2f}x; target >= 2x: {'ok' if speedup >= 2 else 'MISSED'}")
        print(
            "per-C CV, plain vs pipelines: "
            + ", ".join(
                f"{c:g}: {scores[c]:.4f}/{cand['mean']:.4f}"
                for c, cand in zip(grid, ours.candidates, strict=True)
            )
        )
    print(f"fits that stopped at max_iter (pipelines): {ours.n_not_converged}")
    probes = {} if args.skip_probes else time_probes(X, y, args)
    if args.json and plain is not None:
        import json

        figures = {
            "description": f"logreg grid, {args.cv}-fold CV, {args.n_samples} x {args.n_features}, {args.jobs} jobs",
            "seconds": {"GridSearchCV (plain)": plain_seconds, "pipelines.search": ours_seconds},
            "speedup": speedup,
            "cv_gap": gap,
            "probes": probes,
        }
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
