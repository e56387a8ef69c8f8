"""Heads are keyed on the exact features they were fitted on (issue 19, example 4).

A results folder records per combination the digest of the feature rows it read
(:meth:`featurecache.cache.Cache.features_digest`, built from the commit log's per-shard
SHA-256 and the rows used). ``fit`` refits whatever changed and says why in one line per
reason; unchanged features are reused byte for byte.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from _synthetic import write_cache
from _workers import SETTINGS, make_images, one_torch_thread

import pipelines
from featurecache.cache import _format as fmt
from featurecache.cache import open_cache
from pipelines.results._results import ResultsFolder, load_head

FAST = {"logreg": {"C": [0.01, 1.0]}}
MODEL, LAYER = "resnet18", "embedding"


def _fit(cache, out, **kwargs):
    options = {"heads": ["logreg"], "grid": FAST, "cv": 2, "n_jobs": 1, **kwargs}
    return pipelines.fit(cache, out, **options)


def _images(root, seed):
    """12 train and 4 test images per class: the same names whatever ``seed`` draws."""
    for split, n in (("train", 12), ("test", 4)):
        make_images(root / split, n_per_class=n, seed=seed + (split == "test"))
    return root


def _extract(data, cache):
    from featurecache import extract

    with one_torch_thread():
        extract(data, cache, **{**SETTINGS, "layers": ["layer4", LAYER]})


def _head(results, layer=LAYER):
    return ResultsFolder(results).path("heads", MODEL, layer, "logreg")


def _proba(results, cache, layer=LAYER):
    X, _, _ = open_cache(cache).load(MODEL, layer)
    return load_head(_head(results, layer)).estimator.predict_proba(X)


@pytest.mark.slow
def test_features_extracted_again_from_other_pixels_are_refitted(tmp_path, caplog):
    data, cache, results = tmp_path / "data", tmp_path / "c.h5", tmp_path / "results"
    _extract(_images(data, seed=0), cache)
    _fit(cache, results)
    heads = {layer: _head(results, layer).read_bytes() for layer in ("layer4", LAYER)}
    stat = _head(results).stat()

    # Unchanged features: every head reused, byte for byte and untouched.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipelines.fitting._fit"):
        _fit(cache, results)
    assert _head(results).stat().st_mtime_ns == stat.st_mtime_ns
    assert {layer: _head(results, layer).read_bytes() for layer in heads} == heads
    assert "refitted" not in caplog.text

    # The same names, other pixels, extracted into a new cache at the same path: the content
    # digests change the sample table, so every combination is fitted again, said in one line.
    shutil.rmtree(data)
    shutil.rmtree(fmt.data_dir(cache))
    cache.unlink()
    _extract(_images(data, seed=7), cache)
    assert (
        open_cache(cache).samples_digest
        != json.loads((results / "run.json").read_text())["samples_digest"]
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _fit(cache, results)
    assert "changed since" in caplog.text and "every combination is fitted again" in caplog.text
    for layer in ("layer4", LAYER):
        assert _head(results, layer).read_bytes() != heads[layer], layer
        record = ResultsFolder(results).record(MODEL, layer, "logreg")
        rows = np.flatnonzero(open_cache(cache).labels >= 0)
        assert record["features_digest"] == open_cache(cache).features_digest(MODEL, layer, rows)

    # The refitted heads are what a fresh fit of the new features gives.
    _fit(cache, tmp_path / "fresh")
    for layer in ("layer4", LAYER):
        assert np.array_equal(
            _proba(results, cache, layer), _proba(tmp_path / "fresh", cache, layer)
        ), layer


def test_digest_follows_the_rows_and_the_numbers_not_the_files(tmp_path):
    """Two caches of the same numbers agree; the rows used and the numbers change it."""
    folder = open_cache(write_cache(tmp_path / "a.h5", shards=True, logged=True, shard_size=16))
    again = open_cache(write_cache(tmp_path / "b.h5", shards=True, logged=True, shard_size=16))
    other = open_cache(write_cache(tmp_path / "d.h5", shards=True, logged=True, seed=1))
    rows = np.arange(folder.n_samples)
    digest = folder.features_digest("toy", "noise", rows)
    assert again.features_digest("toy", "noise", rows) == digest
    assert folder.features_digest("toy", "noise", rows > -1) == digest  # a mask, too
    assert folder.features_digest("toy", "noise", rows[::-1]) == digest  # in any order
    assert folder.features_digest("toy", "noise", rows[:-1]) != digest
    assert folder.features_digest("toy", "informative", rows) != digest
    assert other.features_digest("toy", "noise", rows) != digest


def test_digest_reads_no_feature(tmp_path, monkeypatch):
    """Only the commit log is read: a shard file made unreadable does not matter."""
    cache = write_cache(tmp_path / "c.h5", shards=True, logged=True, shard_size=16)
    reader = open_cache(cache)
    rows = np.arange(reader.n_samples)
    before = reader.features_digest("toy", "noise", rows)
    for shard in fmt.data_dir(cache).glob(f"*/{fmt.SHARD_GLOB}"):
        shard.write_bytes(b"")
    assert open_cache(cache).features_digest("toy", "noise", rows) == before


def test_results_of_an_earlier_version_are_refitted_once_and_say_so(tmp_path, caplog):
    cache = write_cache(tmp_path / "c.h5", layers=[("embedding", 8, 2.0)])
    results = tmp_path / "results"
    _fit(cache, results)
    record_path = ResultsFolder(results).path("combos", "toy", "embedding", "logreg")
    record = json.loads(record_path.read_text())
    del record["key_fields"], record["features_digest"]
    record["key"] = "0" * 64  # a key of the earlier scheme
    record_path.write_text(json.dumps(record))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipelines.fitting._fit"):
        _fit(cache, results)
        _fit(cache, results)
    assert [r.getMessage() for r in caplog.records] == [
        "1 head refitted: they were fitted by an earlier featurecache, which did not record "
        "the features they read"
    ]


def test_a_changed_setting_is_named(tmp_path, caplog):
    cache = write_cache(tmp_path / "c.h5", layers=[("a", 8, 2.0), ("b", 8, 2.0)])
    _fit(cache, tmp_path / "r")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipelines.fitting._fit"):
        _fit(cache, tmp_path / "r", seed=3)
    assert [r.getMessage() for r in caplog.records] == [
        "2 heads refitted: the seed changed since they were fitted"
    ]


@pytest.mark.slow
def test_features_changed_under_the_same_samples_are_refitted(tmp_path, caplog, monkeypatch):
    """Only the features differ (same files, same configuration, a forward pass that shifts
    its outputs): the sample table cannot tell, the features digest does."""
    from featurecache.engines._runner import ShardRunner

    data, cache, results = tmp_path / "data", tmp_path / "c.h5", tmp_path / "results"
    _extract(_images(data, seed=0), cache)
    _fit(cache, results)
    heads = {layer: _head(results, layer).read_bytes() for layer in ("layer4", LAYER)}
    samples = open_cache(cache).samples_digest

    original = ShardRunner._forward

    def shifted(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return {name: value + 1.0 for name, value in out.items()}

    monkeypatch.setattr(ShardRunner, "_forward", shifted)
    shutil.rmtree(fmt.data_dir(cache) / MODEL)
    cache.unlink()
    _extract(data, cache)
    monkeypatch.undo()
    assert open_cache(cache).samples_digest == samples, "the same files: the same sample table"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipelines.fitting._fit"):
        _fit(cache, results)
    lines = [r.getMessage() for r in caplog.records if "refitted" in r.getMessage()]
    assert sorted(lines) == [
        f"1 head refitted: the features of {MODEL}/{layer} changed since they were fitted"
        for layer in ("embedding", "layer4")
    ]
    for layer in ("layer4", LAYER):
        assert _head(results, layer).read_bytes() != heads[layer], layer
    _fit(cache, tmp_path / "fresh")
    for layer in ("layer4", LAYER):
        assert np.array_equal(
            _proba(results, cache, layer), _proba(tmp_path / "fresh", cache, layer)
        ), layer
