"""What the report decides: the rows it compares, the recommendation, and every verdict.

Ranking is :func:`pipelines.results._results.best`'s; this module asks it and judges the gaps.
Each verdict is decided once and read by every place that states it: whether an earlier
layer beat the penultimate one (:class:`EarlierLayer`: the recommendation's sentence and the
demo's one word), what a views or TTA variant gained over its reference
(:func:`views_gain`), and which cheaper combination is as good as the best within its CV
spread (:func:`cheaper_text`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from featurecache.cache import FeatureConfig
from pipelines.reporting._figures import gap_verdict
from pipelines.reporting._render import finite, fmt, number, params_text
from pipelines.results._feature_sets import is_set, set_comparison, set_verdict
from pipelines.results._results import best, best_per, frame
from pipelines.rows._views import PLAIN, Variant

__all__ = [
    "PENULTIMATE",
    "EarlierLayer",
    "earlier_layer",
    "earlier_layer_verdict",
    "recommendation",
    "results_table",
    "best_variants",
    "best_per_layer",
    "variant_of",
    "has_test",
    "variant_groups",
    "views_gain",
    "cheaper_text",
]

PENULTIMATE = "embedding"


# -- the rows compared ----------------------------------------------------------------


def results_table(records: list[dict]) -> pd.DataFrame:
    """The records in display order, with the chosen hyper-parameters as text."""
    table = frame(records)
    return table.assign(params_text=table["params"].map(params_text))


def best_variants(table: pd.DataFrame) -> pd.DataFrame:
    """The best variant (plain, views, TTA) of each (model, layer, head), by
    :func:`~pipelines.results._results.best`: one row each, as the other sections expect."""
    return best_per(table, ["model", "layer", "head"])


def best_per_layer(table: pd.DataFrame) -> pd.DataFrame:
    """For each (model, layer), the best head (by :func:`~pipelines.results._results.best`)."""
    return best_per(table, ["model", "layer"])


def variant_of(row: pd.Series) -> Variant:
    """The row's variant; a row without the columns (written before views) is plain."""
    return Variant(
        **{column: row.get(column, plain) for column, plain in Variant().columns().items()}
    )


def has_test(table: pd.DataFrame) -> bool:
    """True when any combination was scored on a test split."""
    return bool(table["test_accuracy"].notna().any())


# -- the recommendation ---------------------------------------------------------------


def recommendation(table: pd.DataFrame, chosen: pd.Series) -> str:
    """One plain paragraph: the chosen backbone, layer and head, and whether an earlier layer
    beat the penultimate ``embedding`` (:func:`earlier_layer`)."""
    test = (
        f", test accuracy {chosen['test_accuracy']:.3f}"
        if finite(chosen["test_accuracy"])
        else " (no test split: CV only)"
    )
    variant = variant_of(chosen)
    trained = "" if variant.is_plain else f", {variant.label}"
    text = (
        f"Use backbone **{chosen['model']}**, layer **{chosen['layer']}** and head "
        f"**{chosen['head']}** ({chosen['params_text']}{trained}): CV accuracy "
        f"{chosen['cv_mean']:.3f} ± "
        f"{fmt(chosen['cv_std'])}{test}."
    )
    if is_set(chosen):
        return f"{text} " + next(
            set_verdict(c) for c in set_comparison(table) if c["set"].name == chosen.name
        )
    return text + earlier_layer(table, chosen).sentence()


@dataclass(frozen=True)
class EarlierLayer:
    """Whether an earlier layer of the chosen model beat its penultimate layer, decided once.

    :func:`earlier_layer` builds it; the recommendation's sentence (:meth:`sentence`) and the
    one word the demo prints (:attr:`verdict`) are both read from it.

    Attributes
    ----------
    chosen : pandas.Series
        The best combination.
    case : str
        ``"no penultimate"`` (no layer named ``embedding`` was fitted for its model),
        ``"only penultimate"`` (no other layer was), ``"penultimate"`` (the penultimate layer
        was chosen; ``rival`` is the best earlier layer) or ``"earlier"`` (an earlier layer
        was chosen; ``rival`` is the best head on the penultimate layer).
    rival : pandas.Series or None
        What the chosen combination is compared with; ``None`` when nothing is.
    gap : float
        CV mean of ``chosen`` minus that of ``rival``.
    spread : float
        The larger CV std of the two (0 unless ``case`` is ``"earlier"``).
    outcome, judgement : str
        :func:`~pipelines.reporting._figures.gap_verdict` of ``gap`` against ``spread``.
    """

    chosen: pd.Series
    case: str
    rival: pd.Series | None = None
    gap: float = 0.0
    spread: float = 0.0
    outcome: str = ""
    judgement: str = ""

    @property
    def verdict(self) -> str:
        """``"yes"``, ``"no"``, ``"tie"`` or ``"not reliably"`` (higher, by less than the CV
        spread): the sentence's own words."""
        if self.case != "earlier":
            return "no"
        if self.outcome == "tie":
            return "tie"
        return "not reliably" if self.judgement == "not a reliable difference" else "yes"

    def sentence(self) -> str:
        """The recommendation's words on the penultimate layer, with a leading space."""
        if self.case == "no penultimate":
            return (
                f" No layer named `{PENULTIMATE}` was fitted for {self.chosen['model']}, so the "
                "penultimate layer cannot be compared."
            )
        if self.case == "only penultimate":
            return f" Only the penultimate layer `{PENULTIMATE}` was fitted."
        if self.case == "penultimate":
            return _penultimate_won(self)
        return _earlier_won(self)


