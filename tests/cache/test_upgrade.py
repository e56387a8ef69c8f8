"""Version-1 caches (tests/fixtures/v1, written by the format-1 code) are read as they were,
refused for writing with the fix, and `featurecache upgrade` rewrites them as version 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import featurecache.cache._upgrade as upgrade_module
from featurecache.app.cli import main
from featurecache.cache import FORMAT_VERSION, Store, cache_version, open_cache, upgrade
from featurecache.cache import _format as fmt
from featurecache.exceptions import CacheReadOnlyError
from featurecache.extraction._extract import check_cache

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v1"
NAMES = ("plain", "grown", "views", "arrays", "prelog")


def _copy(name: str, tmp_path: Path) -> Path:
    shutil.copy2(FIXTURES / f"{name}.h5", tmp_path / f"{name}.h5")
    if (FIXTURES / f"{name}.h5.d").exists():
        shutil.copytree(FIXTURES / f"{name}.h5.d", tmp_path / f"{name}.h5.d")
    return tmp_path / f"{name}.h5"


def _assert_reads_as_recorded(path: Path, name: str) -> None:
    """Every read equals what the version-1 reader returned (saved beside the fixture)."""
    expected = np.load(FIXTURES / f"{name}.expected.npz")
    cache = open_cache(path)
    assert cache.ids.tolist() == expected["ids"].tolist()
    assert cache.labels.tolist() == expected["labels"].tolist()
    assert cache.splits.tolist() == expected["splits"].tolist()
    assert cache.removed.tolist() == expected["removed"].tolist()
    seen = {"ids", "labels", "splits", "removed"}
    for model in cache.models:
        failures = [f"{i}\t{r}" for i, r in cache.failures(model)]
        assert failures == expected[f"{model}/failures"].tolist()
        seen.add(f"{model}/failures")
        for layer in cache.layers(model):
            X, rows = cache.load_rows(model, layer)
            assert X.tobytes() == expected[f"{model}/{layer}/X"].tobytes(), layer
            assert rows.tolist() == expected[f"{model}/{layer}/rows"].tolist()
            seen |= {f"{model}/{layer}/X", f"{model}/{layer}/rows"}
            sets = cache.views(model)
            for kind in ("augment", "tta"):
                if sets is not None and sets.count(kind):
                    V, rows = cache.load_views(model, layer, kind)
                    assert V.tobytes() == expected[f"{model}/{layer}/{kind}/X"].tobytes()
                    assert rows.tolist() == expected[f"{model}/{layer}/{kind}/rows"].tolist()
                    seen |= {f"{model}/{layer}/{kind}/X", f"{model}/{layer}/{kind}/rows"}
    assert seen == set(expected.files)  # nothing recorded went unread


@pytest.mark.parametrize("name", NAMES)
def test_a_version_1_cache_is_read_as_before_refused_for_writing_then_upgraded(
    name, tmp_path, capsys
):
    path = _copy(name, tmp_path)
    assert cache_version(path) == 1
    _assert_reads_as_recorded(path, name)
    fix = rf"run `featurecache upgrade {path}` to rewrite it as version 2, then run this command"
    with pytest.raises(CacheReadOnlyError, match=rf"has format version 1, .*; {fix}"):
        check_cache(path)  # what `extract` checks first
    model = open_cache(path).models[0]
    with pytest.raises(CacheReadOnlyError, match=fix):
        Store(path).compact(model)

    assert main(["upgrade", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: upgraded to version {FORMAT_VERSION}\n"
    assert cache_version(path) == FORMAT_VERSION
    _assert_reads_as_recorded(path, name)
    check_cache(path)  # writable now
    files = sorted(p.name for p in fmt.model_dir(path, model).rglob("*.h5") if "p-" in str(p))
    assert len(files) == 1, files  # one file per pass: the shards compacted into a segment
    cache = open_cache(path)
    with h5py.File(path, "r") as f:  # plain h5py reads the rebuilt index
        for layer in cache.layers(model):
            X, rows = cache.load_rows(model, layer)
            plain = f[fmt.features_path(model, layer)][:][rows].astype(np.float32)
            assert plain.tobytes() == X.tobytes()

    assert main(["upgrade", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: already version {FORMAT_VERSION}; nothing to do\n"
    _assert_reads_as_recorded(path, name)


@pytest.mark.parametrize("name", ["grown", "arrays"])
def test_an_upgrade_cut_short_reads_the_same_and_the_next_one_finishes(name, tmp_path, monkeypatch):
    """Cut before the last step (the sample table's rewrite, or the index's rebuild): the
    cache reads as before, and running the upgrade again completes it."""
    path = _copy(name, tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    if name == "grown":
        monkeypatch.setattr(upgrade_module, "atomic_write", crash)  # the table's rewrite
    else:
        monkeypatch.setattr(Store, "rebuild_index", crash)
    with pytest.raises(KeyboardInterrupt):
        upgrade(path)
    _assert_reads_as_recorded(path, name)
    monkeypatch.undo()
    upgrade(path)
    assert cache_version(path) == FORMAT_VERSION
    assert Store(path).index_is_current()
    _assert_reads_as_recorded(path, name)
    assert upgrade(path) is False


def test_upgrade_of_a_missing_cache_says_so(tmp_path, capsys):
    missing = tmp_path / "none.h5"
    assert main(["upgrade", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"featurecache: error: CACHE must be an existing featurecache cache; '{missing}' does "
        "not exist; pass the CACHE.h5 index written by `featurecache extract`.\n"
    )
