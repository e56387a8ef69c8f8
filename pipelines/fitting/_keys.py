"""Result keys: what a combination's result depends on, and why a finished one is refitted.

A combination's key is the SHA-256 of the canonical JSON (:func:`featurecache.cache._format.
canonical_json`: sorted keys, no spaces) of its ``key_fields``: the samples digest, the
feature configuration, the exact feature rows read (``features_digest``), the head, its
grid, the selection, the folds and the seed, and what else changes the result (views, a
curve, a stored classifier, the memory budget out of core). A finished combination whose
record holds the same key is reused; :func:`refit_reasons` says, in words, why the others
are fitted again.

A feature set's configuration digest was hashed from ``json.dumps``'s default spelling
before it was hashed as canonical JSON; the same set under that spelling is the same
result, so a key also accepts the digest of its fields under the earlier spelling
(:attr:`Key.accepted`) and a results folder written before is reused as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from featurecache.cache import Cache, Entry, StoredClassifier
from featurecache.cache import _format as fmt
from pipelines.fitting._budget import Budget
from pipelines.fitting._plan import Plan
from pipelines.heads._fixed import FIXED_HEADS, stored_classifier
from pipelines.heads._heads import Head
from pipelines.results._feature_sets import FeatureSet
from pipelines.results._results import RECORD_VERSION, ResultsFolder, jsonable
from pipelines.rows._rows import features_digest
from pipelines.rows._views import Variant

__all__ = ["Key", "budget_key", "is_done", "protocol_key", "refit_reasons", "result_keys"]

#: How the fields of a key are named when they changed.
_FIELD_WORDS = {
    "samples_digest": "the sample table",
    "features": "the feature configuration",
    "n_ok": "the number of ok rows",
    "n_failed": "the number of failed rows",
    "n_features": "the layer's width",
    "selection": "the selection (val or CV)",
    "cv": "the number of CV folds",
    "seed": "the seed",
    "grid": "the grid",
    "shots": "the learning-curve shots",
    "draws": "the learning-curve draws",
    "views": "the views",
    "variant": "the variant",
    "classifier": "the stored classifier",
}


class Key(NamedTuple):
    """What a combination's result depends on (``fields``) and its digest (``key``).

    ``earlier`` holds the same fields as an earlier featurecache spelled them (a feature
    set's configuration digest); a record under one of their digests is the same result.
    """

    key: str
    fields: dict
    earlier: tuple[dict, ...] = ()

    @classmethod
    def of(cls, fields: dict, earlier: Sequence[dict] = ()) -> Key:
        """The key of ``fields`` (made JSON-ready): the SHA-256 of their canonical JSON."""
        fields = jsonable(fields)
        return cls(_digest(fields), fields, tuple(jsonable(dict(e)) for e in earlier))

    @property
    def accepted(self) -> tuple[str, ...]:
        """The digests a finished record may hold: :attr:`key`, then the earlier spellings'."""
        return (self.key, *(_digest(fields) for fields in self.earlier))

    def extended(self, extra: Mapping) -> Key:
        """This key with ``extra`` fields added (to its earlier spellings too)."""
        return Key.of({**self.fields, **extra}, [{**e, **extra} for e in self.earlier])


def _digest(value: Mapping | Sequence) -> str:
    return hashlib.sha256(fmt.canonical_json(value).encode()).hexdigest()


def is_done(
    results: ResultsFolder, model: str, layer: str, head: str, key: Key, variant: str = ""
) -> bool:
    """True when the combination is finished in ``results`` under one of ``key``'s digests."""
    return any(results.is_done(model, layer, head, k, variant) for k in key.accepted)


def result_keys(cache: Cache, plan: Plan) -> dict[tuple[str, str, str], Key]:
    """The :class:`Key` of every (model, layer, head) a fit of ``plan`` writes.

    Parameters
    ----------
    cache : Cache
    plan : Plan

    Returns
    -------
    dict
        ``{(model, layer, head): Key}``; a feature set under ``(set.model, set.layer, head)``.
    """
    keys = {}
    for model, layer in plan.combos:
        entry = cache.entry(model, layer)
        if plan.heads:
            digest = features_digest(cache, plan.rows[model, layer], plan.variant(model))
            for head in plan.heads:
                keys[model, layer, head.name] = _combo_key(cache, plan, entry, head, digest)
        for name in plan.fixed.get((model, layer), ()):
            classifier = stored_classifier(cache, model, FIXED_HEADS[name])
            digest = features_digest(cache, plan.rows[model, layer])
            keys[model, layer, name] = _fixed_key(cache, plan, entry, name, classifier, digest)
    for feature_set in plan.feature_sets if plan.heads else ():
        digest = _set_digest(cache, plan, feature_set)
        for head in plan.heads:
            keys[feature_set.model, feature_set.layer, head.name] = _combo_key(
                cache, plan, feature_set, head, digest
            )
    return keys


def budget_key(key: Key, budget: Budget) -> Key:
    """A combination's key out of core: the budget changes how its head is chosen."""
    return key.extended({"memory": budget.memory, "select_rows": budget.select_rows})


def protocol_key(cache: Cache, plan: Plan, entry: Entry | FeatureSet, name: str) -> Key:
    """The key of ``entry`` (a layer or a feature set) evaluated by the protocol ``name``."""
    digest = (
        _set_digest(cache, plan, entry)
        if isinstance(entry, FeatureSet)
        else features_digest(cache, plan.rows[entry.model, entry.layer])
    )
    fields = _key_fields(cache, plan, entry, name, digest)
    return _with_earlier(entry, {**fields, "n_features": entry.n_features})


def _combo_key(cache: Cache, plan: Plan, entry: Entry | FeatureSet, head: Head, digest: str) -> Key:
    """Everything that changes a fitted head's result."""
    key = {
        **_key_fields(cache, plan, entry, head.name, digest),
        "n_features": entry.n_features,
        "n_failed": entry.n_failed,
        "grid": jsonable(plan.grids[head.name]),
    }
    if plan.shots:  # without a curve the key stays what it was
        key["shots"], key["draws"] = list(plan.shots), plan.draws
    variant = plan.variant(entry.model)
    if not variant.is_plain:  # nor without views
        key["variant"] = variant.columns()
        key["views"] = plan.views_digest[entry.model]
    return _with_earlier(entry, key)


def _fixed_key(
    cache: Cache, plan: Plan, entry: Entry, name: str, classifier: StoredClassifier,
    digest: str,
) -> Key:  # fmt: skip
    """Everything that changes a fixed head's scores."""
    return Key.of(
        {**_key_fields(cache, plan, entry, name, digest), "classifier": classifier.digest()}
    )


def _with_earlier(entry: Entry | FeatureSet, fields: dict) -> Key:
    """The key of ``fields``; a feature set's also accepts its earlier configuration digest."""
    if not isinstance(entry, FeatureSet):
        return Key.of(fields)
    return Key.of(fields, [{**fields, "features": entry.earlier_config_digest}])


def _set_digest(cache: Cache, plan: Plan, feature_set: FeatureSet) -> str:
    """The features a set reads: the digest of each part's features, in the set's order."""
    return _digest([features_digest(cache, plan.rows[p.model, p.layer]) for p in feature_set.parts])


def _key_fields(
    cache: Cache, plan: Plan, entry: Entry | FeatureSet, head: str, digest: str
) -> dict:
    """What every result key holds: the data, the features, the head and the protocol.

    ``features_digest`` names the exact feature rows read (:func:`pipelines.rows._rows.features_digest`):
    a layer extracted again from other pixels, or rows added or left out, change it.
    """
    provenance = entry.provenance
    features = provenance.get("config_digest") or fmt.canonical_json(jsonable(provenance))
    return {
        "version": RECORD_VERSION,
        "samples_digest": cache.samples_digest,
        "model": entry.model,
        "layer": entry.layer,
        "features": features,
        "features_digest": digest,
        "n_ok": entry.n_ok,
        "head": head,
        "selection": plan.selection,
        "cv": plan.cv if plan.selection == "cv" else None,
        "seed": plan.seed,
    }


def refit_reasons(
    results: ResultsFolder, keys: Mapping[tuple[str, str, str], Key]
) -> dict[str, int]:
    """Why finished combinations of ``results`` are fitted again under ``keys``.

    Returns
    -------
    dict
        ``{reason: number of heads}``, one sentence per reason (empty when every finished
        combination is reused).
    """
    reasons: dict[str, int] = {}
    for (model, layer, head), key in keys.items():
        variant = Variant(**key.fields["variant"]).name if "variant" in key.fields else ""
        why = _refit_reason(results.record(model, layer, head, variant), key, results)
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
    return reasons


def _refit_reason(record: Mapping | None, key: Key, results: ResultsFolder) -> str | None:
    """Why the combination of ``record`` is fitted again under ``key``; ``None`` when it is
    new or reused."""
    if record is None:
        return None
    if record.get("key") in key.accepted:
        if (results.root / record.get("head_file", "")).is_file():
            return None
        return "their head files are missing"
    old = record.get("key_fields")
    if not isinstance(old, Mapping) or "features_digest" not in old:
        return (
            "they were fitted by an earlier featurecache, which did not record the features "
            "they read"
        )
    fields = key.fields
    if old.get("features_digest") != fields["features_digest"]:
        return f"the features of {fields['model']}/{fields['layer']} changed since they were fitted"
    changed = min(
        ([k for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k)]
         for now in (fields, *key.earlier)),
        key=len,
    )  # fmt: skip
    return f"{', '.join(_FIELD_WORDS.get(k, k) for k in changed)} changed since they were fitted"
