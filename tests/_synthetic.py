"""Write small synthetic caches with plain h5py, following docs/cache-format.md.

Shared by the test suites: ``write_cache(tmp_path / "cache.h5")`` writes a plain
index (ordinary datasets); ``write_cache(..., shards=True)`` writes the layout
stage 1 writes (sample table behind an external link, shard files with
SHA-256 digests, virtual feature and status datasets, the ``/shards`` table).
No torch, no featurecache import.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

__all__ = ["LAYERS", "write_cache", "samples_digest"]

_STR = h5py.string_dtype()

# (name, n_features, signal): signal 0 is pure noise; larger separates the classes more.
LAYERS = (("noise", 8, 0.0), ("informative", 16, 3.0), ("embedding", 12, 1.5))


def samples_digest(ids, labels, splits) -> str:
    """The digest stage 1 records (ids, splits, labels)."""
    digest = hashlib.sha256()
    for values in (ids, splits):
        digest.update("\0".join(str(v) for v in values).encode())
        digest.update(b"\1")
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


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
) -> Path:
    """Write a cache and return its path.

    Rows of each split are drawn per class (``n_per_class``, default 20 train and 10
    test per class), shuffled, and given ids ``s00000``…  Each layer's features
    are ``signal * centroid[label] + N(0, 1)``; the models differ only by seed.
    ``failed_rows`` get status 2 and NaN features.  ``shuffle_test_labels``
    permutes the labels among test rows after the features were drawn, so test
    labels carry no information.
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

    root_attrs = {
        "format": "featurecache",
        "format_version": 1,
        "shard_size": shard_size,
        "n_samples": n_samples,
        "dataset": "synthetic",
        "samples_digest": samples_digest(ids, y, split),
    }
    if shards:
        _write_sharded(
            path, root_attrs, ids, y, split, names, features, layers, state, dtype, shard_size
        )
        return path
    with h5py.File(path, "w") as f:
        f.attrs.update(root_attrs)
        _write_samples(f.create_group("samples"), ids, y, split, names)
        for model in models:
            group = f.create_group(f"features/{model}")
            config = _config(model, dtype)
            group.attrs.update(_config_attrs(config))
            for i, (name, _, _) in enumerate(layers):
                dataset = group.create_dataset(name, data=features[model][name])
                dataset.attrs.update(_layer_attrs(config, name, i, len(layers)))
                if status:
                    f.create_dataset(f"status/{model}/{name}", data=state)
            _write_failures(f, model, failed_rows)
    return path


def _write_samples(group: h5py.Group, ids, y, split, names) -> None:
    group.create_dataset("ids", data=ids, dtype=_STR)
    group.create_dataset("labels", data=y)
    group.create_dataset("splits", data=split, dtype=_STR)
    group.attrs["class_names"] = np.array(names, dtype=object)
    group.attrs["root"] = "synthetic"


def _write_failures(f: h5py.File, model: str, failed_rows) -> None:
    rows = np.asarray(sorted(failed_rows), dtype=np.int64)
    f.create_dataset(f"failures/{model}/row", data=rows)
    f.create_dataset(
        f"failures/{model}/reason",
        data=np.array(["unreadable image"] * len(rows), dtype=object),
        dtype=_STR,
    )


def _config(model: str, dtype: str) -> dict:
    return {
        "backbone": model,
        "weights": "none",
        "weights_sha256": hashlib.sha256(model.encode()).hexdigest(),
        "seed": 0,
        "preprocessing": {"resize_size": 32, "crop_size": 32, "mean": [0.5], "std": [0.5]},
        "pooling": "avg",
        "dtype": dtype,
        "compute_dtype": "float32",
    }


def _config_attrs(config: Mapping) -> dict:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    attrs = {
        k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else v) for k, v in config.items()
    }
    attrs["config"] = text
    attrs["config_digest"] = hashlib.sha256(text.encode()).hexdigest()
    return attrs


