"""`featurecache predict`: a fitted head on new images, against the cache it was fitted on.

A tiny random-weights ResNet-18 at 32 px extracts 12 images; a logreg head is fitted on
the cache; prediction then rebuilds the backbone from the head's FeatureConfig.
"""

from __future__ import annotations

import json
import re
import shutil

import joblib
import numpy as np
import pandas as pd
import pytest
from _workers import one_torch_thread
from PIL import Image

import featurecache.app._predict as predict_module
import pipelines
from featurecache import RunOptions, extract
from featurecache.app._predict import predict, write_predictions
from featurecache.app.cli import main
from featurecache.exceptions import ConfigMismatchError, InvalidArgumentError

LAYER = "embedding"
# Every image in one batch, in both passes: extraction and prediction then run the same
# float32 kernels on the same batch, which is what makes bit-for-bit equality hold.
BATCH = 64


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """An image folder, its cache, and the head file of a logreg fitted on that cache."""
    root = tmp_path_factory.mktemp("predict")
    images = root / "images"
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        (images / name).mkdir(parents=True)
        for i in range(6):
            h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / name / f"{i}.png")
    cache = root / "c.h5"
    with one_torch_thread():
        extract(
            images, cache, model="resnet18", weights="none", layers=[LAYER], image_size=32,
            dtype="float32", split="random:0.25",
            options=RunOptions(batch_size=BATCH, workers=0, device="cpu"),
        )  # fmt: skip
    table = pipelines.fit(
        cache, root / "results", heads=["logreg"], grid={"logreg": {"C": [1.0]}}, cv=2
    )
    return images, cache, root / "results" / table["head_file"].iloc[0]


def _predict(images, head, **options):
    with one_torch_thread():
        return predict(images, head, batch_size=BATCH, device="cpu", workers=0, **options)


def test_the_cached_images_get_the_cached_features_bit_for_bit(fitted, monkeypatch):
    images, cache_path, head = fitted
    seen = {}
    original = predict_module._fill_predictions

    def keep(table, ok, record, X):
        seen["X"] = X
        return original(table, ok, record, X)

    monkeypatch.setattr(predict_module, "_fill_predictions", keep)
    table = _predict(images, head)
    cache = pipelines.open_cache(cache_path)
    X, _, ids = cache.load("resnet18", LAYER)
    assert list(table["id"]) == list(ids) and (table["status"] == "ok").all()
    # Same weights, preprocessing, batch and kernels: the features are the cached ones exactly.
    np.testing.assert_array_equal(seen["X"], X)
    record = pipelines.load_head(head)
    expected = np.array(record.class_names)[record.estimator.predict(X)]
    np.testing.assert_array_equal(table["prediction"], expected)
    # ...and so are the head's outputs: probabilities equal to the last bit, not approximately.
    proba = record.estimator.predict_proba(X)
    columns = [f"proba_{record.class_names[k]}" for k in record.estimator.classes_]
    np.testing.assert_array_equal(table[columns].to_numpy(), proba)


def _tampered(head, folder, **config_changes):
    stored = joblib.load(head)
    provenance = dict(stored["provenance"])
    provenance["config"] = json.dumps({**json.loads(provenance["config"]), **config_changes})
    path = folder / "tampered.joblib"
    joblib.dump({**stored, "provenance": provenance}, path)
    return path


def test_a_head_for_other_weights_is_refused_and_nothing_is_written(fitted, tmp_path, capsys):
    images, _, head = fitted
    tampered = _tampered(head, tmp_path, weights_sha256="0" * 64)
    assert pipelines.load_head(tampered).config.weights_sha256 == "0" * 64
    mismatch = (
        f"the head {str(tampered)!r} was trained on resnet18 with another configuration than "
        f"this featurecache builds (weights_sha256: cached {'0' * 64}, requested "
    )
    with pytest.raises(ConfigMismatchError, match=re.escape(mismatch)):
        _predict(images, tampered)
    out = tmp_path / "predictions.csv"
    argv = ["predict", str(images), "--head", str(tampered), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"featurecache: error: {mismatch}")
    assert captured.err.endswith(
        "); provide the original weights file and featurecache version, or extract the "
        "features again into a new cache and fit the head on them.\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tampered.joblib"]


def test_images_that_fail_are_failed_rows_with_their_reason(fitted, tmp_path):
    images, _, head = fitted
    folder = tmp_path / "new"
    shutil.copytree(images, folder)
    (folder / "ant" / "empty.png").write_bytes(b"")
    (folder / "bee" / "text.png").write_text("not an image")
    table = _predict(folder, head).set_index("id")
    failed = table[table["status"] == "failed"]
    assert sorted(failed.index) == ["ant/empty.png", "bee/text.png"]
    assert "file is empty (0 bytes)" in failed.loc["ant/empty.png", "reason"]
    assert "cannot identify image file" in failed.loc["bee/text.png", "reason"]
    assert (failed["prediction"] == "").all() and failed.filter(like="proba_").isna().all().all()
    ok = table[table["status"] == "ok"]
    assert len(ok) == 12 and (ok["reason"] == "").all()
    assert set(ok["prediction"]) <= {"ant", "bee"}
    assert np.allclose(ok[["proba_ant", "proba_bee"]].sum(axis=1), 1.0)
    # the good images are predicted as they are without the bad ones beside them
    alone = _predict(images, head).set_index("id")
    pd.testing.assert_series_equal(ok["prediction"], alone["prediction"])


def test_cli_writes_the_csv_and_prints_its_summary(fitted, tmp_path, capsys):
    images, _, head = fitted
    folder = tmp_path / "new"
    shutil.copytree(images, folder)
    (folder / "ant" / "empty.png").write_bytes(b"")
    out = tmp_path / "out" / "predictions.csv"
    argv = ["predict", str(folder), "--head", str(head), "--out", str(out)]
    with one_torch_thread():
        assert main([*argv, "--workers", "0", "--device", "cpu", "--batch-size", "64"]) == 0
    assert capsys.readouterr().out == f"predicted 12 images (1 unreadable) -> {out}\n"
    written = pd.read_csv(out, keep_default_na=False, dtype={"prediction": str, "reason": str})
    assert list(written.columns[:5]) == ["id", "path", "status", "reason", "prediction"]
    assert len(written) == 13 and (written["status"] == "failed").sum() == 1
    expected = _predict(folder, head)
    np.testing.assert_array_equal(written["prediction"], expected["prediction"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]  # no temporaries


def test_predictions_are_not_written_over_a_folder(tmp_path):
    with pytest.raises(InvalidArgumentError, match="The 'out' parameter of write_predictions"):
        write_predictions(pd.DataFrame({"id": ["a"]}), tmp_path)
    assert list(tmp_path.iterdir()) == []
