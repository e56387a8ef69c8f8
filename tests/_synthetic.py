"""Write small synthetic caches through the cache core (``featurecache.cache``), without torch.

Shared by the test suites: ``write_cache(tmp_path / "cache.h5")`` writes a cache through
:func:`featurecache.cache.write_arrays` (the layout ``extract`` writes: sample table, config,
commit log, segment, derived index); ``write_cache(..., shards=True)`` commits shard files
one by one through :class:`featurecache.cache.Store`, as a run does before it compacts them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from featurecache.cache import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    DataSource,
    FeatureConfig,
    SampleTable,
    ShardViews,
    Store,
    ViewSets,
    samples_digest,
    write_arrays,
)

__all__ = ["LAYERS", "LAYOUT", "write_cache", "write_folder_cache", "samples_digest"]

_REASON = "unreadable image"

# (name, n_features, signal): signal 0 is pure noise; larger separates the classes more.
LAYERS = (("noise", 8, 0.0), ("informative", 16, 3.0), ("embedding", 12, 1.5))


def write_cache(
    path: str | os.PathLike,
    *,
    models: Sequence[str] = ("toy",),
    layers: Sequence[tuple[str, int, float]] = LAYERS,
    n_classes: int = 3,
    n_per_class: Mapping[str, int] | None = None,
    seed: int = 0,
    dtype: str = "float32",
    shards: bool = False,
    shard_size: int = 32,
    failed_rows: Sequence[int] = (),
    status: bool = True,
    shuffle_test_labels: bool = False,
    class_names: Sequence[str] | None = None,
    views: int = 0,
    tta: int = 0,
    view_noise: float = 0.1,
    logged: bool = True,
) -> Path:
    """Write a cache and return its path.

    Rows of each split are drawn per class (``n_per_class``, default 20 train and 10
    test per class), shuffled, and given ids ``s00000``…  Each layer's features
    are ``signal * centroid[label] + N(0, 1)``; the models differ only by seed.
    ``failed_rows`` get status 2 and NaN features.  ``shuffle_test_labels``
    permutes the labels among test rows after the features were drawn, so test
    labels carry no information.

    ``views=K`` adds K training views per train and val row (view 0 the plain features,
    views 1..K-1 the plain features plus ``view_noise * N(0, 1)``; test rows have none),
    ``tta=T`` T test-time views per row of every split, made the same way; the models'
    configs record them (augment spec ``flip``, test-time spec ``flip``, seed 0).
    ``logged`` (with ``shards``) commits each shard to the model's log, as a stage-1 run
    does; without it the shard files are written but not committed (readers do not see them).
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    counts = dict(n_per_class or {"train": 20, "test": 10})
    labels, splits = [], []
    for split, n in counts.items():
        for k in range(n_classes):
            labels += [k] * n
            splits += [split] * n
    order = rng.permutation(len(labels))
    y = np.asarray(labels, dtype=np.int64)[order]
    split = np.asarray(splits, dtype=object)[order]
    n_samples = len(y)
    ids = np.array([f"s{i:05d}" for i in range(n_samples)], dtype=object)
    names = list(class_names or [f"class_{k}" for k in range(n_classes)])

    features: dict[str, dict[str, np.ndarray]] = {}
    for m, model in enumerate(models):
        model_rng = np.random.default_rng(seed + 1000 * (m + 1))
        features[model] = {}
        for name, n_features, signal in layers:
            centroids = model_rng.normal(size=(n_classes, n_features))
            X = signal * centroids[y] + model_rng.normal(size=(n_samples, n_features))
            X = X.astype(dtype)
            X[list(failed_rows)] = np.nan
            features[model][name] = X
    if shuffle_test_labels:
        test = np.flatnonzero(split == "test")
        y[test] = y[rng.permutation(test)]
    state = np.ones(n_samples, dtype=np.int8)
    state[list(failed_rows)] = 2

    state = np.full(n_samples, STATUS_OK, dtype=np.int8)
    state[list(failed_rows)] = STATUS_FAILED
    samples = SampleTable(ids, y, split, tuple(names), source="synthetic")
    configs = {model: _config(model, dtype, views, tta) for model in models}
    extra = _views(features, split, views, tta, view_noise, seed) if views or tta else None
    attrs = {name: _layer_attrs(name, i, len(layers)) for i, (name, _, _) in enumerate(layers)}
    if shards:
        _write_sharded(path, samples, features, configs, attrs, state, shard_size, extra, logged)
        return path
    write_arrays(
        path,
        samples,
        features,
        configs,
        layer_attrs=dict.fromkeys(models, attrs),
        status=dict.fromkeys(models, state) if status else None,
        failures={m: [(int(r), _REASON) for r in sorted(failed_rows)] for m in models},
        views=extra,
    )
    return path