def _layer_attrs(config: Mapping, name: str, index: int, n_layers: int) -> dict:
    return {
        **_config_attrs(config),
        "layer": name,
        "depth": 1.0 if name == "embedding" else (index + 1) / (n_layers + 1),
        "depth_index": index,
        "raw_shape": np.array([4, 2, 2], dtype=np.int64),
        "torch_version": "synthetic",
        "torchvision_version": "synthetic",
        "featurecache_version": "0.1.0",
    }


def _write_sharded(
    path, root_attrs, ids, y, split, names, features, layers, state, dtype, shard_size
):
    folder = path.with_name(path.name + ".d")
    folder.mkdir()
    n_samples = len(ids)
    with h5py.File(folder / "samples.h5", "w") as f:
        _write_samples(f.create_group("samples"), ids, y, split, names)
    with h5py.File(path, "w") as f:
        f.attrs.update(root_attrs)
        f["samples"] = h5py.ExternalLink(
            os.path.relpath(folder / "samples.h5", path.parent), "/samples"
        )
        for model, by_layer in features.items():
            config = _config(model, dtype)
            model_dir = folder / model / "p-synthetic"
            model_dir.mkdir(parents=True)
            (folder / model / "config.json").write_text(json.dumps(config, sort_keys=True))
            group = f.create_group(f"features/{model}")
            group.attrs.update(_config_attrs(config))
            layouts = {
                name: h5py.VirtualLayout((n_samples, n), np.dtype(dtype)) for name, n, _ in layers
            }
            status_layouts = {
                name: h5py.VirtualLayout((n_samples,), np.int8) for name, _, _ in layers
            }
            table = []
            for shard, start in enumerate(range(0, n_samples, shard_size)):
                stop = min(n_samples, start + shard_size)
                shard_file = model_dir / f"shard-{shard:06d}.h5"
                relative = os.path.relpath(shard_file, path.parent)
                with h5py.File(shard_file, "w") as g:
                    g.attrs.update(start=start, stop=stop, shard=shard, model=model)
                    g.attrs["layers"] = json.dumps(sorted(name for name, _, _ in layers))
                    g.create_dataset("rows", data=np.arange(start, stop, dtype=np.int64))
                    g.create_dataset("status", data=state[start:stop])
                    reasons = np.where(state[start:stop] == 2, "unreadable image", "")
                    g.create_dataset("reason", data=reasons.astype(object), dtype=_STR)
                    for name, n_features, _ in layers:
                        data = np.ascontiguousarray(by_layer[name][start:stop])
                        dataset = g.create_dataset(
                            f"features/{name}",
                            data=data,
                            chunks=(stop - start, n_features),
                            fletcher32=True,
                        )
                        digest = hashlib.sha256(data.tobytes()).hexdigest()
                        dataset.attrs["sha256"] = digest
                        table.append((relative, name, start, stop, digest))
                for name, n_features, _ in layers:
                    layouts[name][start:stop] = h5py.VirtualSource(
                        relative, f"features/{name}", shape=(stop - start, n_features)
                    )
                    status_layouts[name][start:stop] = h5py.VirtualSource(
                        relative, "status", shape=(stop - start,)
                    )
            for i, (name, _, _) in enumerate(layers):
                dataset = group.create_virtual_dataset(name, layouts[name], fillvalue=np.nan)
                dataset.attrs.update(_layer_attrs(config, name, i, len(layers)))
                f.create_virtual_dataset(
                    f"status/{model}/{name}", status_layouts[name], fillvalue=0
                )
            _write_failures(f, model, np.flatnonzero(state == 2))
            shards_group = f.create_group(f"shards/{model}")
            columns = list(zip(*table, strict=True))
            shards_group.create_dataset("file", data=np.array(columns[0], dtype=object), dtype=_STR)
            shards_group.create_dataset(
                "layer", data=np.array(columns[1], dtype=object), dtype=_STR
            )
            shards_group.create_dataset("start", data=np.array(columns[2], dtype=np.int64))
            shards_group.create_dataset("stop", data=np.array(columns[3], dtype=np.int64))
            shards_group.create_dataset(
                "sha256", data=np.array(columns[4], dtype=object), dtype=_STR
            )
