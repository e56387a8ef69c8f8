"""Feature sets: named concatenations of layers, of one backbone or several of one cache.

A feature set is fitted, selected, recorded and predicted like one more layer. Its parts
are written in a small grammar (``fit --combine``, ``combine=`` in Python)::

    SET   := [NAME "="] TERMS  |  [NAME "="] [MODEL ":"] "last" N
    TERMS := TERM ("+" TERM)*
    TERM  := [MODEL ":"] LAYER

- ``lite0:blocks.10+blocks.14``: two layers of ``lite0`` (a term without a model takes the
  model of the term before it);
- ``blocks.10+blocks.14``: those layers of every fitted model that has both;
- ``lite0:blocks.10+lite2:blocks.14``: a layer of each of two backbones;
- ``last4`` (``lite0:last4``): the 4 deepest layers of every model (of ``lite0``);
- ``deep=lite0:blocks.10+blocks.14``: the same set, named ``deep`` in the results.

A set is recorded under the model ``lite0`` (several backbones: ``lite0+lite2``) and the
layer of its name: ``NAME``, ``lastN``, or the terms as written canonically
(``blocks.10+blocks.14``; ``lite0:blocks.10+lite2:blocks.14`` across backbones).

Each part is scaled on its own before the parts are concatenated: a
:class:`PartScaler` standardises each part's columns with a ``StandardScaler`` fitted on
the training rows only (inside each CV fold, so no held-out row leaks into the scaling),
and, with ``combine_pca=N``, projects each part wider than ``N`` on its own first ``N``
principal components (fitted on the same rows). The set's head is then
``PartScaler -> [pca] -> classifier``: a plain scikit-learn pipeline on the concatenated
raw rows, which :func:`featurecache.app._predict.predict` rebuilds part by part. A set
spanning backbones reads only the rows that are ok in every part.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from featurecache.cache import Cache, Entry
from featurecache.cache import _format as fmt
from featurecache.core._validation import ParameterError, check_optional_int
from featurecache.exceptions import UnknownNameError, suggest

__all__ = [
    "Part",
    "FeatureSet",
    "PartScaler",
    "resolve_sets",
    "load_set_rows",
    "load_recorded_set",
    "set_parts",
    "set_comparison",
    "GRAMMAR",
]

GRAMMAR = (
    "[NAME=][MODEL:]LAYER+[MODEL:]LAYER... or [NAME=][MODEL:]lastN, e.g. "
    "'lite0:blocks.10+blocks.14', 'last4' or 'lite0:blocks.10+lite2:blocks.14'"
)
_LAST = re.compile(r"^last([1-9][0-9]*)$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Part:
    """One layer of a feature set."""

    model: str
    layer: str


@dataclass(frozen=True)
class FeatureSet:
    """A resolved feature set: what :func:`~pipelines.fit` fits as one more layer.

    Attributes
    ----------
    name : str
        The ``layer`` column of its results.
    parts : tuple of Part
        In concatenation order.
    pca : int or None
        Components of each part's own PCA (parts not wider keep their columns).
    entries : tuple of Entry
        The cache entry of each part.
    n_ok : int
        Rows ok in every part.
    """

    name: str
    parts: tuple[Part, ...]
    pca: int | None
    entries: tuple[Entry, ...] = field(compare=False, repr=False)
    n_ok: int = 0

    @property
    def model(self) -> str:
        """The ``model`` column: the parts' models joined by ``+``."""
        return "+".join(dict.fromkeys(part.model for part in self.parts))

    @property
    def layer(self) -> str:
        return self.name

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(e.n_features) for e in self.entries)

    @property
    def n_features(self) -> int:
        return int(sum(self.sizes))

    @property
    def n_failed(self) -> int:
        return int(max((e.n_failed for e in self.entries), default=0))

    @property
    def depth(self) -> None:
        return None

    @property
    def provenance(self) -> dict:
        """The first part's attributes (its ``config`` makes the head file loadable), a
        ``config_digest`` of every part, and ``feature_set``: the parts and their attributes."""
        parts = [
            {"model": p.model, "layer": p.layer, "n_features": int(e.n_features),
             "provenance": e.provenance}
            for p, e in zip(self.parts, self.entries, strict=True)
        ]  # fmt: skip
        digest = hashlib.sha256(fmt.canonical_json(self._configs()).encode()).hexdigest()
        return {
            **self.entries[0].provenance,
            "layer": self.name,
            "depth": None,
            "raw_shape": [self.n_features],
            "config_digest": digest,
            "feature_set": {"name": self.name, "pca": self.pca, "parts": parts},
        }

    @property
    def earlier_config_digest(self) -> str:
        """The ``config_digest`` as featurecache hashed it before canonical JSON (with
        ``json.dumps``'s default separators): results keyed on it are the same results."""
        return hashlib.sha256(json.dumps(self._configs()).encode()).hexdigest()

    def _configs(self) -> list:
        """What the configuration digest hashes: each part's name and feature
        configuration, in order, and the per-part PCA."""
        configs = [
            [p.model, p.layer, e.provenance.get("config_digest")
             or json.dumps(e.provenance, sort_keys=True, default=str)]
            for p, e in zip(self.parts, self.entries, strict=True)
        ]  # fmt: skip
        return [configs, self.pca]

    def scaler(self, seed: int) -> PartScaler:
        """The unfitted per-part scaler of this set's concatenated rows."""
        return PartScaler(sizes=self.sizes, n_components=self.pca, random_state=seed)


