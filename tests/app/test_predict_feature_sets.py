"""`featurecache predict` with a head fitted on a feature set: every part is rebuilt.

Two tiny random-weights ResNet-18s at 32 px (seeds 0 and 1, one cache) extract 12 images; a
logreg head is fitted on a set spanning both; prediction rebuilds each part from its recorded
FeatureConfig (one pass per backbone), and on the cached images the concatenated features are
the cached rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from _workers import one_torch_thread
from PIL import Image

import featurecache.app._predict as predict_module
import pipelines
from featurecache import RunOptions, extract
from featurecache.app._predict import predict

BATCH = 64  # every image in one batch in both passes: the same float32 kernels


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_sets")
    images = root / "images"
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        (images / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / name / f"{i}.png")
    cache = root / "c.h5"
    options = RunOptions(batch_size=BATCH, workers=0, device="cpu")
    with one_torch_thread():
        for name, seed, layers in (("r0", 0, ["layer3", "embedding"]), ("r1", 1, ["layer2"])):
            extract(
                images, cache, model="resnet18", weights="none", layers=layers, image_size=32,
                dtype="float32", name=name, seed=seed, options=options,
                # the first run stores the split; the second keeps it (its seed is the weights')
                split="random:0.25" if name == "r0" else None,
            )  # fmt: skip
    table = pipelines.fit(
        cache, root / "results", heads=["logreg"], grid={"logreg": {"C": [1.0]}}, cv=2,
        layers=["embedding"], combine=["r0:layer3+embedding+r1:layer2"], n_jobs=1,
    )  # fmt: skip
    row = table[table["model"] == "r0+r1"].iloc[0]
    return images, cache, root / "results" / row["head_file"]


def test_a_sets_predict_on_the_cached_images_equals_the_cached_rows(fitted, monkeypatch):
    images, cache_path, head = fitted
    seen = {}
    original = predict_module._fill_predictions

    def keep(table, ok, record, X):
        seen["X"] = X
        return original(table, ok, record, X)

    monkeypatch.setattr(predict_module, "_fill_predictions", keep)
    with one_torch_thread():
        table = predict(images, head, batch_size=BATCH, device="cpu", workers=0)
    cache = pipelines.open_cache(cache_path)
    parts = [cache.load(m, layer) for m, layer in
             (("r0", "layer3"), ("r0", "embedding"), ("r1", "layer2"))]  # fmt: skip
    assert all(list(ids) == list(table["id"]) for _, _, ids in parts)
    assert (table["status"] == "ok").all()
    expected = np.hstack([X for X, _, _ in parts])
    assert seen["X"].shape == (12, 256 + 512 + 128)
    np.testing.assert_array_equal(seen["X"], expected)
    record = pipelines.load_head(head)
    assert (record.model, record.layer) == ("r0+r1", "r0:layer3+r0:embedding+r1:layer2")
    names = np.array(record.class_names)[record.estimator.predict(expected)]
    np.testing.assert_array_equal(table["prediction"], names)


def test_a_row_failed_in_one_part_is_failed(fitted, monkeypatch):
    images, _, head = fitted
    original = predict_module._layers_features
    calls = []

    def fail_second_backbone_on_row_0(dataset, config, layers, *args):
        table, ok, features = original(dataset, config, layers, *args)
        calls.append(layers)
        if len(calls) == 2:
            ok = ok.copy()
            ok[0] = False
            table.loc[0, ["status", "reason"]] = ["failed", "unreadable in part 2"]
            features = {name: X[1:] for name, X in features.items()}
        return table, ok, features

    monkeypatch.setattr(predict_module, "_layers_features", fail_second_backbone_on_row_0)
    with one_torch_thread():
        table = predict(images, head, batch_size=BATCH, device="cpu", workers=0)
    # One pass per backbone: r0's two layers together, then r1's.
    assert calls == [("layer3", "embedding"), ("layer2",)]
    assert table.loc[0, "status"] == "failed" and table.loc[0, "reason"] == "unreadable in part 2"
    assert table.loc[0, "prediction"] == "" and (table["status"][1:] == "ok").all()
