"""`pipelines.fit`: the protocol, the results folder, reuse, head files, errors, CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from _synthetic import LAYERS, write_cache

import pipelines
import pipelines.fitting._fit as fit_module
import pipelines.results._results as results_module
from featurecache.app._fit_commands import register
from featurecache.app.cli import main
from featurecache.cache import FeatureConfig, Store
from featurecache.cache import _format as fmt
from featurecache.core._validation import ParameterError
from featurecache.exceptions import FeatureCacheError, InvalidArgumentError, UnknownNameError

FAST = {"logreg": {"C": [0.01, 1.0]}, "linsvm": {"C": [0.01, 0.1]}}


def _fit(cache, out, **kwargs):
    options = {"heads": ["logreg"], "grid": FAST, "cv": 3, "n_jobs": 1, **kwargs}
    options["grid"] = {h: g for h, g in options["grid"].items() if h in options["heads"]}
    return pipelines.fit(cache, out, **options)


def _row(table, model, layer, head):
    rows = table[(table["model"] == model) & (table["layer"] == layer) & (table["head"] == head)]
    assert len(rows) == 1
    return rows.iloc[0]


@pytest.fixture
def big(tmp_path):
    """40 train and 40 test rows per class: enough for chance to look like chance."""
    return write_cache(tmp_path / "big.h5", n_per_class={"train": 40, "test": 40}, seed=1)


def test_informative_layer_high_noise_layer_at_chance(big, tmp_path):
    table = _fit(big, tmp_path / "r", layers=["noise", "informative"])
    informative = _row(table, "toy", "informative", "logreg")
    noise = _row(table, "toy", "noise", "logreg")
    assert informative["cv_mean"] > 0.95 and informative["test_accuracy"] > 0.95
    assert abs(noise["test_accuracy"] - 1 / 3) < 0.12
    assert noise["cv_mean"] < 0.5


def test_shuffled_test_labels_drop_test_to_chance_but_not_cv(tmp_path):
    """Proof that test plays no part in selection: CV stays high, test falls to chance."""
    cache = write_cache(
        tmp_path / "c.h5", n_per_class={"train": 40, "test": 40}, seed=1, shuffle_test_labels=True
    )
    table = _fit(cache, tmp_path / "r", layers=["informative"], heads=["logreg", "linsvm"])
    for head in ("logreg", "linsvm"):
        row = _row(table, "toy", "informative", head)
        assert row["cv_mean"] > 0.95
        assert abs(row["test_accuracy"] - 1 / 3) < 0.12


def test_one_row_per_requested_combination(tmp_path):
    cache = write_cache(tmp_path / "c.h5", models=("a", "b"))
    out = tmp_path / "r"
    table = _fit(cache, out, heads=["logreg", "linsvm"], layers=["informative", "embedding"])
    on_disk = pd.read_csv(out / "results.csv")
    assert len(table) == len(on_disk) == 2 * 2 * 2
    assert not on_disk.duplicated(["model", "layer", "head"]).any()
    assert set(on_disk["layer"]) == {"informative", "embedding"}
    for column in results_module.RESULT_COLUMNS:
        assert column in on_disk.columns
    row = on_disk.iloc[0]
    assert (row["n_train"], row["n_test"], row["n_features"]) == (60, 30, 16)
    assert json.loads(row["params"]).keys() == {"C", "pca"}
    run = json.loads((out / "run.json").read_text())
    assert run["samples_digest"] == pipelines.open_cache(cache).samples_digest
    assert run["arguments"]["heads"] == ["logreg", "linsvm"]
    assert run["data"]["counts"]["train"] == {"class_0": 20, "class_1": 20, "class_2": 20}
    for model in ("a", "b"):
        predictions = pd.read_csv(out / "predictions" / model / "embedding" / "logreg.csv")
        assert list(predictions.columns) == [
            "id", "y_true", "y_pred", "true_class", "pred_class", "confidence"
        ]  # fmt: skip
        assert predictions["confidence"].between(1 / 3, 1).all()  # the top class's probability
        assert len(predictions) == 30
    assert not list(out.rglob("*.tmp-*"))


def test_rerun_reuses_finished_combinations(tmp_path, monkeypatch):
    cache = write_cache(tmp_path / "c.h5")
    out = tmp_path / "r"
    calls = []
    original = fit_module.search_heads

    def counting(heads, *args, **kwargs):
        calls.append([h.name for h in heads])
        return original(heads, *args, **kwargs)

    monkeypatch.setattr(fit_module, "search_heads", counting)
    first = _fit(cache, out, heads=["logreg", "linsvm"])
    assert len(calls) == 3  # one per layer, both heads together
    heads = sorted(out.glob("heads/*/*/*.joblib"))
    stamps = {p: p.stat().st_mtime_ns for p in heads}
    calls.clear()
    second = _fit(cache, out, heads=["logreg", "linsvm"])
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in heads} == stamps
    pd.testing.assert_frame_equal(first, second)
    # a new head only fits the new combinations; a changed grid refits that head only
    _fit(cache, out, heads=["logreg", "linsvm", "svm"], grid={**FAST, "svm": {"C": [1.0]}})
    assert calls == [["svm"]] * 3
    calls.clear()
    _fit(cache, out, heads=["logreg"], grid={"logreg": {"C": [0.1]}}, layers=["noise"])
    assert calls == [["logreg"]]
    assert len(pd.read_csv(out / "results.csv")) == 9


def test_saved_head_predicts_like_the_one_in_memory(tmp_path, monkeypatch):
    cache_path = write_cache(tmp_path / "c.h5", shards=True)
    kept = {}
    original = fit_module.refit

    def keep(head, *args, **kwargs):
        result = original(head, *args, **kwargs)
        kept[head.name] = result[0]
        return result

    monkeypatch.setattr(fit_module, "refit", keep)
    out = tmp_path / "r"
    _fit(cache_path, out, heads=["logreg", "svm"], layers=["embedding"], grid={"svm": {"C": [1.0]}})
    cache = pipelines.open_cache(cache_path)
    X, y, ids = cache.load("toy", "embedding", split="test")
    for name in ("logreg", "svm"):
        path = out / "heads" / "toy" / "embedding" / f"{name}.joblib"
        assert set(results_module.HEAD_KEYS) <= set(joblib.load(path))
        record = pipelines.load_head(path)
        assert isinstance(record, pipelines.HeadRecord)
        assert (record.model, record.layer, record.head) == ("toy", "embedding", name)
        assert record.class_names == tuple(cache.class_names)
        assert record.samples_digest == cache.samples_digest
        assert record.provenance["layer"] == "embedding"
        assert json.loads(record.provenance["config"])["backbone"] == "toy"
        assert record.config == FeatureConfig.from_dict(json.loads(record.provenance["config"]))
        assert record.config.backbone == "toy" and record.config.pooling == "avg"
        assert record.featurecache_version
        estimator = record.estimator
        assert estimator.steps[0][0] == "scale"
        np.testing.assert_array_equal(estimator.predict(X), kept[name].predict(X))
        np.testing.assert_array_equal(
            estimator.decision_function(X), kept[name].decision_function(X)
        )
        predictions = pd.read_csv(out / "predictions" / "toy" / "embedding" / f"{name}.csv")
        np.testing.assert_array_equal(predictions["id"], ids)
        np.testing.assert_array_equal(predictions["y_pred"], estimator.predict(X))


def test_load_head_rejects_other_files(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        pipelines.load_head(tmp_path / "none.joblib")
    joblib.dump({"estimator": None}, tmp_path / "x.joblib")
    with pytest.raises(InvalidArgumentError, match="lacks model, layer"):
        pipelines.load_head(tmp_path / "x.joblib")
    (tmp_path / "y.joblib").write_text("not a pickle")
    with pytest.raises(InvalidArgumentError, match="cannot be loaded as a head file"):
        pipelines.load_head(tmp_path / "y.joblib")
    keys = dict.fromkeys(results_module.HEAD_KEYS, "")
    joblib.dump(
        {**keys, "estimator": _Predicts(), "provenance": {"layer": "x"}}, tmp_path / "z.joblib"
    )
    with pytest.raises(InvalidArgumentError, match="records no usable feature configuration"):
        pipelines.load_head(tmp_path / "z.joblib")


class _Predicts:
    def predict(self, X):
        return X


def test_results_folder_of_another_cache_is_refused(tmp_path):
    out = tmp_path / "r"
    _fit(write_cache(tmp_path / "a.h5", seed=0), out, layers=["noise"])
    listing = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    other = write_cache(tmp_path / "b.h5", seed=5)
    with pytest.raises(InvalidArgumentError, match="made from other samples") as error:
        _fit(other, out, layers=["noise"])
    assert error.value.exit_code == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == listing


@pytest.mark.parametrize(
    ("kwargs", "cache_kwargs", "error", "match"),
    [
        ({"heads": ["logreg", "svn"]}, {}, UnknownNameError, "Did you mean 'svm'"),
        ({"cv": 1}, {}, ParameterError, r"The 'cv' parameter of fit must be an int >= 2\. Got 1 "),
        (
            {"cv": True},
            {},
            ParameterError,
            r"The 'cv' parameter of fit must be an int >= 2\. Got T",
        ),
        ({"seed": -1}, {}, ParameterError, r"The 'seed' parameter of fit must be an int in the"),
        ({"n_jobs": 0}, {}, ParameterError, r"'n_jobs' parameter of fit must be None or a nonzero"),
        ({"heads": "logreg"}, {}, ParameterError, r"Write \['logreg'\] for one name"),
        ({"layers": "embedding"}, {}, ParameterError, r"'layers' parameter of fit must be a non-e"),
        ({"models": "toy"}, {}, ParameterError, r"'models' parameter of fit must be a non-empty"),
        ({"cv": 30}, {}, InvalidArgumentError, "cv=30 needs at least 30 train rows per class"),
        ({"models": ["toyy"]}, {}, UnknownNameError, "Did you mean 'toy'"),
        ({"layers": ["embeding"]}, {}, UnknownNameError, "Did you mean 'embedding'"),
        ({"backend": "spark"}, {}, UnknownNameError, "'backend' parameter of fit must be one of"),
        ({"pca": 0}, {}, ParameterError, "'pca' parameter of fit must be None or an int >= 1"),
        ({}, {"n_classes": 1}, InvalidArgumentError, "holds one class"),
        ({}, {"n_per_class": {"test": 10}}, InvalidArgumentError, "labeled rows in split 'train'"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kwargs, cache_kwargs, error, match):
    cache = write_cache(tmp_path / "c.h5", **cache_kwargs)
    out = tmp_path / "r"
    with pytest.raises(error, match=match):
        _fit(cache, out, **kwargs)
    assert not out.exists()


def test_labels_only_in_test_are_refused(tmp_path):
    cache = write_cache(tmp_path / "c.h5")
    import h5py

    with h5py.File(cache, "r+") as f:
        labels = f[fmt.sample_path("labels")][:]
        codes = f[fmt.sample_path("splits")]  # int8 codes into the split-name table
        splits = np.asarray(codes.attrs["names"]).astype(str)[codes[:]]
        labels[(splits == "train") & (labels == 2)] = 1
        f[fmt.sample_path("labels")][:] = labels
    with pytest.raises(InvalidArgumentError, match="'class_2' have labels only in the test split"):
        _fit(cache, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_layer_without_extracted_rows_is_refused(tmp_path):
    cache = write_cache(tmp_path / "c.h5", layers=LAYERS[1:])
    # A run set out to compute toy/noise and has committed nothing of it yet.
    Store(cache).declare_layers("toy", {"noise": {"n_features": 8, "dtype": "float32"}})
    with pytest.raises(InvalidArgumentError, match="toy/noise of cache .* hold no extracted rows"):
        _fit(cache, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_without_test_split_only_cv_is_reported(tmp_path):
    cache = write_cache(tmp_path / "c.h5", n_per_class={"train": 20})
    out = tmp_path / "r"
    table = _fit(cache, out, layers=["informative"])
    row = _row(table, "toy", "informative", "logreg")
    assert math.isnan(row["test_accuracy"]) and row["n_test"] == 0 and row["cv_mean"] > 0.9
    assert not (out / "predictions").exists()
    assert pipelines.load_head(out / "heads" / "toy" / "informative" / "logreg.joblib")


def test_val_split_selects_on_val_and_refits_on_train_plus_val(tmp_path):
    cache = write_cache(tmp_path / "c.h5", n_per_class={"train": 20, "val": 10, "test": 10})
    out = tmp_path / "r"
    table = _fit(cache, out, layers=["informative"], cv=7)  # cv is not used with a val split
    row = _row(table, "toy", "informative", "logreg")
    assert row["selection"] == "val" and (row["n_train"], row["n_val"]) == (60, 30)
    record = json.loads((out / "combos" / "toy" / "informative" / "logreg.json").read_text())
    assert all(len(c["scores"]) == 1 for c in record["candidates"])
    assert record["protocol"]["refit"] == "train + val"
    head = pipelines.load_head(out / row["head_file"])
    assert head.estimator.named_steps["scale"].n_samples_seen_ == 90


def test_backends_give_identical_results(tmp_path):
    cache = write_cache(tmp_path / "c.h5")
    columns = ["model", "layer", "head", "params", "cv_mean", "cv_std", "test_accuracy"]
    tables = [
        _fit(cache, tmp_path / backend, layers=["embedding"], n_jobs=2, backend=backend)[columns]
        for backend in ("loky", "threading")
    ]
    pd.testing.assert_frame_equal(tables[0], tables[1])


@pytest.mark.parametrize(("backend", "module"), [("dask", "distributed"), ("ray", "ray")])
def test_missing_distributed_backend_is_a_clear_error(tmp_path, monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    with pytest.raises(
        InvalidArgumentError, match=rf"needs the '{module}' package.*featurecache\["
    ):
        _fit(write_cache(tmp_path / "c.h5"), tmp_path / "r", backend=backend)
    assert not (tmp_path / "r").exists()


def _cli(argv):
    parser = argparse.ArgumentParser(prog="featurecache")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_fit_and_report(tmp_path, capsys):
    cache = write_cache(tmp_path / "c.h5")
    grid = tmp_path / "grid.yaml"
    grid.write_text("logreg:\n  C: [0.1]\n")
    out = tmp_path / "r"
    argv = ["fit", str(cache), "--out", str(out), "--heads", "logreg", "--grid", str(grid)]
    assert _cli([*argv, "--layers", "noise,informative", "--cv", "3", "--jobs", "1"]) == 0
    assert "best by CV: toy / informative / logreg" in capsys.readouterr().out
    assert len(pd.read_csv(out / "results.csv")) == 2
    assert _cli(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    with pytest.raises(FeatureCacheError, match="The 'cv' parameter of fit must be") as error:
        _cli([*argv, "--cv", "1"])
    assert error.value.exit_code == 2


def test_cli_names_the_flags_python_names_the_parameters(tmp_path, capsys):
    cache = write_cache(tmp_path / "c.h5")
    argv = ["fit", str(cache), "--out", str(tmp_path / "r"), "--heads", "logreg"]
    assert main([*argv, "--jobs", "0"]) == 2
    most = max(32, 4 * (os.cpu_count() or 1))
    assert capsys.readouterr().err == (
        "featurecache: error: --jobs must be None or a nonzero int (-1: all cores, at most "
        f"{most} here (4 per CPU)). Got 0 instead.\n"
    )
    assert main([*argv, "--cv", "1"]) == 2
    assert "error: --cv must be an int >= 2. Got 1 instead." in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["fit", str(cache), "--out", str(tmp_path / "file")]) == 2
    assert (
        "error: --out must be a new or empty folder, or a results folder. Got"
        in capsys.readouterr().err
    )
    with pytest.raises(
        ParameterError, match="The 'out' parameter of fit must be a new or empty folder"
    ):
        pipelines.fit(cache, tmp_path / "file")
    assert not (tmp_path / "r").exists()


def test_fit_with_shots_writes_learning_curves_and_keeps_the_full_fit(tmp_path):
    cache = write_cache(tmp_path / "c.h5", models=("a",))
    out = tmp_path / "r"
    table = _fit(cache, out, heads=["ridge", "knn"], layers=["embedding"], shots="1,3,all", draws=2)
    assert len(table) == 2 and set(table["n_train"]) == {60}  # results.csv: the full train split
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == list(results_module.CURVE_COLUMNS)
    assert curves[["head", "shots", "draw"]].values.tolist() == [
        [head, shots, draw] for head in ("knn", "ridge") for shots in (1, 3) for draw in (0, 1)
    ]
    assert (curves["n_train"] == curves["shots"] * 3).all()
    assert set(curves["selection"]) == {"defaults", "3-fold CV"}  # cv=3: 3 shots is enough
    assert curves["test_accuracy"].between(0, 1).all()
    run = json.loads((out / "run.json").read_text())
    assert run["arguments"]["shots"] == [1, 3] and run["arguments"]["draws"] == 2
    assert "predict_seconds_per_1000" in table and (table["predict_seconds_per_1000"] > 0).all()


def test_a_grid_end_choice_is_a_warning_in_results(tmp_path):
    cache = write_cache(tmp_path / "c.h5", models=("a",))
    out = tmp_path / "r"
    grid = {"ridge": {"alpha": [1.0, 30.0, 1000.0]}}  # CV 0.817, 0.85, 0.867: rising at the end
    table = _fit(cache, out, heads=["ridge"], layers=["embedding"], grid=grid)
    assert table["warnings"].iloc[0].startswith("alpha=1000 is the highest value of the grid")
    assert pd.read_csv(out / "results.csv")["warnings"].iloc[0] == table["warnings"].iloc[0]