class PartScaler(TransformerMixin, BaseEstimator):
    """Standardise (and optionally reduce by PCA) each part of concatenated columns on its own.

    Parameters
    ----------
    sizes : tuple of int
        The width of each part, in column order; they sum to ``n_features``.
    n_components : int or None
        Project each part wider than this on its first ``n_components`` principal
        components (at most ``n_samples``), fitted on the standardised part.
    random_state : int
        Seeds the PCA solver.

    Attributes
    ----------
    scalers_ : list of StandardScaler
    pcas_ : list of PCA or None
    n_features_in_ : int
    """

    def __init__(self, *, sizes=(), n_components=None, random_state=0):
        self.sizes = sizes
        self.n_components = n_components
        self.random_state = random_state

    def _slices(self, n_features: int) -> list[slice]:
        bounds = np.cumsum([0, *self.sizes])
        if int(bounds[-1]) != n_features:
            raise ValueError(
                f"PartScaler expects {int(bounds[-1])} columns (parts of {list(self.sizes)}); "
                f"X has {n_features}."
            )
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def fit(self, X, y=None):
        """Fit each part's scaler (and PCA) on ``X``'s rows."""
        X = np.asarray(X)
        self.n_features_in_ = X.shape[1]
        self.scalers_, self.pcas_ = [], []
        for part in self._slices(X.shape[1]):
            scaler = StandardScaler().fit(X[:, part])
            width = part.stop - part.start
            pca = None
            if self.n_components is not None and self.n_components < width:
                pca = PCA(
                    n_components=min(int(self.n_components), X.shape[0]),
                    random_state=self.random_state,
                ).fit(scaler.transform(X[:, part]))
            self.scalers_.append(scaler)
            self.pcas_.append(pca)
        return self

    def transform(self, X):
        """The parts, each scaled (and projected), concatenated in order."""
        check_is_fitted(self, "scalers_")
        X = np.asarray(X)
        out = []
        for part, scaler, pca in zip(
            self._slices(X.shape[1]), self.scalers_, self.pcas_, strict=True
        ):
            Z = scaler.transform(X[:, part])
            out.append(pca.transform(Z) if pca is not None else Z)
        return np.hstack(out)


# -- resolving the specs against a cache ----------------------------------------------


def resolve_sets(
    cache: Cache,
    specs: Sequence[str] | str | None,
    models: Sequence[str],
    *,
    pca: Any = None,
    owner: str = "fit",
) -> list[FeatureSet]:
    """The feature sets ``specs`` name among ``models`` of ``cache``.

    Parameters
    ----------
    cache : Cache
    specs : list of str, or one comma-separated str
        See the module docstring for the grammar.
    models : list of str
        The models fitted: a term without a model applies to each of them.
    pca : int, optional
        Components of each part's own PCA (>= 1).

    Returns
    -------
    list of FeatureSet
        In the order given, without duplicates; ``n_ok`` is 0 until ``fit`` counts the
        rows ok in every part.

    Raises
    ------
    ParameterError
        A spec that does not parse, names one layer, or names no model's layers.
    UnknownNameError
        A model or layer that is not in the cache, with close matches.
    """
    pca = check_optional_int(pca, "combine_pca", owner, low=1)
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    found: dict[tuple, FeatureSet] = {}
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise ParameterError("combine", owner, f"a list of feature sets ({GRAMMAR})", spec)
        for parts, name in _expand(cache, spec.strip(), list(models), owner):
            entries = tuple(cache.entry(p.model, p.layer) for p in parts)
            found.setdefault((name, parts), FeatureSet(name, parts, pca, entries))
    sets = list(found.values())
    _check_unique(cache, sets, owner)
    return sets


