"""Heads: scikit-learn classifiers fitted on cached features, and their default grids.

A head is a small frozen :class:`Head` registered with :func:`register_head`.
Every head becomes ``Pipeline([("scale", StandardScaler()), ("pca", PCA(...))?,
("clf", classifier)])``; the ``pca`` step is present only when the grid asks for
fewer components than the layer has features.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import ParameterGrid
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from featurecache.core._validation import ParameterError
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest
from pipelines.heads._knn import CosineKNNClassifier, knn_grid_predictions
from pipelines.heads._nystroem import NystroemClassifier, nystroem_grid_predictions
from pipelines.heads._ridge import ridge_path_predictions

__all__ = [
    "Head",
    "register_head",
    "get_head",
    "list_heads",
    "load_grid",
    "resolve_grids",
    "make_pca",
    "build_pipeline",
]

PCA_KEY = "pca"


@dataclass(frozen=True)
class Head:
    """A registered head.

    Attributes
    ----------
    name : str
        What ``heads`` of :func:`~pipelines.fit` accepts.
    make_classifier : callable
        ``make_classifier(seed) -> estimator``, the unfitted classifier with the
        head's fixed settings.
    default_grid : mapping of str to tuple
        Classifier parameters to search (and ``pca``: ``None`` or a number of
        components), each with the values tried.
    description : str
        One line for ``docs/heads.md`` and reports.
    path_param : str or None
        A parameter walked in ascending order with ``warm_start`` during the
        search (``C`` for ``logreg``); ``None`` fits every candidate from scratch.
    resolve : callable or None
        ``resolve(params, X) -> params``: turns grid values that depend on the
        scaled training features into concrete values (``svm``'s ``"2*scale"``).
    score_grid : callable or None
        ``score_grid(candidates, X, y, X_test, seed=seed) -> predictions`` of shape
        ``(len(candidates), n_test)``: every candidate of one fold at once, exactly
        what fitting each candidate would predict (``ridge`` from one eigendecomposition,
        ``knn`` from one nearest-neighbour pass). ``None``: one fit per candidate.
    edge_params : tuple of str
        Numeric parameters whose chosen value at either end of a grid of 3 or more
        values is reported as a warning (the grid may not reach the optimum).
    """

    name: str
    make_classifier: Callable[[int], BaseEstimator]
    default_grid: Mapping[str, tuple]
    description: str
    path_param: str | None = None
    resolve: Callable[[dict, np.ndarray], dict] | None = field(default=None, repr=False)
    score_grid: Callable[..., np.ndarray] | None = field(default=None, repr=False)
    edge_params: tuple[str, ...] = ()

    def classifier(self, params: Mapping[str, Any], X: np.ndarray, *, seed: int) -> BaseEstimator:
        """The unfitted classifier for ``params`` (without ``pca``) on scaled ``X``."""
        clf_params = {k: v for k, v in params.items() if k != PCA_KEY}
        if self.resolve is not None:
            clf_params = self.resolve(clf_params, X)
        return self.make_classifier(seed).set_params(**clf_params)

    def grid(self, user: Mapping[str, Sequence] | None = None) -> dict[str, list]:
        """The default grid updated with ``user``'s keys, validated.

        Raises
        ------
        InvalidArgumentError
            An unknown parameter, or a parameter without values.
        """
        merged = {PCA_KEY: [None], **{k: list(v) for k, v in self.default_grid.items()}}
        known = sorted([*self.make_classifier(0).get_params(deep=False), PCA_KEY])
        for key, values in (user or {}).items():
            if key not in known:
                same_case = [k for k in known if k.lower() == str(key).lower()]
                hint = f" Did you mean {same_case[0]!r}?" if same_case else suggest(key, known)
                raise InvalidArgumentError(
                    f"the grid of head {self.name!r} has parameter {key!r}, which "
                    f"{type(self.make_classifier(0)).__name__} does not take.{hint} "
                    f"It accepts {', '.join(known)}."
                )
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if not values:
                raise InvalidArgumentError(
                    f"the grid of head {self.name!r} lists no values for {key!r}; give at least one."
                )
            merged[key] = [tuple(v) if isinstance(v, list) else v for v in values]
        for value in merged[PCA_KEY]:
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidArgumentError(
                    f"the grid of head {self.name!r} has pca={value!r}; pca takes null (no PCA) "
                    "or a positive number of components."
                )
        for candidate in ParameterGrid(merged):  # surface bad values now, not in a worker
            try:
                clf = self.classifier(candidate, np.ones((2, 2)), seed=0)
                validate = getattr(clf, "_validate_params", None)  # scikit-learn >= 1.2
                if validate is not None:
                    validate()  # the estimator's own constraints: C > 0, known solvers...
            except (TypeError, ValueError) as error:
                raise InvalidArgumentError(f"the grid of head {self.name!r}: {error}") from error
        return merged


_HEADS: dict[str, Head] = {}


def register_head(
    name: str,
    *,
    default_grid: Mapping[str, Sequence],
    description: str,
    path_param: str | None = None,
    resolve: Callable[[dict, np.ndarray], dict] | None = None,
    score_grid: Callable[..., np.ndarray] | None = None,
    edge_params: Sequence[str] = (),
) -> Callable:
    """Register ``make_classifier(seed)`` as the head ``name`` (used as a decorator)."""

    def decorator(make_classifier: Callable[[int], BaseEstimator]):
        if name in _HEADS:
            raise ValueError(f"a head named {name!r} is already registered")
        _HEADS[name] = Head(
            name=name,
            make_classifier=make_classifier,
            default_grid={k: tuple(v) for k, v in default_grid.items()},
            description=description,
            path_param=path_param,
            resolve=resolve,
            score_grid=score_grid,
            edge_params=tuple(edge_params),
        )
        return make_classifier

    return decorator


def list_heads() -> list[str]:
    """Names of the registered heads, in registration order."""
    return list(_HEADS)


def get_head(name: str) -> Head:
    """The registered head ``name``.

    Raises
    ------
    UnknownNameError
        With close matches and the list from :func:`list_heads`.
    """
    if name not in _HEADS:
        raise UnknownNameError(
            f"head {name!r} is not registered; choose from {', '.join(_HEADS)}."
            f"{suggest(name, _HEADS)} Hint: pipelines.list_heads() lists them."
        )
    return _HEADS[name]


# -- the built-in heads ---------------------------------------------------------------


@register_head(
    "logreg",
    default_grid={"C": (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)},
    description="multinomial logistic regression (lbfgs, L2), C on a log grid",
    path_param="C",
)
def _logreg(seed: int) -> LogisticRegression:
    return LogisticRegression(solver="lbfgs", max_iter=1000, random_state=seed)


@register_head(
    "linsvm",
    default_grid={"C": (1e-4, 1e-3, 1e-2, 1e-1)},
    description="linear SVM (LinearSVC, squared hinge, one-vs-rest), C on a log grid",
)
def _linsvm(seed: int) -> LinearSVC:
    return LinearSVC(C=1.0, max_iter=2000, random_state=seed)


_GAMMA = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*scale\s*$")


def _resolve_gamma(params: dict, X: np.ndarray) -> dict:
    """``gamma="K*scale"`` -> ``K`` times scikit-learn's ``"scale"`` value on ``X``."""
    gamma = params.get("gamma")
    if not isinstance(gamma, str) or gamma in ("scale", "auto"):
        return params
    match = _GAMMA.match(gamma)
    if match is None:
        raise ValueError(
            f"gamma must be a positive float, 'scale', 'auto' or 'K*scale' (e.g. '0.5*scale'); "
            f"got {gamma!r}"
        )
    variance = float(np.var(X))
    scale = 1.0 / (X.shape[1] * variance) if variance > 0 else 1.0
    return {**params, "gamma": float(match.group(1)) * scale}


@register_head(
    "svm",
    default_grid={"C": (1.0, 10.0), "gamma": ("0.25*scale", "scale")},
    description="RBF-kernel SVM (SVC), C x gamma; gamma as a multiple of scikit-learn's 'scale'",
    resolve=_resolve_gamma,
)
def _svm(seed: int) -> SVC:
    return SVC(kernel="rbf", cache_size=500, random_state=seed)


@register_head(
    "mlp",
    default_grid={"hidden_layer_sizes": ((256,),), "alpha": (1e-4, 1e-2)},
    description="one hidden layer (Linear-ReLU-Linear, MLPClassifier, adam), L2 alpha",
)
def _mlp(seed: int) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=(256,), activation="relu", max_iter=100, random_state=seed
    )


