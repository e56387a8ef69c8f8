"""A head file: one fitted head with what it needs to be used again, written and read back.

:meth:`pipelines.results._results.ResultsFolder.write_head` decides where a head file lives
(``RESULTS/heads/<model>/<layer>/<head>.joblib``); this module decides what it holds, a
dict with :data:`HEAD_KEYS` (:func:`head_contents`), and reads it back as a
:class:`HeadRecord` (:func:`load_head`), with the feature configuration a prediction
rebuilds the backbone from.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from featurecache import __version__
from featurecache.cache import FeatureConfig
from featurecache.exceptions import InvalidArgumentError

__all__ = ["HEAD_KEYS", "HeadRecord", "head_contents", "load_head"]

HEAD_KEYS = (
    "estimator",
    "model",
    "layer",
    "head",
    "params",
    "class_names",
    "samples_digest",
    "provenance",
    "featurecache_version",
)


def head_contents(
    *, estimator: Any, model: str, layer: str, head: str, params: Mapping[str, Any],
    class_names: Sequence[str], samples_digest: str, provenance: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """What a head file holds: a dict with :data:`HEAD_KEYS`, stamped with this version.

    Parameters
    ----------
    estimator : sklearn.pipeline.Pipeline
        The fitted head.
    model, layer, head : str
        The combination it was fitted on.
    params : mapping
        The chosen hyper-parameters.
    class_names : sequence of str
        Class index -> name.
    samples_digest : str
        The digest of the cache's samples.
    provenance : mapping
        The cached layer's attributes, its ``config`` among them.

    Returns
    -------
    dict
    """
    return {
        "estimator": estimator,
        "model": model,
        "layer": layer,
        "head": head,
        "params": dict(params),
        "class_names": list(class_names),
        "samples_digest": samples_digest,
        "provenance": dict(provenance),
        "featurecache_version": str(__version__),
    }


@dataclass(frozen=True)
class HeadRecord:
    """A fitted head, as :func:`load_head` reads it from a head file.

    Attributes
    ----------
    estimator : sklearn.pipeline.Pipeline
        The fitted ``scale -> [pca] -> clf`` pipeline; ``predict`` returns class indices.
    model, layer, head : str
        The combination it was fitted on.
    params : dict
        The chosen hyper-parameters.
    class_names : tuple of str
        Class index -> name.
    samples_digest : str
        Digest of the samples of the cache it was fitted on.
    config : FeatureConfig
        The configuration of the features it reads: backbone, weights digest,
        preprocessing, pooling, dtypes.
    provenance : mapping
        Every attribute of the cached layer (``depth``, ``raw_shape``, versions…).
    featurecache_version : str
        The version that fitted it.
    """

    estimator: Any
    model: str
    layer: str
    head: str
    params: Mapping[str, Any]
    class_names: tuple[str, ...]
    samples_digest: str
    config: FeatureConfig
    provenance: Mapping[str, Any]
    featurecache_version: str


def load_head(path: str | os.PathLike) -> HeadRecord:
    """Load a head file written by :func:`~pipelines.fit`.

    Only load files you trust: a ``.joblib`` file is a pickle.

    Parameters
    ----------
    path : str or path
        ``RESULTS/heads/<model>/<layer>/<head>.joblib``.

    Returns
    -------
    HeadRecord

    Raises
    ------
    InvalidArgumentError
        The file is missing, is not a head file, or records no feature configuration.
    """
    path = Path(path)
    stored = _read_head_file(path)
    missing = [k for k in HEAD_KEYS if not isinstance(stored, dict) or k not in stored]
    if missing:
        raise InvalidArgumentError(
            f"head file {str(path)!r} is not a head file: it lacks {', '.join(missing)}; pass a "
            ".joblib file written by `featurecache fit`."
        )
    if not hasattr(stored["estimator"], "predict"):
        raise InvalidArgumentError(
            f"head file {str(path)!r} holds no fitted estimator; re-run `featurecache fit`."
        )
    return HeadRecord(
        estimator=stored["estimator"],
        model=str(stored["model"]),
        layer=str(stored["layer"]),
        head=str(stored["head"]),
        params=dict(stored["params"]),
        class_names=tuple(str(name) for name in stored["class_names"]),
        samples_digest=str(stored["samples_digest"]),
        config=_head_config(stored["provenance"], path),
        provenance=dict(stored["provenance"]),
        featurecache_version=str(stored["featurecache_version"]),
    )


def _read_head_file(path: Path) -> Any:
    if not path.is_file():
        raise InvalidArgumentError(
            f"head file {str(path)!r} does not exist; heads are in "
            "RESULTS/heads/<model>/<layer>/<head>.joblib, written by `featurecache fit`."
        )
    try:
        with _earlier_module_names():
            return joblib.load(path)
    except Exception as error:  # a pickle can fail in many ways; all mean "not a head file"
        raise InvalidArgumentError(
            f"head file {str(path)!r} cannot be loaded as a head file ({type(error).__name__}: "
            f"{error}); pass a .joblib file written by `featurecache fit`."
        ) from error


#: Where the classes a head file may pickle lived before stage 2 had its layer folders.
EARLIER_MODULES = {
    "pipelines._knn": "pipelines.heads._knn",
    "pipelines._nystroem": "pipelines.heads._nystroem",
    "pipelines._fixed": "pipelines.heads._fixed",
    "pipelines._feature_sets": "pipelines.results._feature_sets",
}


@contextlib.contextmanager
def _earlier_module_names() -> Iterator[None]:
    """Head files written before the layer folders name their classes' modules as they were
    then: while one loads, those names answer with today's modules."""
    added = [old for old in EARLIER_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(EARLIER_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


def _head_config(provenance: Mapping, path: Path) -> FeatureConfig:
    """The layer's :class:`FeatureConfig`, which the cache records as JSON in ``config``."""
    config = provenance.get("config") if isinstance(provenance, Mapping) else None
    try:
        values = json.loads(config) if isinstance(config, str) else config
        return FeatureConfig.from_dict(values)
    except (TypeError, ValueError, KeyError) as error:
        raise InvalidArgumentError(
            f"head file {str(path)!r} records no usable feature configuration ({error}); it must "
            "come from `featurecache fit` on a cache written by `featurecache extract`."
        ) from error
