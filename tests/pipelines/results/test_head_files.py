"""Head files written before stage 2 had its layer folders still load."""

from __future__ import annotations

import json
import sys

import joblib
import numpy as np
from _synthetic import write_cache

import pipelines
from featurecache.cache import open_cache
from pipelines.heads import _knn
from pipelines.results._head_file import EARLIER_MODULES


def test_a_head_file_naming_the_earlier_module_loads_and_predicts_the_same(tmp_path):
    cache = write_cache(tmp_path / "c.h5")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"knn": {"n_neighbors": [5], "temperature": [0.07]}}))
    out = tmp_path / "results"
    pipelines.fit(cache, out, heads=["knn"], grid=grid, cv=3, n_jobs=1, layers=["informative"])
    (path,) = (out / "heads").rglob("knn.joblib")
    X = open_cache(cache).load("toy", "informative")[0]
    expected = pipelines.load_head(path).estimator.predict(X)

    # Write it again as a version before the move did: the class under its earlier module.
    stored = joblib.load(path)
    old = next(k for k, v in EARLIER_MODULES.items() if v == _knn.__name__)
    cls = _knn.CosineKNNClassifier
    sys.modules[old], cls.__module__ = _knn, old
    try:
        joblib.dump(stored, path)
    finally:
        del sys.modules[old]
        cls.__module__ = _knn.__name__
    assert old.encode() in path.read_bytes()

    head = pipelines.load_head(path)
    assert isinstance(head.estimator.steps[-1][1], cls)
    np.testing.assert_array_equal(head.estimator.predict(X), expected)
    assert old not in sys.modules  # the earlier name answered only while the file loaded