def _ridge_grid(candidates: list[dict], X, y, X_test, seed: int = 0) -> np.ndarray:
    return ridge_path_predictions(X, y, X_test, [float(c["alpha"]) for c in candidates])


@register_head(
    "ridge",
    default_grid={"alpha": tuple(float(a) for a in np.logspace(-3, 6, 19))},
    description="one-vs-all least squares (RidgeClassifier), exact CV over alpha",
    score_grid=_ridge_grid,
    edge_params=("alpha",),
)
def _ridge(seed: int) -> RidgeClassifier:
    return RidgeClassifier(alpha=1.0)


def _knn_grid(candidates: list[dict], X, y, X_test, seed: int = 0) -> np.ndarray:
    pairs = [(int(c["n_neighbors"]), float(c["temperature"])) for c in candidates]
    block_size = int(candidates[0].get("block_size", CosineKNNClassifier().block_size))
    return knn_grid_predictions(X, y, X_test, pairs, block_size=block_size)


@register_head(
    "knn",
    default_grid={"n_neighbors": (1, 5, 10, 20, 50, 100), "temperature": (0.03, 0.07, 0.2, 1.0)},
    description="cosine kNN on standardised features, votes weighted by exp(s / T) (DINO)",
    score_grid=_knn_grid,
    edge_params=("n_neighbors",),
)
def _knn(seed: int) -> CosineKNNClassifier:
    return CosineKNNClassifier(n_neighbors=20, temperature=0.07)