def earlier_layer(table: pd.DataFrame, chosen: pd.Series) -> EarlierLayer:
    """Compare the chosen combination with the penultimate layer ``embedding`` of its model:
    the best earlier layer when ``embedding`` was chosen, else the best head on it."""
    model_rows = table[table["model"] == chosen["model"]]
    penultimate = model_rows[model_rows["layer"] == PENULTIMATE]
    if penultimate.empty:
        return EarlierLayer(chosen, "no penultimate")
    if chosen["layer"] == PENULTIMATE:
        earlier = model_rows[model_rows["layer"] != PENULTIMATE]
        if earlier.empty:
            return EarlierLayer(chosen, "only penultimate")
        rival, case, spread = best(earlier), "penultimate", 0.0
    else:
        rival, case = best(penultimate), "earlier"
        spread = max(number(chosen["cv_std"]), number(rival["cv_std"]))
    gap = chosen["cv_mean"] - rival["cv_mean"]
    outcome, judgement = gap_verdict(gap, spread)
    return EarlierLayer(chosen, case, rival, gap, spread, outcome, judgement)


def earlier_layer_verdict(table: pd.DataFrame, chosen: pd.Series) -> str:
    """Did an earlier layer beat the penultimate one? :attr:`EarlierLayer.verdict` of
    :func:`earlier_layer`: ``"yes"``, ``"no"``, ``"tie"`` or ``"not reliably"``."""
    return earlier_layer(table, chosen).verdict


def _penultimate_won(decision: EarlierLayer) -> str:
    runner, gap = decision.rival, decision.gap
    if decision.outcome == "tie":
        return (
            f" No earlier layer beat the penultimate layer `{PENULTIMATE}`; the best earlier "
            f"layer, `{runner['layer']}`, tied with it in CV accuracy ({gap:.3f} apart; the tie "
            "rule ranked the penultimate layer first)."
        )
    return (
        f" No earlier layer beat the penultimate layer `{PENULTIMATE}`; the best earlier "
        f"layer, `{runner['layer']}`, scored {gap:.3f} lower in CV accuracy."
    )


def _earlier_won(decision: EarlierLayer) -> str:
    """How the chosen earlier layer compares with the best head on the penultimate one."""
    chosen, top = decision.chosen, decision.rival
    gap, spread, judgement = decision.gap, decision.spread, decision.judgement
    against = f"`{PENULTIMATE}` ({top['cv_mean']:.3f} with {top['head']})"
    if decision.outcome == "tie":
        return (
            f" An earlier layer tied with the penultimate one: `{chosen['layer']}` and {against} "
            f"differ by {gap:.3f} in CV accuracy, so it ranks first only by the tie rule (lower "
            "CV std, then fewer features, then the names); either layer is as good a choice."
        )
    if spread <= 0:
        size = "and the CV spread is zero"
    else:
        size = f"{gap / spread:.1f}× the CV spread (± {spread:.3f})"
    if judgement == "not a reliable difference":
        return (
            f" An earlier layer scored higher than the penultimate one, but not reliably: "
            f"`{chosen['layer']}` scored {gap:.3f} higher in CV accuracy than {against}, {size}: "
            "smaller than the CV spread, so it is not a reliable difference; the penultimate "
            "layer is as good a choice."
        )
    verdict = (
        "larger than the CV spread, so the gain is likely real"
        if judgement == "likely real"
        else "comparable to the CV spread, so the gain is suggestive only"
    )
    return (
        f" An earlier layer beat the penultimate one: `{chosen['layer']}` scored {gap:.3f} "
        f"higher in CV accuracy than {against}, {size}" + (f": {verdict}." if spread > 0 else ".")
    )


# -- views and TTA --------------------------------------------------------------------


