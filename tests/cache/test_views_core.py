"""Extra views in the cache core (issue 14): the key, the layout and the reader, without torch."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import h5py
import numpy as np
import pytest
from _synthetic import write_cache

from featurecache.cache import (
    FeatureConfig,
    SampleTable,
    ViewSets,
    check_config,
    open_cache,
    write_arrays,
)
from featurecache.cache import _format as fmt
from featurecache.cache._folder import FolderView
from featurecache.exceptions import (
    CacheCorruptError,
    ConfigMismatchError,
    InvalidArgumentError,
)

PLAIN = FeatureConfig(
    backbone="toy",
    weights_sha256="ab" * 32,
    preprocessing={"crop_size": 8},
    pooling="avg",
    dtype="float32",
    compute_dtype="float32",
)
VIEWS = {"k": 4, "augment": "flip", "tta_k": 0, "tta": "", "seed": 0}

LAYOUTS = {
    "arrays": {},  # write_arrays: one segment
    "shards": {"shards": True, "shard_size": 16},  # shards committed one by one
}


def test_views_are_left_out_of_the_key_when_empty():
    # Every cache written before views existed keeps its digest.
    assert "views" not in PLAIN.key()
    with_views = dataclasses.replace(PLAIN, views=VIEWS)
    assert with_views.key()["views"] == VIEWS
    assert with_views.digest() != PLAIN.digest()
    assert FeatureConfig.from_dict(with_views.to_dict()) == with_views
    assert FeatureConfig.from_dict(with_views.attrs()) == with_views  # views as JSON text


def test_the_digest_of_a_plain_config_is_unchanged():
    key = {
        "backbone": "toy",
        "weights_sha256": "ab" * 32,
        "preprocessing": {"crop_size": 8},
        "pooling": "avg",
        "dtype": "float32",
        "compute_dtype": "float32",
        "format_version": fmt.FEATURES_FORMAT_VERSION,
    }

    assert PLAIN.digest() == hashlib.sha256(fmt.canonical_json(key).encode()).hexdigest()


def test_a_mismatch_of_views_is_named():
    cached = dataclasses.replace(PLAIN, views=VIEWS)
    requested = dataclasses.replace(PLAIN, views={**VIEWS, "augment": "flip,jitter:0.2"})
    message = (
        "model 'toy' in 'c.h5' was extracted with another configuration (views.augment: "
        "cached flip, requested flip,jitter:0.2); pass another model name (name=, or --name) "
        "to store this one beside it, or use a new cache."
    )
    with pytest.raises(ConfigMismatchError, match=re.escape(message)):
        check_config("toy", cached, requested, "c.h5")
    with pytest.raises(
        ConfigMismatchError, match=re.escape("views.k: cached (unset), requested 4")
    ):
        check_config("toy", PLAIN, dataclasses.replace(PLAIN, views=VIEWS), "c.h5")


def test_view_sets_read_the_mapping():
    assert PLAIN.view_sets() is None
    sets = dataclasses.replace(PLAIN, views={**VIEWS, "tta_k": 2, "tta": "flip"}).view_sets()
    assert sets == ViewSets(k=4, augment="flip", tta_k=2, tta="flip", seed=0)
    assert (sets.count("augment"), sets.count("tta")) == (4, 2)
    assert ViewSets.from_mapping(sets.to_dict()) == sets


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_views_gives_every_view_of_the_train_rows(tmp_path, layout):
    path = write_cache(tmp_path / "c.h5", views=4, tta=3, failed_rows=[3, 40], **LAYOUTS[layout])
    cache = open_cache(path)
    assert isinstance(cache._view, FolderView)  # every layout written today has a folder
    assert cache.views("toy") == ViewSets(k=4, augment="flip", tta_k=3, tta="flip", seed=0)
    plain, plain_rows = cache.load_rows("toy", "informative")
    by_row = dict(zip(plain_rows.tolist(), plain, strict=True))

    X, rows = cache.load_views("toy", "informative")
    expected = np.flatnonzero(np.isin(cache.splits, ["train", "val"]))
    expected = expected[~np.isin(expected, [3, 40])]
    np.testing.assert_array_equal(rows, expected)
    assert X.shape == (len(expected), 4, 16) and X.dtype == np.float32
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(X[:, 0], np.stack([by_row[r] for r in rows.tolist()]))
    assert not np.array_equal(X[:, 1], X[:, 0])  # the other views differ from the plain one

    T, tta_rows = cache.load_views("toy", "informative", kind="tta")
    np.testing.assert_array_equal(tta_rows, plain_rows)  # every split, failed rows left out
    assert T.shape == (len(plain_rows), 3, 16)
    np.testing.assert_array_equal(T[:, 0], plain)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_plain_h5py_reads_views_from_the_index(tmp_path, layout):
    path = write_cache(tmp_path / "c.h5", views=3, **LAYOUTS[layout])
    cache = open_cache(path)
    X, rows = cache.load_views("toy", "embedding")
    with h5py.File(path, "r") as f:
        views = f[fmt.views_path("augment", "toy", "embedding")][:]
        status = f[fmt.view_status_path("augment", "toy", "embedding")][:]
        assert views.shape == (cache.n_samples, 3, 12)
        assert fmt.views_path("tta", "toy", "embedding") not in f
    np.testing.assert_array_equal(views[rows], X)
    test = cache.splits == "test"
    assert (status[test] == fmt.STATUS_PENDING).all() and np.isnan(views[test]).all()
    assert (status[~test] == fmt.STATUS_OK).all()


def test_a_model_without_views_is_refused_with_the_fix(tmp_path):
    path = write_cache(tmp_path / "c.h5")
    cache = open_cache(path)
    assert cache.views("toy") is None
    message = (
        f"model 'toy' in cache {str(path)!r} has no augment views; extract them under another "
        "model name with `featurecache extract DATA --cache c.h5 --model BACKBONE --name NAME "
        "--views K --augment SPEC`."
    )
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        cache.load_views("toy", "embedding")
    views_only = write_cache(tmp_path / "v.h5", views=2)
    with pytest.raises(InvalidArgumentError, match=re.escape("has no tta views; extract")):
        open_cache(views_only).load_views("toy", "embedding", kind="tta")
    message = (
        "The 'kind' parameter of load_views must be one of 'augment', 'tta'. Got 'test' instead."
    )
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        open_cache(views_only).load_views("toy", "embedding", kind="test")


def test_views_damaged_on_disk_are_refused(tmp_path):
    path = write_cache(tmp_path / "c.h5", views=2, shards=True, shard_size=16, logged=True)
    log = fmt.commit_log(path, "toy")
    lines = log.read_text().splitlines()
    record = json.loads(lines[0])
    record["views"]["augment"]["embedding"] = "0" * 64
    log.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with pytest.raises(CacheCorruptError, match="the SHA-256 of the augment views of layer"):
        open_cache(path).load_views("toy", "embedding")


def _table(n=6):
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    splits = np.array(["train"] * (n - 2) + ["test"] * 2, dtype=object)
    return SampleTable(ids, np.arange(n) % 2, splits, ("a", "b"), source="synthetic")


def test_write_arrays_checks_views_against_the_features_and_config(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    V = np.repeat(X[:, None], 3, axis=1)
    config = dataclasses.replace(PLAIN, views={**VIEWS, "k": 3})
    message = (
        "views['toy']['e']['augment'] must have shape (6, 2, 2) (n_samples, the config's k=2, "
        "n_features); got (6, 3, 2). Set configs['toy'].views to match."
    )
    two = dataclasses.replace(PLAIN, views={**VIEWS, "k": 2})
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        write_arrays(tmp_path / "a.h5", _table(), {"toy": {"e": X}}, {"toy": two},
                     views={"toy": {"e": {"augment": V}}})  # fmt: skip
    bad = V.copy()
    bad[0, 0] += 1
    with pytest.raises(InvalidArgumentError, match="view 0 must equal the plain features"):
        write_arrays(tmp_path / "b.h5", _table(), {"toy": {"e": X}}, {"toy": config},
                     views={"toy": {"e": {"augment": bad}}})  # fmt: skip
    V[4:] = np.nan  # test rows have no training views
    path = write_arrays(tmp_path / "c.h5", _table(), {"toy": {"e": X}}, {"toy": config},
                        views={"toy": {"e": {"augment": V}}})  # fmt: skip
    got, rows = open_cache(path).load_views("toy", "e")
    np.testing.assert_array_equal(rows, [0, 1, 2, 3])
    np.testing.assert_array_equal(got, V[:4])
