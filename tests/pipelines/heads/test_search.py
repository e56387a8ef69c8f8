"""Heads, grids and the fast CV search, against plain scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import pipelines
from featurecache.exceptions import InvalidArgumentError, UnknownNameError
from pipelines.heads._heads import build_pipeline, resolve_grids


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(
        n_samples=150, n_features=20, n_informative=6, n_classes=3, random_state=0
    )
    return X.astype(np.float32), y


def _plain(head, grid, X, y, seed=0, cv=4):
    """GridSearchCV of the same pipeline and grid, written directly in scikit-learn."""
    pipe = Pipeline([("scale", StandardScaler()), ("clf", head.make_classifier(seed))])
    folds = StratifiedKFold(cv, shuffle=True, random_state=seed)
    param_grid = {f"clf__{k}": v for k, v in grid.items() if k != "pca"}
    return GridSearchCV(pipe, param_grid, cv=folds).fit(X, y)


def test_registry_lists_heads_and_suggests():
    assert pipelines.list_heads()[:4] == ["logreg", "linsvm", "svm", "mlp"]
    head = pipelines.get_head("logreg")
    assert head.path_param == "C" and list(head.default_grid["C"]) == sorted(head.default_grid["C"])
    with pytest.raises(
        UnknownNameError, match=r"head 'logrge'.*Did you mean 'logreg'.*\?.*list_heads"
    ):
        pipelines.get_head("logrge")


def test_register_head_by_decorator():
    from sklearn.neighbors import NearestCentroid

    from pipelines.heads._heads import _HEADS

    @pipelines.register_head(
        "centroid_test", default_grid={"shrink_threshold": (None,)}, description="x"
    )
    def _centroid(seed):
        return NearestCentroid()

    try:
        assert "centroid_test" in pipelines.list_heads()
        assert pipelines.get_head("centroid_test").make_classifier is _centroid
    finally:
        del _HEADS["centroid_test"]


@pytest.mark.parametrize("name", ["linsvm", "svm"])
def test_search_equals_gridsearchcv(data, name):
    X, y = data
    head = pipelines.get_head(name)
    grid = {"C": [0.01, 0.1, 1.0]} if name == "linsvm" else {"C": [1.0, 10.0], "gamma": ["scale"]}
    ours = pipelines.search(name, X, y, grid=grid, cv=4, seed=3)
    plain = _plain(head, head.grid(grid), X, y, seed=3)
    np.testing.assert_allclose(
        [c["mean"] for c in ours.candidates], plain.cv_results_["mean_test_score"], atol=1e-12
    )
    np.testing.assert_allclose(
        [c["std"] for c in ours.candidates], plain.cv_results_["std_test_score"], atol=1e-12
    )
    assert {f"clf__{k}": v for k, v in ours.params.items() if k != "pca"} == plain.best_params_


def test_warm_started_logreg_path_matches_cold_fits(data):
    X, y = data
    head = pipelines.get_head("logreg")
    grid = {"C": [1e-3, 1e-2, 1e-1, 1.0]}
    ours = pipelines.search(head, X, y, grid=grid, cv=4, seed=0)
    plain = _plain(head, head.grid(grid), X, y, seed=0)
    np.testing.assert_allclose(
        [c["mean"] for c in ours.candidates], plain.cv_results_["mean_test_score"], atol=0.02
    )
    assert ours.cv_mean >= plain.best_score_ - 0.002
    assert ours.n_splits == 4 and len(ours.candidates) == 4


@pytest.mark.parametrize("n_classes", [2, 3])
def test_path_objective_is_the_logistic_loss_and_stays_finite_far_off(n_classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from pipelines.heads._search import _objective

    X, y = make_classification(
        n_samples=120, n_features=8, n_informative=4, n_classes=n_classes, random_state=0
    )
    C = 0.5
    model = LogisticRegression(C=C).fit(X, y)
    weights = (model.coef_.copy(), model.intercept_.copy())
    expected = log_loss(y, model.predict_proba(X)) + np.sum(weights[0] ** 2) / (2 * C * len(y))
    assert _objective(model, weights, X, y, C) == pytest.approx(expected, rel=1e-9)
    # a far-off guess: probabilities underflow to 0, the objective is still finite, no warning
    far = (weights[0] * 1e4, weights[1] * 1e4)
    assert np.isfinite(_objective(model, far, X, y, C))


def test_ties_go_to_the_first_candidate_in_grid_order():
    X = np.vstack([np.zeros((10, 2)), np.ones((10, 2))]).astype(np.float32)
    y = np.repeat([0, 1], 10)
    result = pipelines.search("linsvm", X, y, grid={"C": [0.5, 0.1, 1.0]}, cv=2)
    assert [c["mean"] for c in result.candidates] == [1.0, 1.0, 1.0]
    assert result.params["C"] == 0.5


def test_search_is_deterministic_and_parallel_equals_serial(data):
    X, y = data
    serial = pipelines.search("logreg", X, y, grid={"C": [0.01, 0.1]}, cv=3, seed=1, n_jobs=1)
    with parallel_config(backend="threading"):
        threads = pipelines.search("logreg", X, y, grid={"C": [0.01, 0.1]}, cv=3, seed=1, n_jobs=2)
    assert serial.candidates == threads.candidates and serial.params == threads.params


def test_validation_split_uses_binomial_standard_error(data):
    X, y = data
    train, val = np.arange(100), np.arange(100, 150)
    result = pipelines.search("linsvm", X, y, grid={"C": [0.1]}, cv=[(train, val)])
    p = result.cv_mean
    assert result.n_splits == 1
    assert result.cv_std == pytest.approx(np.sqrt(p * (1 - p) / 50))


def test_convergence_warnings_are_counted_not_raised(data):
    X, y = data
    # 100 adam epochs of a small mlp stop before the training loss settles
    result = pipelines.search("mlp", X, y, grid={"hidden_layer_sizes": [[8]]}, cv=2)
    assert result.n_not_converged >= 1  # warnings are errors in this suite, yet nothing raised


def test_bad_cv_and_tiny_classes(data):
    X, y = data
    with pytest.raises(
        InvalidArgumentError,
        match=r"The 'cv' parameter of search must be an int >= 2\. Got 1 instead",
    ):
        pipelines.search("logreg", X, y, cv=1)
    with pytest.raises(InvalidArgumentError, match="cv=5 needs at least 5 training rows per class"):
        pipelines.search("logreg", X[:12], np.r_[np.zeros(9, int), np.ones(3, int)], cv=5)


def test_grid_validation_messages():
    head = pipelines.get_head("logreg")
    with pytest.raises(InvalidArgumentError, match=r"parameter 'c'.*Did you mean 'C'"):
        head.grid({"c": [1.0]})
    with pytest.raises(InvalidArgumentError, match="lists no values for 'C'"):
        head.grid({"C": []})
    with pytest.raises(InvalidArgumentError, match="pca takes null"):
        head.grid({"pca": [0]})
    with pytest.raises(InvalidArgumentError, match="gamma must be"):
        pipelines.get_head("svm").grid({"gamma": ["twice"]})
    with pytest.raises(UnknownNameError, match="head 'svn'"):
        resolve_grids(["logreg"], {"svn": {"C": [1]}})
    assert set(resolve_grids(["logreg"], {"svm": {"C": [1]}})) == {"logreg"}


def test_load_grid_json_and_yaml(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps({"logreg": {"C": [0.1, 1]}}))
    (tmp_path / "g.yaml").write_text(
        "svm:\n  C: [1, 10]\n  gamma: ['0.5*scale']\nmlp:\n  pca: [32]\n"
    )
    assert pipelines.load_grid(tmp_path / "g.json") == {"logreg": {"C": [0.1, 1]}}
    grids = resolve_grids(["svm", "mlp"], pipelines.load_grid(tmp_path / "g.yaml"))
    assert grids["svm"]["gamma"] == ["0.5*scale"] and grids["mlp"]["pca"] == [32]
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The 'grid' parameter of fit must be a JSON or YAML file mapping head names to "
        r"parameter grids. Got '.*bad.yaml' instead. It holds a list. For example",
    ):
        pipelines.load_grid(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("logreg: {C: [1, 2\n")
    with pytest.raises(InvalidArgumentError, match=r"broken.yaml' instead. It cannot be parsed: "):
        pipelines.load_grid(tmp_path / "broken.yaml")
    with pytest.raises(
        InvalidArgumentError, match=r"missing.json' instead. The file does not exist"
    ):
        pipelines.load_grid(tmp_path / "missing.json")
    (tmp_path / "typo.json").write_text(json.dumps({"logreq": {"C": [1]}}))
    with pytest.raises(UnknownNameError, match="Did you mean 'logreg'"):
        pipelines.load_grid(tmp_path / "typo.json")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            [-1.0],
            r"The 'C' parameter of LogisticRegression must be a float in the range \(0.0, inf\]",
        ),
        (["ten"], r"The 'C' parameter of LogisticRegression must be a float"),
    ],
)
def test_grid_values_the_estimator_refuses_fail_before_any_fit(values, message):
    with pytest.raises(InvalidArgumentError, match=r"the grid of head 'logreg': " + message):
        resolve_grids(["logreg"], {"logreg": {"C": values}})


def test_pipeline_shape_pca_and_gamma(data):
    X, y = data
    svm = pipelines.get_head("svm")
    fitted = build_pipeline(svm, {"C": 1.0, "gamma": "2*scale", "pca": 5}, X, y, seed=0)
    assert [name for name, _ in fitted.steps] == ["scale", "pca", "clf"]
    assert (
        isinstance(fitted.named_steps["pca"], PCA) and fitted.named_steps["pca"].n_components_ == 5
    )
    Xt = fitted[:-1].transform(X)
    assert fitted.named_steps["clf"].gamma == pytest.approx(2.0 / (5 * Xt.var()), rel=1e-5)
    wide = build_pipeline(pipelines.get_head("logreg"), {"C": 1.0, "pca": 64}, X, y, seed=0)
    assert [name for name, _ in wide.steps] == ["scale", "clf"]  # 20 features: no PCA needed


def test_search_with_pca_candidates(data):
    X, y = data
    result = pipelines.search("logreg", X, y, grid={"C": [0.1, 1.0], "pca": [None, 4]}, cv=3)
    assert len(result.candidates) == 4
    assert {c["params"]["pca"] for c in result.candidates} == {None, 4}


def test_last_round_folds_are_cut_to_keep_every_worker_busy(data, monkeypatch):
    """5 folds on 2 workers: the fifth fold runs as two pieces, the later one started from
    an earlier fold's solution; the scores agree with one worker within the solver tolerance."""
    import pipelines.heads._search as search_module

    X, y = data
    calls = []
    real = search_module.fold_scores

    def spy(*args, **kwargs):
        calls.append((kwargs.get("only"), kwargs.get("starts")))
        return real(*args, **kwargs)

    monkeypatch.setattr(search_module, "fold_scores", spy)
    with parallel_config(backend="threading"):
        two = pipelines.search("logreg", X, y, cv=5, seed=0, n_jobs=2)
    monkeypatch.undo()
    one = pipelines.search("logreg", X, y, cv=5, seed=0, n_jobs=1)
    with parallel_config(backend="threading"):
        again = pipelines.search("logreg", X, y, cv=5, seed=0, n_jobs=2)
    assert again.candidates == two.candidates  # the cuts do not depend on timings
    pieces = [c for c in calls if c[0] is not None]
    assert len(calls) == 4 + 2 and len(pieces) == 2
    assert sorted(i for only, _ in pieces for i in only) == list(range(6))  # every C once
    assert [bool(starts) for _, starts in pieces] == [False, True]
    np.testing.assert_allclose(
        [c["mean"] for c in two.candidates], [c["mean"] for c in one.candidates], atol=0.02
    )
    assert not any(math.isnan(s) for c in two.candidates for s in c["scores"])