def variant_groups(table: pd.DataFrame):
    """``table`` grouped by (features, layer, head), each group plain first: the features
    are the model's config without its views, so a views model stored under its own name
    meets the plain model it extends."""
    keyed = table.assign(_features=[_plain_features(row) for _, row in table.iterrows()])
    keyed = keyed.sort_values(["n_views", "n_tta", "tta"], kind="mergesort")
    groups = keyed.groupby(["_features", "layer", "head"], sort=False)
    order = {key: i for i, key in enumerate(dict.fromkeys(zip(
        keyed.loc[table.index, "_features"], table["layer"], table["head"], strict=True)))}  # fmt: skip
    return sorted(groups, key=lambda item: order[item[0]])


def _plain_features(row: pd.Series) -> str:
    """The digest of the row's feature config with its views left out (its model name when
    the record has no config)."""
    provenance = row.get("provenance")
    config = provenance.get("config") if isinstance(provenance, dict) else None
    try:
        values = json.loads(config) if isinstance(config, str) else config
        return FeatureConfig.from_dict({**values, "views": {}}).digest()
    except (TypeError, ValueError, KeyError, AttributeError):
        return f"model:{row['model']}"


def views_gain(row: pd.Series, variant: Variant, group: pd.DataFrame) -> tuple[str, str]:
    """``(gain, verdict)`` of a variant over its reference: plain for views (in CV), the
    same training without TTA for TTA (on test)."""
    if variant.is_plain:
        return "reference", ""
    same = group["tta"] == PLAIN
    plain = group[same & (group["views"] == PLAIN)]
    if variant.tta == PLAIN:
        reference, score, where = plain, "cv_mean", "CV"
    else:
        trained = same & (group["views"] == variant.views) & (group["model"] == row["model"])
        reference = group[trained] if trained.any() else plain
        score, where = "test_accuracy", "test"
    if reference.empty:
        return "", "no plain fit of this head to compare with: fit without views or tta"
    ref = reference.iloc[0]
    if not (finite(row[score]) and finite(ref[score])):
        return "", "no test split to score TTA on"
    gap = float(row[score] - ref[score])
    spread = max(number(row["cv_std"]), number(ref["cv_std"]))
    outcome, judgement = gap_verdict(gap, spread)
    shown = f"{gap:+.3f} {where}"
    if where == "CV" and finite(row["test_accuracy"]) and finite(ref["test_accuracy"]):
        shown += f" ({row['test_accuracy'] - ref['test_accuracy']:+.3f} test)"
    shown += f" over {variant_of(ref).label}"
    shown += f" ({ref['model']})" if ref["model"] != row["model"] else ""
    if outcome == "tie":
        return shown, "no difference"
    size = f"{abs(gap) / spread:.1f}× the spread (± {spread:.3f})" if spread > 0 else "spread 0"
    sense = "gain" if gap > 0 else "loss"
    return shown, f"{sense} {size}: {judgement}"


# -- cost -----------------------------------------------------------------------------


def cheaper_text(table: pd.DataFrame, chosen: pd.Series) -> str:
    """Name the cheapest combination whose CV mean is within the best's CV spread."""
    floor = chosen["cv_mean"] - number(chosen["cv_std"])
    near = table[(table["cv_mean"] >= floor) & ~((table["model"] == chosen["model"])
                 & (table["layer"] == chosen["layer"]) & (table["head"] == chosen["head"]))]  # fmt: skip
    cheaper = [r for _, r in near.iterrows() if _cheaper(r, chosen)]
    if not cheaper:
        return ("No combination within the CV spread of the best is cheaper to fit and run; "
                "the recommendation stands.")  # fmt: skip
    pick = min(cheaper, key=_cost_key)
    return (
        f"A cheaper choice within the CV spread of the best (CV ≥ {floor:.3f}): "
        f"**{pick['model']} / {pick['layer']} / {pick['head']}**, CV {pick['cv_mean']:.3f}, "
        f"{int(pick['n_features'])} features, fit {fmt(pick['fit_seconds'], 2)} s and "
        f"{fmt(pick['predict_seconds_per_1000'], 4)} s per 1,000 predictions, against "
        f"{int(chosen['n_features'])} features, {fmt(chosen['fit_seconds'], 2)} s and "
        f"{fmt(chosen['predict_seconds_per_1000'], 4)} s for the best."
    )


_COSTS = ("n_features", "predict_seconds_per_1000", "fit_seconds")


def _cost_key(row: pd.Series) -> tuple:
    """Feature width, then prediction time, then fit time: the order "cheaper" weighs them."""
    return tuple(number(row[c], math.inf) for c in _COSTS)


def _cheaper(row: pd.Series, than: pd.Series) -> bool:
    """No dearer on width, prediction or fit time, and cheaper on at least one of them."""
    mine, theirs = _cost_key(row), _cost_key(than)
    return all(a <= b for a, b in zip(mine, theirs, strict=True)) and mine != theirs