def _resolve_map_gamma(params: dict, X: np.ndarray) -> dict:
    """:func:`_resolve_gamma`, with ``"scale"`` and ``"auto"`` as numbers (Nystroem takes
    a float only)."""
    gamma = params.get("gamma")
    if gamma == "auto":
        return {**params, "gamma": 1.0 / X.shape[1]}
    return _resolve_gamma({**params, "gamma": "1*scale"} if gamma == "scale" else params, X)


def _nystroem_grid(candidates: list[dict], X, y, X_test, seed: int = 0) -> np.ndarray:
    triples = []
    for c in candidates:
        resolved = _resolve_map_gamma(c, X)
        triples.append((float(resolved["gamma"]), int(c["n_components"]), float(c["alpha"])))
    return nystroem_grid_predictions(X, y, X_test, triples, seed)


@register_head(
    "nystroem",
    default_grid={
        "gamma": ("0.5*scale", "scale", "2*scale"),
        "n_components": (2000,),
        "alpha": (0.01, 0.1, 1.0, 10.0),
    },
    description="RBF kernel that scales: Nystroem map (n_components rows) + RidgeClassifier, "
    "gamma as a multiple of scikit-learn's 'scale' x alpha",
    resolve=_resolve_map_gamma,
    score_grid=_nystroem_grid,
    edge_params=("alpha",),
)
def _nystroem(seed: int) -> NystroemClassifier:
    return NystroemClassifier(gamma=1.0, n_components=2000, alpha=1.0, random_state=seed)


# -- grids and pipelines --------------------------------------------------------------


def load_grid(path: str | os.PathLike) -> dict[str, dict[str, list]]:
    """Read a user grid: ``{head: {param: [values...]}}`` from JSON or YAML.

    Raises
    ------
    InvalidArgumentError
        The file is missing, unreadable, or not a mapping of head names to mappings.
    """
    import yaml

    path = Path(path)
    expected = "a JSON or YAML file mapping head names to parameter grids"
    example = 'For example {"logreg": {"C": [0.01, 0.1, 1]}}.'
    if not path.is_file():
        what = "It is a folder." if path.is_dir() else "The file does not exist."
        raise ParameterError("grid", "fit", expected, str(path), what)
    try:
        text = path.read_text()
        grid = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, OSError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ParameterError(
            "grid", "fit", expected, str(path), f"It cannot be parsed: {first}."
        ) from error
    if not isinstance(grid, dict) or not all(isinstance(v, dict) for v in grid.values()):
        raise ParameterError(
            "grid", "fit", expected, str(path), f"It holds a {type(grid).__name__}. {example}"
        )
    for name in grid:
        get_head(name)
    return grid


def resolve_grids(
    heads: Sequence[str],
    grid: Mapping[str, Mapping[str, Sequence]] | None = None,
    *,
    pca: int | None = None,
) -> dict[str, dict[str, list]]:
    """Validated grid of each head: defaults, updated by ``grid[head]``.

    Grids of heads that are not requested are ignored (one grid file can serve
    several runs). ``pca`` (a number of components) replaces the ``pca`` values
    of every head whose grid does not set them.
    """
    for name in grid or {}:
        get_head(name)  # a typo in a grid file is an error; a head not requested is not
    resolved = {}
    for name in heads:
        user = dict((grid or {}).get(name, {}))
        if pca is not None:
            user.setdefault(PCA_KEY, [pca])
        resolved[name] = get_head(name).grid(user)
    return resolved


def make_pca(n_components: int | None, n_samples: int, n_features: int, seed: int) -> PCA | None:
    """The PCA step for ``n_components``, or ``None`` when the layer is not wider."""
    if n_components is None or n_components >= n_features:
        return None
    return PCA(n_components=min(n_components, n_samples), random_state=seed)


def build_pipeline(
    head: Head, params: Mapping[str, Any], X: np.ndarray, y: np.ndarray, *, seed: int,
    scale: BaseEstimator | None = None,
) -> Pipeline:  # fmt: skip
    """Fit ``StandardScaler -> [PCA] -> classifier`` with ``params`` on ``X, y``.

    ``scale`` replaces the ``StandardScaler`` (a feature set's per-part scaler, cloned).
    The result is a plain fitted scikit-learn :class:`~sklearn.pipeline.Pipeline`.
    """
    first = clone(scale) if scale is not None else StandardScaler()
    steps: list[tuple[str, BaseEstimator]] = [("scale", first)]
    pca = make_pca(params.get(PCA_KEY), X.shape[0], X.shape[1], seed)
    if pca is not None:
        steps.append(("pca", pca))
    Xt = X
    for _, step in steps:
        Xt = step.fit_transform(Xt, y)
    clf = head.classifier(params, Xt, seed=seed)
    clf.fit(Xt, y)
    return Pipeline([*steps, ("clf", clf)])
