"""A plain cache index for features held in memory (made elsewhere).

Stage 1 writes shard files and a derived index (:class:`~featurecache.cache.Store`). A plain
index holds ordinary datasets instead: every reader in ``pipelines`` accepts it, so features
computed by another tool can be fitted and reported on like extracted ones.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from featurecache.cache import _format as fmt
from featurecache.cache._atomic import create_once
from featurecache.cache._config import VIEW_KINDS, FeatureConfig
from featurecache.cache._samples import SampleTable, write_samples
from featurecache.cache._writer import config_attrs, new_h5, write_failures
from featurecache.exceptions import InvalidArgumentError

__all__ = ["write_arrays"]

_STR = h5py.string_dtype()


def write_arrays(
    path: str | os.PathLike,
    samples: SampleTable,
    features: Mapping[str, Mapping[str, np.ndarray]],
    configs: Mapping[str, FeatureConfig],
    *,
    layer_attrs: Mapping[str, Mapping[str, Mapping]] | None = None,
    status: Mapping[str, np.ndarray] | None = None,
    failures: Mapping[str, Sequence[tuple[int, str]]] | None = None,
    views: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]] | None = None,
) -> Path:
    """Write a plain (unsharded) cache index for features held in memory.

    Parameters
    ----------
    path : str or path
        The new index file; an existing file is never replaced.
    samples : SampleTable
    features : mapping
        ``features[model][layer]`` of shape ``(n_samples, n_features)``.
    configs : mapping
        ``configs[model]``, the :class:`FeatureConfig` each model's features were made with.
    layer_attrs : mapping, optional
        ``layer_attrs[model][layer]``: attributes of each layer (``depth``, ``depth_index``…).
    status : mapping, optional
        ``status[model]`` of shape ``(n_samples,)`` (``STATUS_*`` codes), shared by the
        model's layers; without it readers take every row as ok.
    failures : mapping, optional
        ``failures[model]``: ``(row, reason)`` of the rows that failed.
    views : mapping, optional
        ``views[model][layer]``: ``{"augment": array (n_samples, K, n_features), "tta":
        array (n_samples, T, n_features)}`` (either key optional), the extra views of
        each row, view 0 equal to the plain features; a row without views of a kind holds
        NaN there. ``configs[model].views`` must say ``k = K`` and ``tta_k = T``. A view
        is ok where it is finite (and the row not failed), pending elsewhere.

    Returns
    -------
    Path

    Raises
    ------
    InvalidArgumentError
        ``path`` exists, a matrix does not have one row per sample, or views do not
        match their model's features and config.
    """
    final = Path(path)
    n_samples = len(samples)
    for model, layers in features.items():
        for layer, values in layers.items():
            if np.ndim(values) != 2 or len(values) != n_samples:
                raise InvalidArgumentError(
                    f"features[{model!r}][{layer!r}] must have shape (n_samples, n_features) "
                    f"with n_samples={n_samples}; got {np.shape(values)}."
                )
    for model, layers in (views or {}).items():
        for layer, kinds in layers.items():
            for kind, values in kinds.items():
                _check_views(model, layer, kind, values, features, configs[model])

    def write(tmp: Path) -> None:
        with new_h5(tmp) as f:
            f.attrs.update(
                format=fmt.FORMAT,
                format_version=fmt.FORMAT_VERSION,
                n_samples=n_samples,
                dataset=samples.source,
                samples_digest=samples.samples_digest,
            )
            write_samples(f, samples)
            f.create_group(fmt.features_path())
            for model, layers in features.items():
                _write_model(f, model, layers, configs[model], layer_attrs, status, failures)
                for layer, kinds in (views or {}).get(model, {}).items():
                    _write_views(f, model, layer, kinds, (status or {}).get(model))

    if not create_once(final, write):
        raise InvalidArgumentError(f"{str(final)!r} exists; write_arrays never replaces a file.")
    return final


def _sha256(values: np.ndarray) -> str:
    """What :meth:`Cache.features_digest` names a plain matrix by: the SHA-256 of its bytes."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _write_model(f, model, layers, config, layer_attrs, status, failures) -> None:
    group = f.create_group(fmt.features_path(model))
    group.attrs.update(config_attrs(config))
    for layer, values in layers.items():
        values = np.ascontiguousarray(values)
        dataset = group.create_dataset(layer, data=values)
        extra = dict((layer_attrs or {}).get(model, {}).get(layer, {}))
        dataset.attrs.update({**config_attrs(config), **extra, "layer": layer})
        dataset.attrs[fmt.DIGEST_ATTR] = _sha256(values)
        if status is not None and model in status:
            f.create_dataset(
                fmt.status_path(model, layer), data=np.asarray(status[model], dtype=np.int8)
            )
    if failures is not None and model in failures:
        rows = [row for row, _ in failures[model]]
        write_failures(f, model, rows, [reason for _, reason in failures[model]])


def _check_views(model, layer, kind, values, features, config) -> None:
    name = f"views[{model!r}][{layer!r}][{kind!r}]"
    if kind not in VIEW_KINDS:
        raise InvalidArgumentError(
            f"{name}: the kind must be one of {', '.join(VIEW_KINDS)}; got {kind!r}."
        )
    if layer not in features.get(model, {}):
        raise InvalidArgumentError(
            f"{name}: views need the plain features features[{model!r}][{layer!r}]; pass them too."
        )
    plain = np.asarray(features[model][layer])
    sets = config.view_sets()
    count = 0 if sets is None else sets.count(kind)
    expected = (len(plain), count, plain.shape[1])
    if not count or np.shape(values) != expected:
        raise InvalidArgumentError(
            f"{name} must have shape {expected} (n_samples, the config's "
            f"{'k' if kind == 'augment' else 'tta_k'}={count}, n_features); got "
            f"{np.shape(values)}. Set configs[{model!r}].views to match."
        )
    values = np.asarray(values)
    present = np.isfinite(values[:, 0]).all(axis=1)
    if not np.array_equal(values[present, 0], plain[present]):
        raise InvalidArgumentError(
            f"{name}: view 0 must equal the plain features of each row that has views; "
            "it differs. Put features[model][layer] in view 0."
        )


def _write_views(f, model: str, layer: str, kinds: Mapping, status) -> None:
    for kind, values in kinds.items():
        values = np.asarray(values)
        state = np.where(np.isfinite(values).all(axis=2), fmt.STATUS_OK, fmt.STATUS_PENDING).astype(
            np.int8
        )
        if status is not None:
            failed = np.asarray(status) == fmt.STATUS_FAILED
            state[failed] = fmt.STATUS_FAILED
        dataset = f.create_dataset(fmt.views_path(kind, model, layer), data=values)
        dataset.attrs[fmt.DIGEST_ATTR] = _sha256(values)
        f.create_dataset(fmt.view_status_path(kind, model, layer), data=state)
