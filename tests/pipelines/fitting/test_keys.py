"""Result keys (``pipelines.fitting._keys``): the SHA-256 of the canonical JSON of what a result
depends on, and results folders whose feature sets were keyed in the earlier spelling."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from _synthetic import write_cache

import pipelines
import pipelines.fitting._fit as fit_module
from pipelines.fitting._keys import Key
from pipelines.results._results import ResultsFolder

LAYERS = (("noise", 8, 0.0), ("informative", 16, 3.0))
SET = "noise+informative"


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fit(cache, out, **kwargs):
    return pipelines.fit(
        cache, out, heads=["logreg"], grid={"logreg": {"C": [1.0]}}, cv=3, n_jobs=1,
        combine=[SET], **kwargs,
    )  # fmt: skip


def _set_configs(cache_path) -> list:
    """What a set's configuration digest hashes, computed here from the cache's layers."""
    cache = pipelines.open_cache(cache_path)
    parts = [cache.entry("toy", layer).provenance for layer in SET.split("+")]
    configs = [
        ["toy", layer, p.get("config_digest") or json.dumps(p, sort_keys=True, default=str)]
        for layer, p in zip(SET.split("+"), parts, strict=True)
    ]
    return [configs, None]


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("keys") / "c.h5", layers=LAYERS)


def test_a_key_is_the_sha256_of_the_canonical_json_of_its_fields(cache_path, tmp_path):
    _fit(cache_path, tmp_path / "r")
    records = {r["layer"]: r for r in ResultsFolder(tmp_path / "r").records()}
    assert sorted(records) == sorted(["noise", "informative", SET])
    for record in records.values():
        assert record["key"] == _sha(_canonical(record["key_fields"]))
    # A feature set's configuration digest is canonical too, not json.dumps's default spelling.
    features = records[SET]["key_fields"]["features"]
    assert features == _sha(_canonical(_set_configs(cache_path)))
    assert features != _sha(json.dumps(_set_configs(cache_path)))


def test_a_folder_with_the_earlier_set_digest_is_reused_then_refitted_for_real_changes(
    cache_path, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "r"
    _fit(cache_path, out)
    path = ResultsFolder(out).path("combos", "toy", SET, "logreg")
    record = json.loads(path.read_text())
    earlier = {**record["key_fields"], "features": _sha(json.dumps(_set_configs(cache_path)))}
    assert earlier != record["key_fields"]
    record["key_fields"], record["key"] = earlier, _sha(_canonical(earlier))
    path.write_text(json.dumps(record))  # as the earlier featurecache wrote it
    heads = sorted(out.glob("heads/*/*/*.joblib"))
    stamps = {p: p.stat().st_mtime_ns for p in heads}
    calls = []
    original = fit_module.search_heads

    def counting(pending, *args, **kwargs):
        calls.append([h.name for h in pending])
        return original(pending, *args, **kwargs)

    monkeypatch.setattr(fit_module, "search_heads", counting)
    with caplog.at_level(logging.WARNING, logger="pipelines.fitting._fit"):
        _fit(cache_path, out)
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in heads} == stamps
    assert caplog.records == []
    assert json.loads(path.read_text())["key"] == record["key"]  # left as it was
    # A real change refits the set too, and names that change only.
    with caplog.at_level(logging.WARNING, logger="pipelines.fitting._fit"):
        _fit(cache_path, out, seed=1)
    assert calls == [["logreg"]] * 3
    assert [r.getMessage() for r in caplog.records] == [
        "3 heads refitted: the seed changed since they were fitted"
    ]


def test_a_key_extended_out_of_core_keeps_its_earlier_spelling():
    key = Key.of({"a": 1, "features": "new"}, [{"a": 1, "features": "old"}])
    wider = key.extended({"memory": 64})
    assert wider.accepted == (
        _sha(_canonical({"a": 1, "features": "new", "memory": 64})),
        _sha(_canonical({"a": 1, "features": "old", "memory": 64})),
    )
    assert Key.of({"b": [1, 2]}).accepted == (_sha('{"b":[1,2]}'),)
