"""Named evaluation protocols: published probes reproduced exactly, beside the product's own.

``fit(protocol=NAME)`` (``fit --protocol NAME``) evaluates every layer with the protocol
instead of the product's heads and cross-validation; its results carry the protocol's name
in the ``head`` column and its selection in the ``selection`` column.

``ssl-transfer``
    The linear evaluation of Ericsson et al., *How well do self-supervised models
    transfer?* (``linear.py`` of the ssl-transfer repository): a multinomial L-BFGS
    ``LogisticRegression(solver="lbfgs", warm_start=True)`` (scikit-learn's defaults
    otherwise: ``max_iter=100``) on the features as they come out of the backbone (that
    code does not standardise or normalise them), weight decay ``wd`` over
    ``logspace(-6, 5, 45)`` with ``C = 1 / wd``, swept in that order by one warm-started
    estimator and scored by accuracy on a validation split: the cache's ``val`` split when
    it has one, else 20 % of the training rows (``np.random.seed(seed)``, a shuffle of
    ``list(range(n_train))``, the first ``floor(0.2 n_train)`` for validation). The first
    ``wd`` with the strictly highest validation accuracy wins; the same estimator, still
    warm from the sweep, is refitted on train + val with it and scored on test.
``dino-knn``
    DINO's ``eval_knn``: features L2-normalised, the ``k = 20`` training rows of highest
    cosine similarity ``s`` vote for their class with weight ``exp(s / T)``, ``T = 0.07``;
    the class with the largest sum wins (the lowest on an exact tie). Nothing is selected:
    its CV columns score the same fixed head on the product's folds, for reference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from featurecache.exceptions import UnknownNameError, suggest
from pipelines.heads._knn import CosineKNNClassifier

__all__ = [
    "Protocol",
    "ProtocolFit",
    "get_protocol",
    "list_protocols",
    "SSL_TRANSFER_WD",
    "ssl_transfer_split",
]

#: ssl-transfer's weight decays (``torch.logspace(-6, 5, 45)``, here in float64); C = 1 / wd.
SSL_TRANSFER_WD = tuple(float(w) for w in np.logspace(-6, 5, 45))
SSL_TRANSFER_VALID_SIZE = 0.2
DINO_K, DINO_T = 20, 0.07


@dataclass(frozen=True)
class ProtocolFit:
    """What a protocol chose and the head it refitted.

    Attributes
    ----------
    estimator : Pipeline
        Fitted on the protocol's refit rows; ``predict`` returns class indices.
    params : dict
        The chosen values (empty when nothing is chosen).
    candidates : tuple of dict
        Every candidate tried: ``params``, ``scores`` (one per split), ``mean``, ``std``.
    score, std : float
        The chosen candidate's validation accuracy and its spread (over folds, or the
        binomial standard error of one split).
    n_splits, n_val : int
        Splits scored on, rows in the (first) validation split.
    """

    estimator: Pipeline
    params: dict
    candidates: tuple[dict, ...]
    score: float
    std: float
    n_splits: int
    n_val: int


@dataclass(frozen=True)
class Protocol:
    """A registered protocol.

    Attributes
    ----------
    name : str
    description : str
        One sentence for ``run.json`` and the report.
    selection : str
        What the ``selection`` column of its results says.
    chosen, refit : str
        How its hyper-parameters are chosen and which rows it refits on, for ``run.json``.
    run : callable
        ``run(X, y, is_val, splits, seed, scale) -> ProtocolFit``: ``X, y`` the fitting
        rows (train, and val when the cache has it), ``is_val`` which of them are val,
        ``splits`` the product's selection splits of them, ``scale`` an unfitted transformer
        put first in the pipeline (a feature set's part scaler) or ``None``.
    """

    name: str
    description: str
    selection: str
    chosen: str
    refit: str
    run: Callable[..., ProtocolFit]


_PROTOCOLS: dict[str, Protocol] = {}


def _register(protocol: Protocol) -> None:
    _PROTOCOLS[protocol.name] = protocol


def list_protocols() -> list[str]:
    """Names of the registered protocols."""
    return list(_PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    """The protocol ``name``.

    Raises
    ------
    UnknownNameError
        With close matches and the list of protocols.
    """
    if name not in _PROTOCOLS:
        raise UnknownNameError(
            f"protocol {name!r} is not registered; choose from {', '.join(_PROTOCOLS)}."
            f"{suggest(name, _PROTOCOLS)}"
        )
    return _PROTOCOLS[name]


def _pipeline(clf: BaseEstimator, scale: BaseEstimator | None) -> list:
    return ([("scale", clone(scale))] if scale is not None else []) + [("clf", clf)]


# -- ssl-transfer ---------------------------------------------------------------------


def ssl_transfer_split(n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ssl-transfer's ``(train, val)`` positions among ``n_train`` training rows: a shuffle
    of ``list(range(n_train))`` under ``np.random.seed(seed)``, the first 20 % for val."""
    indices = list(range(n_train))
    np.random.RandomState(seed).shuffle(indices)  # what np.random.seed + np.random.shuffle do
    cut = int(np.floor(SSL_TRANSFER_VALID_SIZE * n_train))
    return np.asarray(indices[cut:], dtype=np.int64), np.asarray(indices[:cut], dtype=np.int64)


def _ssl_transfer(X, y, is_val, splits, seed, scale=None) -> ProtocolFit:
    if is_val.any():
        train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    else:
        train, val = ssl_transfer_split(len(y), seed)
    steps = _pipeline(LogisticRegression(solver="lbfgs", warm_start=True), scale)
    model = Pipeline(steps)
    candidates, best_score, best_c = [], -math.inf, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # as the published code does
        for wd in SSL_TRANSFER_WD:
            c = 1.0 / wd
            model.set_params(clf__C=c)
            model.fit(X[train], y[train])
            score = float(np.mean(model.predict(X[val]) == y[val]))
            candidates.append({"params": {"C": c, "wd": wd}, "scores": [score], "mean": score,
                               "std": _binomial(score, len(val))})  # fmt: skip
            if score > best_score:
                best_score, best_c = score, c
        model.set_params(clf__C=best_c)
        model.fit(X, y)  # train + val, warm from the end of the sweep as published
    return ProtocolFit(
        estimator=model, params={"C": best_c, "wd": 1.0 / best_c}, candidates=tuple(candidates),
        score=best_score, std=_binomial(best_score, len(val)), n_splits=1, n_val=len(val),
    )  # fmt: skip


def _binomial(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else math.nan


_register(
    Protocol(
        name="ssl-transfer",
        description=(
            "ssl-transfer linear evaluation: L-BFGS logistic regression on the raw features, "
            "wd over 45 log-spaced values from 1e-6 to 1e5 (C = 1/wd), chosen on a 20 % "
            "validation split of train (the val split when there is one), refitted on "
            "train + val"
        ),
        selection="ssl-transfer: 20 % val split",
        chosen="chosen by the ssl-transfer protocol on a 20 % validation split of train (the "
        "val split when the cache has one), the first best weight decay in ascending order",
        refit="train + val",
        run=_ssl_transfer,
    )
)


# -- dino-knn -------------------------------------------------------------------------


def _dino_knn(X, y, is_val, splits: Sequence, seed, scale=None) -> ProtocolFit:
    model = Pipeline(_pipeline(CosineKNNClassifier(n_neighbors=DINO_K, temperature=DINO_T), scale))
    scores = []
    for train, test in splits:
        fold = clone(model).fit(X[train], y[train])
        scores.append(float(np.mean(fold.predict(X[test]) == y[test])))
    mean = float(np.mean(scores))
    std = float(np.std(scores)) if len(scores) > 1 else _binomial(mean, len(splits[0][1]))
    params = {"n_neighbors": DINO_K, "temperature": DINO_T}
    return ProtocolFit(
        estimator=model.fit(X, y), params=params,
        candidates=({"params": params, "scores": scores, "mean": mean, "std": std},),
        score=mean, std=std, n_splits=len(scores), n_val=len(splits[0][1]),
    )  # fmt: skip


_register(
    Protocol(
        name="dino-knn",
        description=(
            "DINO kNN: L2-normalised features, the 20 nearest training rows by cosine "
            "similarity vote with weight exp(similarity / 0.07); nothing selected"
        ),
        selection="dino-knn: fixed (k=20, T=0.07)",
        chosen="fixed by the dino-knn protocol (k = 20, T = 0.07; nothing chosen; its CV "
        "columns score it on the product's folds)",
        refit="train",
        run=_dino_knn,
    )
)
