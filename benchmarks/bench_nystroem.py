"""How long the ``nystroem`` head takes on Fashion-MNIST-sized data: 60,000 rows.

Synthetic standardised features (``--features`` wide, 10 classes, Gaussian clusters) stand in
for a layer after ``--pca 256``. Measured: one refit of ``NystroemClassifier`` (the map and
the ridge head) on all rows, and one fold of the default grid's search (3 gammas x 4 alphas,
one map and one eigendecomposition per gamma) on 4/5 of them; ``SVC`` on ``--svc-rows`` rows
for scale (it grows with the square of the rows).

    python benchmarks/bench_nystroem.py --rows 60000 --features 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.svm import SVC

from pipelines.heads._heads import _nystroem_grid
from pipelines.heads._nystroem import NystroemClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--components", type=int, default=2000)
    parser.add_argument("--svc-rows", type=int, default=6000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, args.features)) * 0.3
    y = rng.integers(0, 10, args.rows)
    X = (centres[y] + rng.normal(size=(args.rows, args.features))).astype(np.float32)
    gamma = 1.0 / (args.features * float(X.var()))

    started = time.perf_counter()
    clf = NystroemClassifier(gamma=gamma, n_components=args.components, alpha=1.0).fit(X, y)
    refit = time.perf_counter() - started
    print(f"refit on {args.rows:,} x {args.features}: {refit:.1f} s "
          f"(train accuracy {clf.score(X[:5000], y[:5000]):.3f})")  # fmt: skip

    cut = args.rows * 4 // 5
    grid = [{"gamma": g, "n_components": args.components, "alpha": a}
            for g in ("0.5*scale", "1*scale", "2*scale") for a in (0.01, 0.1, 1.0, 10.0)]  # fmt: skip
    started = time.perf_counter()
    _nystroem_grid(grid, X[:cut], y[:cut], X[cut:], seed=0)
    fold = time.perf_counter() - started
    print(
        f"one fold of the default grid (12 candidates) on {cut:,} rows: {fold:.1f} s; "
        f"5 folds + refit ~ {5 * fold + refit:.0f} s on one worker"
    )

    n = min(args.svc_rows, args.rows)
    started = time.perf_counter()
    SVC(kernel="rbf", gamma=gamma, cache_size=500).fit(X[:n], y[:n])
    svc = time.perf_counter() - started
    print(f"SVC fit on {n:,} rows: {svc:.1f} s (x{(args.rows / n) ** 2:.0f} at {args.rows:,} "
          f"rows if quadratic: ~{svc * (args.rows / n) ** 2 / 60:.0f} min)")  # fmt: skip


if __name__ == "__main__":
    main()
