"""A plain cache index for features held in memory (made elsewhere).

Stage 1 writes shard files and a derived index (:class:`~featurecache.cache.Store`). A plain
index holds ordinary datasets instead: every reader in ``pipelines`` accepts it, so features
computed by another tool can be fitted and reported on like extracted ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from featurecache.cache import _format as fmt
from featurecache.cache._atomic import create_once
from featurecache.cache._config import FeatureConfig
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

    Returns
    -------
    Path

    Raises
    ------
    InvalidArgumentError
        ``path`` exists, or a matrix does not have one row per sample.
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

    if not create_once(final, write):
        raise InvalidArgumentError(f"{str(final)!r} exists; write_arrays never replaces a file.")
    return final


def _write_model(f, model, layers, config, layer_attrs, status, failures) -> None:
    group = f.create_group(fmt.features_path(model))
    group.attrs.update(config_attrs(config))
    for layer, values in layers.items():
        dataset = group.create_dataset(layer, data=np.asarray(values))
        extra = dict((layer_attrs or {}).get(model, {}).get(layer, {}))
        dataset.attrs.update({**config_attrs(config), **extra, "layer": layer})
        if status is not None and model in status:
            f.create_dataset(
                fmt.status_path(model, layer), data=np.asarray(status[model], dtype=np.int8)
            )
    if failures is not None and model in failures:
        rows = [row for row, _ in failures[model]]
        write_failures(f, model, rows, [reason for _, reason in failures[model]])
