"""The report's pictures and verdict wording, as functions of their data."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.reporting._figures import (
    confidently_wrong,
    depth_figure,
    gallery_figure,
    gap_verdict,
    layer_names_differ,
    learning_curve_figure,
    map_figure,
    per_class_accuracy,
    project_2d,
    thumbnail,
)


def _image(png: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture


@pytest.mark.parametrize(
    ("gap", "spread", "expected"),
    [
        (0.0, 0.01, ("tie", "no difference")),
        (0.0004, 0.0, ("tie", "no difference")),  # prints as 0.000: never a win
        (0.03, 0.01, ("win", "likely real")),
        (0.015, 0.01, ("win", "suggestive")),
        (0.005, 0.01, ("win", "not a reliable difference")),
    ],
)
def test_gap_verdict(gap, spread, expected):
    assert gap_verdict(gap, spread) == expected


def test_depth_figure_for_backbones_with_different_layer_names():
    table = pd.DataFrame(
        {
            "model": ["a", "a", "a", "b", "b"],
            "layer": ["blocks.3", "blocks.9", "embedding", "stage2", "embedding"],
            "depth": [0.3, 0.7, 1.0, 0.5, 1.0],
            "score": [0.6, 0.8, 0.75, 0.7, 0.72],
        }
    )
    assert layer_names_differ(table)
    assert not layer_names_differ(table[table["layer"] == "embedding"])
    assert _image(depth_figure(table, "score", "test accuracy")).size[0] > 300


def test_learning_curve_map_and_gallery_render():
    curve = {"a/embedding/logreg": [(1, 0.4, 0.05), (5, 0.6, 0.03), (100, 0.8, 0.0)]}
    assert _image(learning_curve_figure(curve)).format == "PNG"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8))
    y = np.repeat([0, 1, 2], 20)
    maps = project_2d(X)
    assert maps[0][0] == "PCA" and maps[0][1].shape == (60, 2)
    wrong = np.zeros(60, dtype=bool)
    wrong[[3, 40]] = True
    assert _image(map_figure(maps[0][1], y, wrong, ["x", "y", "z"], "PCA")).format == "PNG"
    thumbs = [thumbnail(rng.random((28, 28))), thumbnail(np.zeros((30, 20, 3), np.uint8))]
    assert thumbs[0].shape == (28, 28, 3) and thumbs[0].dtype == np.uint8
    assert _image(gallery_figure(thumbs, ["true x\npred y", "true z\npred x"])).format == "PNG"


def test_thumbnail_from_a_file(tmp_path):
    path = tmp_path / "cat.png"
    Image.new("L", (200, 100), 128).save(path)
    assert thumbnail(path, size=64).shape == (32, 64, 3)


def test_confidently_wrong_and_per_class_accuracy():
    predictions = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "y_true": [0, 1, 1, 2],
            "y_pred": [0, 2, 0, 1],
            "confidence": [0.99, 0.6, 0.9, 0.6],
        }
    )
    assert confidently_wrong(predictions, top=2)["id"].tolist() == ["c", "b"]
    rows = per_class_accuracy(predictions["y_true"].to_numpy(), predictions["y_pred"].to_numpy(),
                              ["p", "q", "r"])  # fmt: skip
    assert rows == [("q", 2, 0.0), ("r", 1, 0.0), ("p", 1, 1.0)]


def test_umap_map_joins_pca_when_umap_learn_is_installed(monkeypatch):
    import sys
    import types

    class FakeUMAP:
        def __init__(self, n_components, random_state):
            self.n_components = n_components

        def fit_transform(self, X):
            return X[:, : self.n_components] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    maps = project_2d(np.random.default_rng(0).normal(size=(30, 5)))
    assert [name for name, _ in maps] == ["PCA", "UMAP"] and maps[1][1].shape == (30, 2)
