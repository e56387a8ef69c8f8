"""The accuracy cost of ``--store-dtype float16``: the same features stored as float32 and as
float16, fitted with the same heads and protocol.

``extract --store-dtype float16`` computes features as usual and stores them cast to float16
(round to nearest). This script reads every layer of ``--model`` from a float32 cache written by
``featurecache extract``, writes a plain cache of the same samples twice (float32 as read,
float16 cast), runs :func:`pipelines.fit` on both, and prints CV and test accuracy side by
side with the number of test predictions that differ.

    python benchmarks/float16_accuracy.py CACHE.h5 --model efficientnet_lite0 --heads logreg,ridge
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurecache.cache import FeatureConfig, SampleTable, open_cache, write_arrays  # noqa: E402
from pipelines import fit  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", help="a float32 cache written by featurecache extract")
    parser.add_argument("--model", required=True)
    parser.add_argument("--heads", default="logreg,ridge")
    parser.add_argument("--cv", type=int, default=5)
    args = parser.parse_args(argv)
    cache = open_cache(args.cache)
    layers = cache.layers(args.model)
    features, rows = {}, None
    for layer in layers:
        X, found = cache.load_rows(args.model, layer, cache.labels >= 0)
        rows = found if rows is None else rows
        if not np.array_equal(rows, found):
            raise SystemExit(f"{layer}: its ok rows differ from the other layers'")
        features[layer] = X
    samples = SampleTable(
        ids=cache.ids[rows], labels=cache.labels[rows], splits=cache.splits[rows],
        class_names=tuple(cache.class_names), source=cache.source,
    )  # fmt: skip
    tables = {}
    with tempfile.TemporaryDirectory() as folder:
        for dtype in ("float32", "float16"):
            stored = {layer: X.astype(dtype) for layer, X in features.items()}
            path = write_arrays(Path(folder) / f"{dtype}.h5", samples, {"m": stored},
                                {"m": _config(dtype)})  # fmt: skip
            tables[dtype] = fit(path, Path(folder) / f"r-{dtype}", heads=args.heads.split(","),
                                cv=args.cv, n_jobs=1).set_index(["layer", "head"])  # fmt: skip
            tables[dtype]["predictions"] = [
                pd.read_csv(Path(folder) / f"r-{dtype}" / p)["y_pred"].to_numpy()
                for p in tables[dtype]["predictions_file"]
            ]
        n_train = int(np.sum(samples.splits == "train"))
        n_test = int(np.sum(samples.splits == "test"))
        print(f"{args.model}, {n_train} train / {n_test} test rows, {args.cv}-fold CV")
        print("layer | head | CV float32 | CV float16 | test float32 | test float16 | test "
              "predictions that differ")  # fmt: skip
        for key in tables["float32"].index:
            a, b = tables["float32"].loc[key], tables["float16"].loc[key]
            differ = int(np.sum(a["predictions"] != b["predictions"]))
            print(f"{key[0]} | {key[1]} | {a['cv_mean']:.4f} | {b['cv_mean']:.4f} | "
                  f"{a['test_accuracy']:.4f} | {b['test_accuracy']:.4f} | {differ} of {n_test}")  # fmt: skip
    return 0


def _config(dtype: str) -> FeatureConfig:
    return FeatureConfig(backbone="m", weights_sha256="0" * 64, preprocessing={}, pooling="avg",
                         dtype=dtype, compute_dtype="float32")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