def _expand(cache: Cache, spec: str, models: list[str], owner: str) -> list[tuple[tuple, str]]:
    """``[(parts, name), ...]``: one set for a spec with a model, one per model without."""
    name, _, body = spec.rpartition("=")
    if name and not _NAME.match(name):
        raise ParameterError(
            "combine", owner, f"feature sets written {GRAMMAR}", spec,
            "A set's NAME holds letters, digits, '_', '.' and '-' only.",
        )  # fmt: skip
    terms = [_split_term(cache, t.strip(), spec, owner) for t in body.split("+")]
    if any(not layer for _, layer in terms):
        raise ParameterError("combine", owner, f"feature sets written {GRAMMAR}", spec,
                             "A term is empty.")  # fmt: skip
    first = terms[0][0]
    targets = [first] if first is not None else models
    expanded, missing = [], None
    for model in targets:
        parts, current = [], model
        try:
            for term_model, layer in terms:
                current = term_model or current
                parts.extend(_parts(cache, current, layer, spec, owner))
        except UnknownNameError as error:
            if first is not None:
                raise
            missing = error  # a set without a model applies to the models that have its layers
            continue
        if len(set(parts)) != len(parts) or len(parts) < 2:
            raise ParameterError(
                "combine", owner, f"feature sets of 2 or more distinct layers ({GRAMMAR})",
                spec, "Fit a single layer with `layers` instead.",
                cli_hint="Fit a single layer with --layers instead.",
            )  # fmt: skip
        label = name or _default_name(terms, parts)
        expanded.append((tuple(parts), label))
    if not expanded and missing is not None:
        raise missing
    if not expanded:
        raise ParameterError(
            "combine", owner, f"feature sets whose layers some fitted model has ({GRAMMAR})",
            spec, f"The models fitted are {', '.join(models)}; prefix a model: 'MODEL:LAYER'.",
        )  # fmt: skip
    return expanded


def _split_term(cache: Cache, term: str, spec: str, owner: str) -> tuple[str | None, str]:
    """``(model or None, layer)``: a prefix before ``:`` is a model when the cache has it."""
    model, colon, layer = term.partition(":")
    if colon and model in cache.models:
        return model, layer
    if colon and not any(term in cache.layers(m) for m in cache.models):
        raise UnknownNameError(
            f"feature set {spec!r} names model {model!r}, which is not in cache "
            f"{str(cache.path)!r}; it has {', '.join(cache.models)}."
            f"{suggest(model, cache.models)} Hint: run `featurecache ls {cache.path}`."
        )
    return None, term


def _parts(cache: Cache, model: str, layer: str, spec: str, owner: str) -> list[Part]:
    """The part ``layer`` names in ``model`` (``lastN``: its N deepest layers)."""
    layers = cache.layers(model)
    last = _LAST.match(layer)
    if last and layer not in layers:
        n = int(last.group(1))
        if n > len(layers):
            raise ParameterError(
                "combine", owner, f"a number of layers that model {model!r} has (1 to "
                f"{len(layers)})", spec,
            )  # fmt: skip
        return [Part(model, name) for name in layers[-n:]]
    if layer not in layers:
        raise UnknownNameError(
            f"feature set {spec!r} names layer {layer!r}, which model {model!r} does not have; "
            f"it has {', '.join(layers)}.{suggest(layer, layers)} "
            f"Hint: run `featurecache ls {cache.path}`."
        )
    return [Part(model, layer)]


def _default_name(terms: list[tuple[str | None, str]], parts: list[Part]) -> str:
    if len(terms) == 1:  # lastN
        return terms[0][1]
    if len({p.model for p in parts}) == 1:
        return "+".join(p.layer for p in parts)
    return "+".join(f"{p.model}:{p.layer}" for p in parts)


def _check_unique(cache: Cache, sets: list[FeatureSet], owner: str) -> None:
    """Refuse two sets recorded under one (model, layer), or a set named like a layer."""
    seen: dict[tuple[str, str], FeatureSet] = {}
    for s in sets:
        key = (s.model, s.name)
        clash = seen.get(key)
        if clash is not None or (s.model in cache.models and s.name in cache.layers(s.model)):
            raise ParameterError(
                "combine", owner, "feature sets with distinct names", s.name,
                f"Model {s.model!r} already has a layer or set of that name; name the set "
                "'NAME=...'.",
            )  # fmt: skip
        seen[key] = s


# -- rows -----------------------------------------------------------------------------


