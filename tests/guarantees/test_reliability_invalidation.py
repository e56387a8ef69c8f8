"""Item 7: the invalidation matrix. What changes the numbers is a miss; nothing else is.

Under the same model name, a change of weights, pooling, preprocessing, image size or
dtype is refused with :class:`ConfigMismatchError` naming the changed key, and writes
nothing; under a new ``name`` it is a miss that computes its own features. A new layer
is a miss for that layer only. Batch size, workers, device, shard size and the order of
the CSV manifest are hits: no forward pass, no file touched, and a fresh extraction with
that setting agrees with the cached numbers (so the hit is not stale).
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from _workers import SETTINGS, make_images, one_torch_thread, read_layers, run_options, snapshot

from featurecache import extract
from featurecache.exceptions import ConfigMismatchError
from featurecache.extraction import _extract

RUN = {"shard_size": 4, "batch_size": 4}
BASE = {**SETTINGS, "layers": ["layer1"], "options": run_options(**RUN)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A CSV manifest of 8 images and a cache of layer1 extracted from it."""
    root = tmp_path_factory.mktemp("base")
    make_images(root, n_per_class=4)
    rows = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    table = pd.DataFrame({"path": rows, "label": [r.split("/")[0] for r in rows]})
    table.to_csv(root / "manifest.csv", index=False)
    table.sample(frac=1.0, random_state=3).to_csv(root / "shuffled.csv", index=False)
    cache = root / "cache" / "c.h5"
    cache.parent.mkdir()
    extract(root / "manifest.csv", cache, **BASE)
    weights = root / "other-weights.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    return root, cache, weights


@pytest.fixture
def cache(base, tmp_path):
    shutil.copytree(base[1].parent, tmp_path / "cache")
    return tmp_path / "cache" / "c.h5"


def _bicubic(monkeypatch) -> None:
    """Simulate a changed preprocessing (as a new preset or library version would)."""
    original = _extract.load_backbone

    def load_backbone(*args, **kwargs):
        backbone = original(*args, **kwargs)
        preprocess = dataclasses.replace(backbone.preprocess, interpolation="bicubic")
        return dataclasses.replace(backbone, preprocess=preprocess)

    monkeypatch.setattr(_extract, "load_backbone", load_backbone)


MISSES = {
    "weights": ({"weights": "WEIGHTS"}, r"weights_sha256: cached [0-9a-f]{64}, requested [0-9a-f]{64}"),
    "pooling": ({"pool": "avgmax"}, r"pooling: cached avg, requested avgmax"),
    "preprocessing": ({}, r"preprocessing.interpolation: cached bilinear, requested bicubic"),
    "image size": ({"image_size": 40}, r"preprocessing.crop_size: cached 32, requested 40; preprocessing.resize_size: cached 37, requested 46"),
    "store dtype": ({"store_dtype": "float16"}, r"dtype: cached float32, requested float16"),
    "compute dtype": ({"dtype": "bfloat16"}, r"compute_dtype: cached float32, requested bfloat16"),
}  # fmt: skip


@pytest.mark.parametrize("change", list(MISSES))
def test_a_change_of_the_numbers_is_refused_or_a_miss(base, cache, monkeypatch, change):
    root, _, weights = base
    options, message = MISSES[change]
    options = {k: str(weights) if v == "WEIGHTS" else v for k, v in options.items()}
    if change == "preprocessing":
        _bicubic(monkeypatch)
    before = snapshot(cache.parent)
    with pytest.raises(ConfigMismatchError, match=rf"model 'resnet18' in .*\({message}"):
        extract(root / "manifest.csv", cache, **{**BASE, **options})
    assert snapshot(cache.parent) == before

    result = extract(root / "manifest.csv", cache, name="variant", **{**BASE, **options})
    assert result.shards_written == 2 and result.computed == ("layer1",)  # a miss
    (cached,) = (X for X, _ in read_layers(cache, "resnet18", ["layer1"]).values())
    (variant,) = (X for X, _ in read_layers(cache, "variant", ["layer1"]).values())
    assert variant.dtype != cached.dtype or not np.array_equal(variant, cached)


def test_a_new_layer_is_a_miss_for_that_layer_only(base, cache):
    root, _, _ = base
    before = snapshot(cache.parent)
    result = extract(root / "manifest.csv", cache, **{**BASE, "layers": ["layer1", "layer2"]})
    assert result.computed == ("layer2",) and result.shards_written == 2
    after = snapshot(cache.parent)
    assert all(after[k] == v for k, v in before.items() if "shard-" in k), "layer1 rewritten"


HITS = {
    "batch size": {"batch_size": 3},
    "workers": {"workers": 1},
    "device": {"device": "auto"},  # resolves to the same CPU here: see docs/reliability.md
    "shard size": {"shard_size": 3},
    "file order": {},
}


@pytest.mark.parametrize("change", list(HITS))
def test_an_execution_setting_is_a_hit(base, cache, forward_calls, tmp_path, change):
    root, _, _ = base
    manifest = root / ("shuffled.csv" if change == "file order" else "manifest.csv")
    arguments = {**BASE, "options": run_options(**{**RUN, **HITS[change]})}
    before = snapshot(cache.parent)
    result = extract(manifest, cache, **arguments)
    assert result.hit and not forward_calls and result.n_ok == 8
    assert snapshot(cache.parent) == before

    fresh = tmp_path / "fresh.h5"  # the same setting on an empty cache agrees with the hit
    extract(manifest, fresh, **arguments)
    (cached,) = (X for X, _ in read_layers(cache, "resnet18", ["layer1"]).values())
    (recomputed,) = (X for X, _ in read_layers(fresh, "resnet18", ["layer1"]).values())
    np.testing.assert_allclose(recomputed, cached, rtol=1e-5, atol=1e-6)