def _views(features, split, k, t, noise, seed) -> dict:
    """``views[model][layer][kind]``: view 0 plain, the others noisy copies; NaN where none."""
    rng = np.random.default_rng(seed + 7)
    out: dict = {}
    for model, layers in features.items():
        out[model] = {}
        for layer, X in layers.items():
            kinds = {}
            for kind, count, rows in (
                ("augment", k, np.isin(split, ["train", "val"])),
                ("tta", t, np.ones(len(X), bool)),
            ):
                if not count:
                    continue
                V = X[:, None, :] + noise * rng.normal(size=(X.shape[0], count, X.shape[1]))
                V = V.astype(X.dtype)
                V[:, 0] = X
                V[~rows] = np.nan
                kinds[kind] = V
            out[model][layer] = kinds
    return out


def _view_status(values: np.ndarray, state: np.ndarray) -> np.ndarray:
    status = np.where(np.isfinite(values).all(axis=2), STATUS_OK, STATUS_PENDING).astype(np.int8)
    status[state == STATUS_FAILED] = STATUS_FAILED
    return status


def _config(model: str, dtype: str, views: int = 0, tta: int = 0) -> FeatureConfig:
    sets = ViewSets(k=views, augment="flip" if views else "", tta_k=tta, tta="flip" if tta else "")
    return FeatureConfig(
        backbone=model,
        weights="none",
        weights_sha256=hashlib.sha256(model.encode()).hexdigest(),
        preprocessing={"resize_size": 32, "crop_size": 32, "mean": [0.5], "std": [0.5]},
        pooling="avg",
        dtype=dtype,
        compute_dtype="float32",
        views=sets.to_dict() if views or tta else {},
    )


def _layer_attrs(name: str, index: int, n_layers: int) -> dict:
    return {
        "depth": 1.0 if name == "embedding" else (index + 1) / (n_layers + 1),
        "depth_index": index,
        "raw_shape": np.array([4, 2, 2], dtype=np.int64),
        "kind": "map",
        "pooling_applied": "avg",
    }


def _write_sharded(
    path, samples, features, configs, attrs, state, shard_size, views, logged
) -> None:
    store = Store(path)
    store.create_samples(samples, shard_size)
    provenance = {"torch_version": "synthetic", "torchvision_version": "synthetic"}
    for model, by_layer in features.items():
        store.register_model(model, configs[model])
        for shard, start in enumerate(range(0, len(samples), shard_size)):
            stop = min(len(samples), start + shard_size)
            status = state[start:stop]
            reasons = [_REASON if s == STATUS_FAILED else "" for s in status]
            values = {name: X[start:stop] for name, X in by_layer.items()}
            extra = {}
            for kind in ("augment", "tta"):
                chosen = {
                    name: kinds[kind][start:stop]
                    for name, kinds in (views or {}).get(model, {}).items()
                    if kind in kinds
                }
                if chosen:
                    first = next(iter(chosen.values()))
                    extra[kind] = ShardViews(_view_status(first, status), chosen)
            meta = store.write_shard(
                model, shard, start, status, reasons, values, attrs, configs[model], provenance,
                views=extra,
            )  # fmt: skip
            if logged:
                store.publish(model, [meta])
    store.rebuild_index()


# Two backbones of different depth whose layer names differ (but for the embedding).
LAYOUT = {
    "shallow": [("stage1", 0.3, 0.2), ("stage2", 0.6, 0.7), ("embedding", 1.0, 0.5)],
    "deep": [("blocks.2", 0.2, 0.1), ("blocks.7", 0.5, 0.4), ("blocks.11", 0.8, 0.8),
             ("embedding", 1.0, 0.6)],
}  # fmt: skip


def write_folder_cache(root, n_train=20, n_test=12, n_classes=3):
    """A cache of a folder dataset, two backbones with different layer names (:data:`LAYOUT`):
    every id is a PNG under ``root/images``; the classes overlap, so heads make mistakes."""
    rng = np.random.default_rng(0)
    y = np.concatenate([np.repeat(np.arange(n_classes), n_train),
                        np.repeat(np.arange(n_classes), n_test)])  # fmt: skip
    split = np.array(["train"] * (n_train * n_classes) + ["test"] * (n_test * n_classes), object)
    images = root / "images"
    ids = []
    for i, label in enumerate(y):
        name = f"c{label}/img{i:04d}.png"
        (images / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), (80 * label, 40, 200 - 60 * label)).save(images / name)
        ids.append(name)
    samples = SampleTable(np.array(ids, dtype=object), y.astype(np.int64), split,
                          tuple(f"class_{k}" for k in range(n_classes)),
                          source=str(DataSource("folder", str(images))))  # fmt: skip
    features, attrs = {}, {}
    for model, layers in LAYOUT.items():
        centroids = {name: rng.normal(size=(n_classes, 10)) for name, _, _ in layers}
        features[model] = {
            name: (signal * centroids[name][y] + rng.normal(size=(len(y), 10))).astype(np.float32)
            for name, _, signal in layers
        }
        attrs[model] = {name: {"depth": depth, "depth_index": i}
                        for i, (name, depth, _) in enumerate(layers)}  # fmt: skip
    path = root / "c.h5"
    configs = {model: _config(model, "float32") for model in LAYOUT}
    write_arrays(path, samples, features, configs, layer_attrs=attrs)
    return path
