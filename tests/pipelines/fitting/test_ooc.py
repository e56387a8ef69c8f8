"""Stage 2 out of core: the streaming reader, and heads fitted from streamed rows equal to
the in-memory fit (scaler, ridge CV, logreg coefficients and CV), within a memory budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _synthetic import write_cache
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from featurecache.cache import open_cache
from featurecache.core._validation import ParameterError
from pipelines import fit
from pipelines.fitting._budget import Budget, parse_memory
from pipelines.fitting._ooc import FitRows, fit_streamed, lbfgs_linear, stratified_sample
from pipelines.heads._heads import get_head, resolve_grids
from pipelines.heads._search import search_heads, stratified_splits
from pipelines.rows._stream import GroupStats, RowSource, fold_groups, scaler_of

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module", params=["index", "folder"])
def cache(request, tmp_path_factory):
    """3 classes, 120 train and 20 test rows each, shards of 64 rows (folder) or a plain
    index; views and test-time views; two failed rows."""
    path = tmp_path_factory.mktemp(request.param) / "cache.h5"
    write_cache(
        path, n_classes=3, n_per_class={"train": 120, "test": 20}, views=3, tta=2,
        failed_rows=(5, 77), shards=request.param == "folder", logged=True, shard_size=64,
    )  # fmt: skip
    return open_cache(path)


def _concat(batches, n_features):
    batches = list(batches)
    if not batches:
        return np.zeros((0, n_features)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate(parts) for parts in zip(*batches, strict=True))


# -- the streaming reader -----------------------------------------------------------------


@pytest.mark.parametrize("batch_rows", [1, 64, 100, 4096])
def test_iter_batches_equals_load_rows_in_row_order(cache, batch_rows):
    X, rows = cache.load_rows("toy", "embedding")
    Xb, yb, rb = _concat(cache.iter_batches("toy", "embedding", batch_rows=batch_rows), 12)
    np.testing.assert_array_equal(Xb, X)
    np.testing.assert_array_equal(rb, rows)
    np.testing.assert_array_equal(yb, cache.labels[rows])
    assert 5 not in rb and 77 not in rb  # failed rows are left out, as load_rows leaves them


def test_iter_batches_holds_one_window_of_rows_at_most(cache):
    sizes = [len(b.rows) for b in cache.iter_batches("toy", "informative", batch_rows=64)]
    assert max(sizes) <= 64 and sum(sizes) == cache.entry("toy", "informative").n_ok


def test_iter_batches_of_some_rows_and_in_float64(cache):
    wanted = np.flatnonzero(cache.splits == "test")[::3][::-1]  # any order; yielded ascending
    X, rows = cache.load_rows("toy", "embedding", np.isin(np.arange(cache.n_samples), wanted))
    Xb, _, rb = _concat(cache.iter_batches("toy", "embedding", wanted, batch_rows=32,
                                           dtype="float64"), 12)  # fmt: skip
    assert Xb.dtype == np.float64
    np.testing.assert_array_equal(rb, rows)
    np.testing.assert_array_equal(Xb, X.astype(np.float64))


@pytest.mark.parametrize("kind", ["augment", "tta"])
def test_iter_batches_streams_the_extra_views(cache, kind):
    V, rows = cache.load_views("toy", "embedding", kind)
    Vb, yb, rb = _concat(cache.iter_batches("toy", "embedding", batch_rows=16, view=kind), 12)
    np.testing.assert_array_equal(Vb, V)
    np.testing.assert_array_equal(rb, rows)
    np.testing.assert_array_equal(yb, cache.labels[rows])


def test_iter_batches_refuses_bad_arguments(cache):
    with pytest.raises(ParameterError, match=r"'dtype' parameter of iter_batches must be "
                       r"float32 or float64\. Got 'int8'"):  # fmt: skip
        next(cache.iter_batches("toy", "embedding", dtype="int8"))
    with pytest.raises(ParameterError, match=r"'rows' parameter of iter_batches must be a "
                       r"boolean mask of shape \(420,\)"):  # fmt: skip
        next(cache.iter_batches("toy", "embedding", np.ones(3, bool)))
    with pytest.raises(ParameterError, match=r"must be row numbers in 0\.\.419\. Got '0\.\.420'"):
        next(cache.iter_batches("toy", "embedding", np.array([0, 420])))
    with pytest.raises(ParameterError, match=r"'view' parameter of iter_batches"):
        next(cache.iter_batches("toy", "embedding", view="flip"))


# -- streamed statistics and heads equal the in-memory ones --------------------------------


def _train(cache, layer="embedding"):
    X, rows = cache.load_rows("toy", layer, cache.splits == "train")
    return X, rows, cache.labels[rows]


def _source(cache, rows, splits, layer="embedding", batch_rows=64):
    group = fold_groups(len(rows), splits)
    return RowSource(cache, "toy", layer, rows, group, batch_rows=batch_rows)


def test_streamed_scaler_equals_standard_scaler(cache):
    X, rows, y = _train(cache)
    splits = stratified_splits(y, 4, 0)
    stats = GroupStats.collect(_source(cache, rows, splits), np.unique(y), gram=False,
                               n_features=12)  # fmt: skip
    for fold in (None, 0, 3):
        part = X if fold is None else X[splits[fold][0]]
        expected = StandardScaler().fit(part.astype(np.float64))
        got = scaler_of(stats.without(fold))
        np.testing.assert_allclose(got.mean_, expected.mean_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.var_, expected.var_, rtol=1e-10)
        np.testing.assert_allclose(got.transform(part), expected.transform(part), atol=1e-9)


def _fit_both(cache, heads, grids, *, cv=5, layer="embedding", select_rows=100_000):
    X, rows, y = _train(cache, layer)
    splits = stratified_splits(y, cv, 0)
    found = search_heads([get_head(h) for h in heads], grids, X, y, splits, seed=0, n_jobs=1)
    fits = fit_streamed(
        cache, cache.entry("toy", layer), [get_head(h) for h in heads], grids,
        FitRows(rows, y, np.zeros(len(y), bool), splits), budget=Budget(64 << 20, select_rows),
        cv=cv, seed=0, n_jobs=1,
    )  # fmt: skip
    return X, y, found, fits


def _scores(result):
    return np.array([c["scores"] for c in result.candidates])


@pytest.mark.parametrize("layer", ["embedding", "noise"])
def test_streamed_ridge_cv_equals_the_in_memory_exact_ridge(cache, layer):
    grids = resolve_grids(["ridge"])
    X, y, found, fits = _fit_both(cache, ["ridge"], grids, layer=layer)
    np.testing.assert_allclose(_scores(fits["ridge"].found), _scores(found["ridge"]), atol=1e-9)
    assert fits["ridge"].found.params == found["ridge"].params
    assert fits["ridge"].strategy.text == "exact, streamed Gram (358 rows)"
    reference = get_head("ridge")
    from pipelines.heads._heads import build_pipeline

    refit = build_pipeline(reference, found["ridge"].params, X.astype(np.float64), y, seed=0)
    np.testing.assert_allclose(fits["ridge"].estimator[-1].coef_, refit[-1].coef_, atol=1e-9)
    np.testing.assert_array_equal(fits["ridge"].estimator.predict(X), refit.predict(X))


def test_streamed_ridge_on_two_classes_equals_the_in_memory_ridge(tmp_path):
    path = write_cache(tmp_path / "c.h5", n_classes=2, n_per_class={"train": 90, "test": 10},
                       shards=True, logged=True, shard_size=32)  # fmt: skip
    _, _, found, fits = _fit_both(open_cache(path), ["ridge"], resolve_grids(["ridge"]), cv=3)
    np.testing.assert_allclose(_scores(fits["ridge"].found), _scores(found["ridge"]), atol=1e-9)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_streamed_lbfgs_equals_scikit_learns_logistic_regression(tmp_path, n_classes):
    path = write_cache(tmp_path / "c.h5", n_classes=n_classes,
                       n_per_class={"train": 80, "test": 10}, shards=True, logged=True)  # fmt: skip
    cache = open_cache(path)
    X, rows, y = _train(cache)
    source = _source(cache, rows, [], batch_rows=32)
    stats = GroupStats.collect(source, np.unique(y), gram=False, n_features=12)
    scaler = scaler_of(stats.without(None))

    def chunks():
        for chunk in source.chunks():
            yield chunk.X, chunk.y

    for C in (0.01, 1.0):
        weights, n_iter, converged = lbfgs_linear(
            "log", chunks, scaler.transform, 12, np.unique(y), len(y), C, tol=1e-4, max_iter=1000
        )
        reference = LogisticRegression(C=C, max_iter=1000).fit(
            StandardScaler().fit_transform(X.astype(np.float64)), y
        )
        assert converged and n_iter == reference.n_iter_[0]
        np.testing.assert_allclose(weights[:, :-1], reference.coef_, atol=1e-8)
        np.testing.assert_allclose(weights[:, -1], reference.intercept_, atol=1e-8)


@pytest.mark.slow
def test_streamed_logreg_cv_and_refit_equal_the_in_memory_search(cache):
    grids = resolve_grids(["logreg"], {"logreg": {"C": [0.001, 0.1, 10.0]}})
    X, y, found, fits = _fit_both(cache, ["logreg"], grids, cv=3)
    streamed, memory = _scores(fits["logreg"].found), _scores(found["logreg"])
    # The same optimum from other starting points (warm starts): at most one held-out row
    # (of 118 or 119) differs per fold, within the solver's tolerance.
    assert np.max(np.abs(streamed - memory)) <= 1 / 118 + 1e-12
    assert fits["logreg"].found.params == found["logreg"].params
    assert fits["logreg"].strategy.text == "exact, streamed L-BFGS (358 rows)"
    clf = fits["logreg"].estimator[-1]
    reference = LogisticRegression(C=clf.C, max_iter=1000).fit(
        StandardScaler().fit_transform(X.astype(np.float64)), y
    )
    np.testing.assert_allclose(clf.coef_, reference.coef_, atol=1e-8)
    np.testing.assert_allclose(
        fits["logreg"].estimator.predict_proba(X),
        reference.predict_proba(StandardScaler().fit_transform(X.astype(np.float64))),
        atol=1e-8,
    )


@pytest.mark.slow
def test_pca_from_the_streamed_gram_equals_scikit_learns_pca(cache):
    """Ridge on PCA features is ridge on the first principal axes; logreg sees the projection."""
    grids = resolve_grids(["ridge", "logreg"], {"ridge": {"pca": [None, 4, 8]},
                                                "logreg": {"C": [0.1, 1.0], "pca": [4]}})  # fmt: skip
    X, y, found, fits = _fit_both(cache, ["ridge", "logreg"], grids, cv=3)
    np.testing.assert_allclose(_scores(fits["ridge"].found), _scores(found["ridge"]), atol=1e-9)
    assert np.max(np.abs(_scores(fits["logreg"].found) - _scores(found["logreg"]))) <= 1 / 118
    from pipelines.heads._heads import build_pipeline

    for head in ("ridge", "logreg"):
        params = {**fits[head].found.params, "pca": 4}
        if head == "ridge":  # the chosen alpha with PCA, refitted out of core
            fits = {
                **fits,
                **_fit_both(
                    cache,
                    ["ridge"],
                    resolve_grids(["ridge"], {"ridge": {"pca": [4], "alpha": [params["alpha"]]}}),
                    cv=3,
                )[3],
            }
        reference = build_pipeline(get_head(head), params, X.astype(np.float64), y, seed=0)
        streamed = fits[head].estimator
        assert [name for name, _ in streamed.steps] == ["scale", "pca", "clf"]
        np.testing.assert_allclose(np.abs(streamed["pca"].transform(streamed["scale"].transform(X))),
                                   np.abs(reference["pca"].transform(reference["scale"].transform(
                                       X.astype(np.float64)))), atol=1e-6)  # fmt: skip
        np.testing.assert_array_equal(streamed.predict(X), reference.predict(X))


def test_heads_above_select_rows_are_chosen_on_a_stratified_sample(cache):
    grids = resolve_grids(["logreg", "knn"], {"logreg": {"C": [0.01, 1.0]}})
    _, y, _, fits = _fit_both(cache, ["logreg", "knn"], grids, cv=3, select_rows=150)
    assert fits["knn"].strategy.text == "selected on a stratified sample of 150 rows, refit on 358"
    assert (fits["logreg"].strategy.text == "selected on a stratified sample of 150 rows, "
            "refit on 358 (streamed L-BFGS)")  # fmt: skip
    assert (fits["logreg"].strategy.n_select, fits["logreg"].strategy.n_refit) == (150, 358)


def test_knn_refit_on_every_row_predicts_as_the_in_memory_knn(cache):
    grids = resolve_grids(["knn"], {"knn": {"n_neighbors": [5], "temperature": [0.07]}})
    X, y, _, fits = _fit_both(cache, ["knn"], grids, cv=3, select_rows=150)
    from pipelines.heads._heads import build_pipeline

    reference = build_pipeline(get_head("knn"), fits["knn"].found.params, X, y, seed=0)
    test, _, _ = cache.load("toy", "embedding", split="test")
    np.testing.assert_array_equal(fits["knn"].estimator.predict(test), reference.predict(test))
    np.testing.assert_allclose(fits["knn"].estimator.predict_proba(test),
                               reference.predict_proba(test), atol=1e-5)  # fmt: skip


def test_heads_without_a_streamed_fit_are_refit_on_the_sample(cache):
    grids = resolve_grids(["svm"], {"svm": {"C": [1.0], "gamma": ["scale"]}})
    _, _, _, fits = _fit_both(cache, ["svm"], grids, cv=3, select_rows=150)
    assert fits["svm"].strategy.text == "selected and refit on a stratified sample of 150 rows"
    assert (fits["svm"].strategy.n_select, fits["svm"].strategy.n_refit) == (150, 150)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_streamed_linsvm_reaches_linearsvcs_optimum(tmp_path, n_classes):
    from sklearn.svm import LinearSVC

    path = write_cache(tmp_path / "c.h5", n_classes=n_classes,
                       n_per_class={"train": 80, "test": 10}, shards=True, logged=True)  # fmt: skip
    cache = open_cache(path)
    X, rows, y = _train(cache)
    source = _source(cache, rows, [], batch_rows=32)
    scaler = scaler_of(GroupStats.collect(source, np.unique(y), gram=False,
                                          n_features=12).without(None))  # fmt: skip

    def chunks():
        for chunk in source.chunks():
            yield chunk.X, chunk.y

    Xs = StandardScaler().fit_transform(X.astype(np.float64))
    for C in (0.001, 0.1):
        weights, _, converged = lbfgs_linear("squared_hinge", chunks, scaler.transform, 12, np.unique(y), len(y),
                                             C, tol=1e-10, max_iter=5000)  # fmt: skip
        reference = LinearSVC(C=C, tol=1e-12, max_iter=1_000_000).fit(Xs, y)
        assert converged
        np.testing.assert_allclose(weights[:, :-1], reference.coef_, atol=1e-6)
        np.testing.assert_allclose(weights[:, -1], reference.intercept_, atol=1e-6)


def test_linsvm_above_select_rows_is_refit_on_every_row(cache):
    grids = resolve_grids(["linsvm"], {"linsvm": {"C": [0.01, 0.1]}})
    X, y, _, fits = _fit_both(cache, ["linsvm"], grids, cv=3, select_rows=150)
    assert fits["linsvm"].strategy.text == (
        "selected on a stratified sample of 150 rows, refit on 358 (streamed L-BFGS)"
    )
    from sklearn.svm import LinearSVC

    C = fits["linsvm"].found.params["C"]
    reference = LinearSVC(C=C, tol=1e-12, max_iter=1_000_000).fit(
        StandardScaler().fit_transform(X.astype(np.float64)), y
    )
    np.testing.assert_allclose(fits["linsvm"].estimator[-1].coef_, reference.coef_, atol=1e-3)


def test_stratified_sample_keeps_every_class_in_proportion():
    strata = np.repeat([0, 1, 2], [1000, 100, 10])
    chosen = stratified_sample(strata, 111, least=5, seed=0)
    assert np.array_equal(np.bincount(strata[chosen]), [100, 10, 5])
    assert np.all(np.diff(chosen) > 0)
    np.testing.assert_array_equal(stratified_sample(strata, 111, least=5, seed=0), chosen)


# -- fit with a budget --------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_cache(tmp_path_factory):
    """45,000 x 64: 11 MiB as float32, so 64MB holds no in-memory fit of it (6 copies)."""
    path = tmp_path_factory.mktemp("large") / "cache.h5"
    return write_cache(
        path, n_classes=3, n_per_class={"train": 12_000, "test": 3_000},
        layers=(("embedding", 64, 0.3),), shards=True, logged=True, shard_size=1024,
    )  # fmt: skip


@pytest.mark.slow
def test_fit_out_of_core_equals_the_in_memory_fit_for_ridge(large_cache, tmp_path):
    grid = {"logreg": {"C": [0.01, 1.0]}}
    kwargs = dict(heads=["ridge", "logreg"], grid=grid, cv=3, n_jobs=1, select_rows=2_000)
    streamed = fit(large_cache, tmp_path / "small", memory="64MB", **kwargs).set_index("head")
    memory = fit(large_cache, tmp_path / "large", memory="8GB", **kwargs).set_index("head")
    assert streamed.loc["ridge", "strategy"] == "exact, streamed Gram (36,000 rows)"
    assert streamed.loc["logreg", "strategy"] == (
        "selected on a stratified sample of 2,000 rows, refit on 36,000 (streamed L-BFGS)"
    )
    assert list(memory["strategy"]) == ["in memory", "in memory"]
    assert list(streamed.loc["logreg", ["n_select", "n_refit"]]) == [2_000, 36_000]
    for column in ("cv_mean", "cv_std", "test_accuracy"):
        assert abs(streamed.loc["ridge", column] - memory.loc["ridge", column]) <= 1e-9
    on_disk = pd.read_csv(tmp_path / "small" / "results.csv").set_index("head")
    assert on_disk.loc["ridge", "strategy"] == "exact, streamed Gram (36,000 rows)"
    from pipelines import report

    text = (report(tmp_path / "small", tmp_path / "report") / "report.md").read_text()
    assert "2 of 2 combinations were fitted out of core" in text
    assert ("| toy | embedding | ridge | exact, streamed Gram (36,000 rows) | 36,000 | 36,000 |"
            in text)  # fmt: skip
    assert "refit on 36,000 (streamed L-BFGS) | 2,000 | 36,000 |" in text
    # The refitted logreg is the optimum over every row: its test accuracy is the in-memory one's.
    assert (
        abs(streamed.loc["logreg", "test_accuracy"] - memory.loc["logreg", "test_accuracy"])
        <= 2 / 9000
    )


@pytest.mark.slow
def test_fit_command_prints_each_streamed_heads_strategy(large_cache, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "featurecache", "fit", str(large_cache), "--out",
         str(tmp_path / "r"), "--heads", "ridge", "--cv", "3", "--memory", "64MB"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "toy / embedding / ridge: exact, streamed Gram (36,000 rows)" in done.stdout


@pytest.mark.parametrize("value", ["4XB", "12", "-1GB", True])
def test_memory_is_a_size(value, tmp_path):
    with pytest.raises(ParameterError, match=r"'memory' parameter of fit must be a size such "
                       r"as 4GB, 512MB or a number of bytes \(at least 64MB\)"):  # fmt: skip
        parse_memory(value)


def test_memory_sizes_are_binary():
    assert parse_memory("4GB") == 4 << 30
    assert parse_memory("512MiB") == 512 << 20
    assert parse_memory("1.5g") == 3 << 29
    assert parse_memory(1 << 30) == 1 << 30


# -- the report's map: a bounded, seeded sample of the test rows, streamed -----------------


def test_the_map_shows_a_seeded_sample_of_at_most_map_points_rows():
    from pipelines.reporting._cache_sections import MAP_POINTS, map_sample

    assert np.array_equal(map_sample(MAP_POINTS, seed=0), np.arange(MAP_POINTS))
    shown = map_sample(3 * MAP_POINTS, seed=0)
    assert len(shown) == MAP_POINTS == len(np.unique(shown)) and np.all(np.diff(shown) > 0)
    assert np.array_equal(map_sample(3 * MAP_POINTS, seed=0), shown)
    assert not np.array_equal(map_sample(3 * MAP_POINTS, seed=1), shown)


def test_the_map_reads_the_features_of_the_sampled_ids_in_their_order(cache):
    from pipelines.reporting._cache_sections import _map_features

    X, _, ids = cache.load("toy", "embedding", split="test")
    order = np.random.default_rng(0).permutation(len(ids))[:25]
    chosen = pd.Series({"model": "toy", "layer": "embedding"})
    np.testing.assert_array_equal(_map_features(cache, chosen, ids[order].astype(str)), X[order])
    train_id = cache.ids[np.flatnonzero(cache.splits == "train")[0]]
    assert _map_features(cache, chosen, np.array([train_id])) is None


@pytest.mark.slow
def test_views_stream_the_same_way(tmp_path):
    """Trained on every view, folds grouped by sample, held-out samples scored on their plain
    view, test rows on their test-time views: streamed equals in memory for ridge."""
    path = write_cache(
        tmp_path / "c.h5", n_classes=3, n_per_class={"train": 1000, "test": 50},
        layers=(("embedding", 400, 0.4),), views=3, tta=2, view_noise=0.5, shards=True,
        logged=True, shard_size=256,
    )  # fmt: skip
    kwargs = dict(heads=["ridge"], cv=3, n_jobs=1, views="train", tta="mean-feature")
    streamed = fit(path, tmp_path / "small", memory="64MB", **kwargs).iloc[0]
    memory = fit(path, tmp_path / "large", memory="8GB", **kwargs).iloc[0]
    assert streamed["strategy"] == "exact, streamed Gram (9,000 rows)"
    assert memory["strategy"] == "in memory" and memory["n_refit"] == 9_000
    for column in ("cv_mean", "cv_std", "test_accuracy"):
        assert abs(streamed[column] - memory[column]) <= 1e-9, column
    assert streamed["params"] == memory["params"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--memory", "4XB"], "featurecache: error: --memory must be a size such as 4GB, 512MB "
         "or a number of bytes (at least 64MB). Got '4XB' instead."),
        (["--select-rows", "5"], "featurecache: error: --select-rows must be an int >= 100. "
         "Got 5 instead."),
    ],
)  # fmt: skip
def test_fit_command_refuses_a_bad_budget_and_writes_nothing(tmp_path, flags, message):
    path = write_cache(tmp_path / "c.h5")
    done = subprocess.run(
        [sys.executable, "-m", "featurecache", "fit", str(path), "--out", str(tmp_path / "r"),
         *flags], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == message
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_fixed_head_is_scored_streamed_as_in_memory(tmp_path):
    from featurecache.cache import StoredClassifier, write_classifier

    path = write_cache(
        tmp_path / "c.h5", n_classes=3, n_per_class={"train": 3_000, "test": 1_000},
        layers=(("embedding", 256, 0.3),), shards=True, logged=True, shard_size=1024,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    write_classifier(path, "toy", StoredClassifier(
        kind="zeroshot", layer="embedding", weight=rng.normal(size=(3, 256)), bias=np.zeros(3),
        class_names=("class_0", "class_1", "class_2"), normalize=True, scale=100.0,
        prompts=("a photo of a {}.",),
    ))  # fmt: skip
    streamed = fit(path, tmp_path / "small", heads=["zeroshot"], cv=3, memory="64MB").iloc[0]
    memory = fit(path, tmp_path / "large", heads=["zeroshot"], cv=3, memory="8GB").iloc[0]
    assert (streamed["strategy"], memory["strategy"]) == ("fixed, scored streamed", "in memory")
    assert streamed["n_select"] == memory["n_select"] == 9_000
    for column in ("cv_mean", "cv_std", "test_accuracy"):
        assert streamed[column] == memory[column]
    small = pd.read_csv(tmp_path / "small" / streamed["predictions_file"])
    large = pd.read_csv(tmp_path / "large" / memory["predictions_file"])
    pd.testing.assert_frame_equal(small, large)