def load_set_rows(
    cache: Cache, feature_set: FeatureSet, wanted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated raw features of the rows among ``wanted`` ok in every part.

    Returns
    -------
    X : ndarray of shape (n_rows, n_features)
    rows : ndarray of shape (n_rows,)
        Their row indices, ascending.
    """
    loaded = [cache.load_rows(p.model, p.layer, wanted) for p in feature_set.parts]
    common = loaded[0][1]
    for _, rows in loaded[1:]:
        common = np.intersect1d(common, rows)
    blocks = []
    for X, rows in loaded:
        order = np.argsort(rows, kind="stable")
        blocks.append(X[order[np.searchsorted(rows, common, sorter=order)]])
    return np.hstack(blocks), common


def load_recorded_set(
    cache: Cache, recorded: Mapping[str, Any], split: str
) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated raw features and ids of a ``split``'s rows ok in every part of a set
    as a record holds it (``feature_set``: its ``parts`` with ``model`` and ``layer``)."""
    parts = tuple(Part(p["model"], p["layer"]) for p in recorded["parts"])
    wanted = (cache.splits == split) & ~cache.removed
    X, rows = load_set_rows(cache, FeatureSet(recorded["name"], parts, None, ()), wanted)
    return X, cache.ids[rows]


# -- what a head file records ---------------------------------------------------------


def set_parts(provenance: Mapping[str, Any]) -> list[dict] | None:
    """The parts a head file's provenance records (``model``, ``layer``, ``n_features``,
    ``provenance``), or ``None`` for a head fitted on one layer."""
    recorded = provenance.get("feature_set") if isinstance(provenance, Mapping) else None
    return list(recorded["parts"]) if recorded else None


# -- the report's comparison ----------------------------------------------------------


def set_comparison(table) -> list[dict]:
    """Each feature set of a results table against its best single part.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of ``results.csv`` with the records' ``feature_set`` column.

    Returns
    -------
    list of dict
        Per set (its best head by CV): ``set`` and ``part`` (the best single-part row by
        CV, or ``None`` when no part was fitted alone), ``gain`` (CV mean of the set minus
        that of the part), ``spread`` (the larger CV std of the two) and ``beats`` (the
        gain exceeds the spread).
    """
    from pipelines.results._results import best

    if "feature_set" not in table:
        return []
    is_set = table["feature_set"].map(lambda v: isinstance(v, Mapping))
    out = []
    for _, group in table[is_set].groupby(["model", "layer"], sort=False):
        chosen = best(group)
        parts = {(p["model"], p["layer"]) for p in chosen["feature_set"]["parts"]}
        in_parts = np.array(
            [(m, lay) in parts for m, lay in zip(table["model"], table["layer"], strict=True)]
        )
        singles = table[~is_set.to_numpy(bool) & in_parts]
        part = best(singles) if len(singles) else None
        if part is None:
            out.append({"set": chosen, "part": None, "gain": None, "spread": None,
                        "beats": None})  # fmt: skip
            continue
        gain = float(chosen["cv_mean"] - part["cv_mean"])
        spread = float(max(chosen["cv_std"], part["cv_std"]))
        out.append({"set": chosen, "part": part, "gain": gain, "spread": spread,
                    "beats": bool(gain > spread)})  # fmt: skip
    return out


def is_set(row) -> bool:
    """True for a results row (or record) fitted on a feature set."""
    return isinstance(row.get("feature_set"), Mapping)


def set_verdict(comparison: Mapping[str, Any]) -> str:
    """One sentence: does the set beat its best single part by more than the CV spread?"""
    chosen, part = comparison["set"], comparison["part"]
    name = f"`{chosen['model']} / {chosen['layer']}`"
    if part is None:
        return f"The feature set {name} has no part fitted alone to compare it with."
    against = (
        f"its best single part `{part['model']} / {part['layer']}` ({part['head']}, CV "
        f"{part['cv_mean']:.3f} ± {part['cv_std']:.3f})"
    )
    gain, spread = comparison["gain"], comparison["spread"]
    if comparison["beats"]:
        return (
            f"The feature set {name} ({chosen['head']}, CV {chosen['cv_mean']:.3f} ± "
            f"{chosen['cv_std']:.3f}) beats {against} by {gain:.3f}, more than the CV spread "
            f"(± {spread:.3f}): combining the layers helps."
        )
    return (
        f"The feature set {name} ({chosen['head']}, CV {chosen['cv_mean']:.3f} ± "
        f"{chosen['cv_std']:.3f}) does not beat {against} by more than the CV spread "
        f"(gain {gain:+.3f}, spread ± {spread:.3f}): the single layer is as good a choice."
    )
