"""Named protocols (``fit(protocol=...)``): ssl-transfer and DINO's kNN, against the
published procedures written out in the tests."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from _synthetic import write_cache
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import pipelines
from featurecache.core._validation import ParameterError
from pipelines.heads._protocols import SSL_TRANSFER_WD, list_protocols, ssl_transfer_split

LAYERS = (("informative", 16, 0.6), ("embedding", 12, 0.4))


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return write_cache(
        tmp_path_factory.mktemp("protocols") / "c.h5", layers=LAYERS, n_classes=3,
        n_per_class={"train": 40, "test": 15},
    )  # fmt: skip


def test_ssl_transfer_grid_is_the_published_one():
    torch = pytest.importorskip("torch")
    published = torch.logspace(-6, 5, 45)  # ssl-transfer's linear.py, in float32
    assert len(SSL_TRANSFER_WD) == 45
    assert (SSL_TRANSFER_WD[0], SSL_TRANSFER_WD[-1]) == (1e-6, 1e5)
    np.testing.assert_allclose(SSL_TRANSFER_WD, published.double().numpy(), rtol=1e-6)
    assert np.all(np.diff(np.log10(SSL_TRANSFER_WD)) == pytest.approx(11 / 44))


@pytest.mark.parametrize(("n", "seed"), [(120, 0), (7, 3), (1000, 42)])
def test_ssl_transfer_split_is_the_published_one(n, seed):
    state = np.random.get_state()
    try:  # linear.py's get_train_valid_loader, verbatim
        indices = list(range(n))
        split = int(np.floor(0.2 * n))
        np.random.seed(seed)
        np.random.shuffle(indices)
        train_idx, valid_idx = indices[split:], indices[:split]
    finally:
        np.random.set_state(state)
    train, val = ssl_transfer_split(n, seed)
    assert train.tolist() == train_idx and val.tolist() == valid_idx


def _published_ssl_transfer(X_train, y_train, seed):
    """linear.py's LinearTester.validate + evaluate on features already computed."""
    train_idx, valid_idx = ssl_transfer_split(len(y_train), seed)
    clf = LogisticRegression(solver="lbfgs", warm_start=True)
    best_score, best_c = 0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for wd in np.logspace(-6, 5, 45):
            clf.set_params(C=1.0 / wd)
            clf.fit(X_train[train_idx], y_train[train_idx])
            score = 100.0 * clf.score(X_train[valid_idx], y_train[valid_idx])
            if score > best_score:
                best_score, best_c = score, 1.0 / wd
        clf.set_params(C=best_c)
        clf.fit(X_train, y_train)
    return clf, best_c, best_score / 100


def test_ssl_transfer_reproduces_the_published_evaluation(cache_path, tmp_path):
    table = pipelines.fit(
        cache_path, tmp_path / "r", protocol="ssl-transfer", layers=["embedding"], n_jobs=1
    )
    cache = pipelines.open_cache(cache_path)
    for _, row in table.iterrows():
        X, y, _ = cache.load("toy", row["layer"], "train")
        X_test, _, ids = cache.load("toy", row["layer"], "test")
        clf, best_c, score = _published_ssl_transfer(X, y, seed=0)
        assert json.loads(row["params"])["C"] == best_c
        assert row["cv_mean"] == pytest.approx(score, abs=1e-12)
        predictions = pd.read_csv(tmp_path / "r" / row["predictions_file"])
        assert list(predictions["id"]) == list(ids)
        np.testing.assert_array_equal(predictions["y_pred"], clf.predict(X_test))
    assert set(table["head"]) == {"ssl-transfer"}
    assert set(table["selection"]) == {"ssl-transfer: 20 % val split"}
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["arguments"]["protocol"] == "ssl-transfer"
    assert run["protocol"]["refit"] == "train + val"


def _dino_knn(X_train, y_train, X_test, k=20, T=0.07, n_classes=3):
    """DINO's eval_knn.knn_classifier in numpy: L2-normalised features, top-k cosine
    similarities, votes exp(s / T) summed per class."""
    train = X_train / np.linalg.norm(X_train, axis=1, keepdims=True)
    test = X_test / np.linalg.norm(X_test, axis=1, keepdims=True)
    similarity = test.astype(np.float64) @ train.T.astype(np.float64)
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(similarity, top, axis=1) / T)
    votes = np.zeros((len(X_test), n_classes))
    for j in range(k):
        np.add.at(votes, (np.arange(len(X_test)), y_train[top[:, j]]), weights[:, j])
    return np.argmax(votes, axis=1)


def test_dino_knn_predictions_equal_the_published_formula(cache_path, tmp_path):
    table = pipelines.fit(cache_path, tmp_path / "r", protocol="dino-knn", n_jobs=1)
    cache = pipelines.open_cache(cache_path)
    for _, row in table.iterrows():
        X, y, _ = cache.load("toy", row["layer"], "train")
        X_test, _, _ = cache.load("toy", row["layer"], "test")
        predictions = pd.read_csv(tmp_path / "r" / row["predictions_file"])
        np.testing.assert_array_equal(predictions["y_pred"], _dino_knn(X, y, X_test))
        assert json.loads(row["params"]) == {"n_neighbors": 20, "temperature": 0.07}
    assert set(table["selection"]) == {"dino-knn: fixed (k=20, T=0.07)"}
    text = (pipelines.report(tmp_path / "r", tmp_path / "report") / "report.md").read_text()
    assert "Protocol **dino-knn**: DINO kNN: L2-normalised features" in text


def test_a_protocol_on_a_feature_set_scales_its_parts(cache_path, tmp_path):
    table = pipelines.fit(cache_path, tmp_path / "r", protocol="dino-knn", n_jobs=1,
                          layers=["embedding"], combine=["toy:informative+embedding"])  # fmt: skip
    assert ("informative+embedding", "dino-knn") in set(
        zip(table["layer"], table["head"], strict=True)
    )
    row = table[table["layer"] == "informative+embedding"].iloc[0]
    record = pipelines.load_head(tmp_path / "r" / row["head_file"])
    assert list(record.estimator.named_steps) == ["scale", "clf"]


def test_an_unknown_protocol_is_refused_with_the_list(cache_path, tmp_path):
    assert list_protocols() == pipelines.list_protocols() == ["ssl-transfer", "dino-knn"]
    with pytest.raises(ParameterError, match=r"'protocol' parameter of fit must be one of "
                       r"'ssl-transfer', 'dino-knn'. Got 'dino' instead"):  # fmt: skip
        pipelines.fit(cache_path, tmp_path / "r", protocol="dino")
    assert not (tmp_path / "r").exists()


def test_cli_refuses_heads_with_a_protocol(cache_path, tmp_path, capsys):
    from featurecache.app.cli import main

    argv = ["fit", str(cache_path), "--out", str(tmp_path / "r"), "--protocol", "dino-knn"]
    assert main([*argv, "--heads", "logreg"]) == 2
    assert ("--heads cannot be given with --protocol dino-knn: the protocol fixes its own head"
            in capsys.readouterr().err)  # fmt: skip
    assert not (tmp_path / "r").exists()
    assert main([*argv, "--layers", "embedding", "--jobs", "1"]) == 0
    assert "best by CV: toy / embedding / dino-knn" in capsys.readouterr().out
