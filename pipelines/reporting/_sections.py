"""What the report says, section by section, as blocks (:mod:`pipelines.reporting._render`).

:func:`report_blocks` lays the sections out in their order; each section is a function of
the results (the run, its table of combinations, the best one) that returns its heading,
text, :class:`~pipelines.reporting._render.Table` and :class:`~pipelines.reporting._render.Figure` blocks. What
to recommend and every verdict come from :mod:`pipelines.reporting._decisions`, the pictures from
:mod:`pipelines.reporting._figures`, and the sections that read the cache from
:mod:`pipelines.reporting._cache_sections`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from featurecache.cache import Cache
from pipelines.heads._shots import curve_summary
from pipelines.reporting._cache_sections import best_details, imagenet_blocks
from pipelines.reporting._decisions import (
    best_per_layer,
    cheaper_text,
    has_test,
    recommendation,
    variant_groups,
    variant_of,
    views_gain,
)
from pipelines.reporting._figures import (
    confusion_figure,
    depth_figure,
    heads_figure,
    heatmap_figure,
    layer_depth_figure,
    layer_names_differ,
    learning_curve_figure,
)
from pipelines.reporting._render import TITLE, Figure, Table, finite, fmt, number, params_text
from pipelines.results._feature_sets import is_set, set_comparison, set_verdict
from pipelines.results._results import ResultsFolder, best, best_per
from pipelines.rows._rows import SPLIT_ORDER
from pipelines.rows._views import PLAIN

__all__ = ["report_blocks", "strategy_blocks"]


def report_blocks(
    run: dict,
    table: pd.DataFrame,
    records: list[dict],
    chosen: pd.Series,
    predictions: pd.DataFrame | None,
    folder: ResultsFolder,
    cache: Cache | None,
    variants: pd.DataFrame,
) -> list:
    """Every section of the report, in order.

    Parameters
    ----------
    run : dict
        The results folder's ``run.json``.
    table : pandas.DataFrame
        The best variant of each (model, layer, head) (:func:`~pipelines.reporting._decisions.best_variants`).
    records : list of dict
        The finished records, as the results folder holds them.
    chosen : pandas.Series
        The best combination (:func:`~pipelines.results._results.best` of ``table``).
    predictions : pandas.DataFrame or None
        Its test predictions; ``None`` without a test split.
    folder : ResultsFolder
        The results folder (its learning curves).
    cache : Cache or None
        The cache the results were fitted on; ``None`` when it cannot be read here.
    variants : pandas.DataFrame
        Every combination, each variant (views, TTA) on its own row.

    Returns
    -------
    list
        The blocks, ready for :func:`~pipelines.reporting._render.to_markdown` and ``to_html``.
    """
    with_test = has_test(table)
    class_names = run["data"]["class_names"]
    blocks: list = [("h1", TITLE)]
    blocks += [("h2", "Recommendation"), ("p", recommendation(table, chosen))]
    blocks += [("h2", "Protocol"), ("p", _protocol_text(run, variants, with_test))]
    blocks += strategy_blocks(variants, run)
    blocks += [("h2", "Data"), _data_table(run)] + [("p", text) for text in _rows_text(run)]
    blocks += [("p", f"Cache: `{run['cache']}` (samples digest `{run['samples_digest'][:16]}…`).")]
    blocks += _warnings(table)
    layers = table[[not is_set(row) for _, row in table.iterrows()]]  # feature sets: below
    blocks += [("h2", "Model × layer")] + _comparison(layers, with_test)
    blocks += [("h2", "Accuracy versus layer depth"), _depth_plot(layers, with_test)]
    blocks += [("h2", "Heads compared"), _heads_plot(table, with_test), _heads_table(table)]
    blocks += _feature_set_blocks(table)
    blocks += _views_blocks(variants)
    variant = variant_of(chosen)
    shown = "" if variant.is_plain else f" ({variant.label})"
    blocks += [
        (
            "h2",
            f"Best combination: {chosen['model']} / {chosen['layer']} / {chosen['head']}{shown}",
        )
    ]
    if predictions is not None and len(predictions):
        matrix = _confusion(predictions, len(class_names))
        blocks += [_confusion_plot(matrix, class_names), _confused_pairs(matrix, class_names)]
        blocks += best_details(run, chosen, predictions, cache)
    else:
        blocks += [
            ("p", "No test split, so no confusion matrix: nothing was scored on held-out data.")
        ]
    blocks += [("h3", "Candidates of the best combination"), _candidates_table(chosen)]
    blocks += _curves(folder, table, chosen)
    blocks += _baselines(table)
    blocks += imagenet_blocks(cache, table)
    blocks += [("h2", "All combinations and chosen hyper-parameters"), _all_table(table)]
    blocks += _cost(table, records, chosen)
    blocks += [("h2", "Fit times"), ("p", _fit_time_text(table)), _fit_time_table(table)]
    blocks += [("h2", "Provenance of the features")] + _provenance(records)
    return blocks


def strategy_blocks(table: pd.DataFrame, run: dict) -> list:
    """How the heads fitted out of core were chosen and refitted, on how many rows; nothing
    when every head was fitted in memory."""
    if "strategy" not in table:
        return []
    streamed = table[table["strategy"].fillna("in memory") != "in memory"]
    if streamed.empty:
        return []
    budget = run.get("arguments", {}).get("memory")
    within = f" of {budget / (1 << 30):.2f} GiB" if budget else ""
    rows = tuple(
        (r["model"], r["layer"], r["head"], str(r["strategy"]), f"{int(r['n_select']):,}",
         f"{int(r['n_refit']):,}")
        for _, r in streamed.iterrows()
    )  # fmt: skip
    text = (
        f"{len(streamed)} of {len(table)} combinations were fitted out of core: their layers "
        f"exceed the memory budget{within} in memory, so their rows were streamed "
        "(docs/out-of-core.md). Each says how its hyper-parameters were chosen and on how many "
        "rows it was refitted; a head chosen on a sample has its CV measured on that sample."
    )
    header = ("model", "layer", "head", "strategy", "chosen on (rows)", "refit on (rows)")
    return [("h3", "Fitted out of core"), ("p", text), Table(header, rows)]


def _protocol_text(run: dict, table: pd.DataFrame, with_test: bool) -> str:
    protocol = run.get("protocol", {})
    text = (
        f"Hyper-parameters were {protocol.get('selection', 'chosen on training data')}; the chosen "
        f"head was refitted on {protocol.get('refit', 'train')} and "
    )
    if with_test:
        text += (
            "scored once on the test split. Nothing was selected on test: the best combination "
            "below is the one with the best CV score, and test accuracy is only reported."
        )
    else:
        text += (
            "not scored on held-out data: **this cache has no test split**, so every number in "
            "this report is a cross-validation (or validation) score, which is optimistic for "
            "the chosen combination."
        )
    return text + _variants_text(table) + _named_text(protocol)


def _named_text(protocol: dict) -> str:
    """The named protocol and the feature sets of the run, in its own words; ``""`` when
    neither."""
    text = ""
    if protocol.get("named"):
        text += (
            f" Protocol **{protocol['named']}**: {protocol['named_description']} (its results "
            "carry its name as their head; its CV columns are its own validation score)."
        )
    if protocol.get("feature_sets"):
        text += f" Feature sets: {protocol['feature_sets']}."
    return text


def _variants_text(table: pd.DataFrame) -> str:
    """What the variants of the folder did, in the protocol's words; ``""`` when all plain."""
    text = ""
    if "views" in table and (table["views"] != PLAIN).any():
        text += (
            " Combinations marked *views* were trained on every augmented view of every "
            "training row, their folds drawn per sample (no view of a held-out image in "
            "training; held-out rows scored on their plain view), and refitted on every view."
        )
    if "tta" in table and (table["tta"] != PLAIN).any():
        text += (
            " Combinations marked *TTA* scored each test row on the mean over its test-time "
            "views (`mean-proba`: of the predicted probabilities, or of the decision scores "
            "for heads without them; `mean-feature`: of the features); their CV is that of "
            "the same head without TTA."
        )
    return text


def _feature_set_blocks(table: pd.DataFrame) -> list:
    """Each feature set against its best single part; empty without feature sets."""
    compared = set_comparison(table)
    if not compared:
        return []
    rows = tuple(
        (
            c["set"]["model"], c["set"]["layer"],
            " + ".join(f"{p['model']}/{p['layer']}" for p in c["set"]["feature_set"]["parts"]),
            c["set"]["head"], f"{fmt(c['set']['cv_mean'])} ± {fmt(c['set']['cv_std'])}",
            fmt(c["set"]["test_accuracy"]),
            "" if c["part"] is None else f"{c['part']['model']}/{c['part']['layer']} "
            f"({c['part']['head']}, {fmt(c['part']['cv_mean'])})",
            "" if c["gain"] is None else f"{c['gain']:+.3f} (spread ± {c['spread']:.3f})",
        )
        for c in compared
    )  # fmt: skip
    header = ("model", "feature set", "parts", "head", "CV mean ± std", "test acc.",
              "best single part", "CV gain")  # fmt: skip
    text = (
        "A feature set concatenates layers, each standardised on its own (inside every CV "
        "fold) and optionally reduced by its own PCA; it is selected like a layer. Its gain "
        "is judged against the CV spread (the larger CV std of the set and its best part)."
    )
    return [("h2", "Feature sets"), ("p", text), Table(header, rows)] + [
        ("p", set_verdict(c)) for c in compared
    ]


def _data_table(run: dict) -> Table:
    data = run["data"]
    counts = data["counts"]
    splits = list(counts)
    header = ("class", *splits)
    rows = [(name, *[str(counts[s].get(name, 0)) for s in splits]) for name in data["class_names"]]
    rows.append(("**total**", *[str(sum(counts[s].values())) for s in splits]))
    return Table(header, tuple(rows))


def _rows_text(run: dict) -> list[str]:
    """Paragraphs stating the rows the fits could not use, with exact counts: pending (not
    extracted when fit ran), failed (unreadable images) and removed, by model and layer."""
    rows = run.get("rows")
    if rows is None:  # a results folder written before fit recorded row counts
        return [_failed_text(run)]
    groups: dict[tuple, list[str]] = {}
    for combo in rows["combinations"]:
        pending = ", ".join(
            f"{split or '(no split)'} {n['pending']}"
            for split, n in sorted(combo["splits"].items(), key=lambda kv: _split_key(kv[0]))
            if n["pending"]
        )
        key = (combo["model"], combo["n_samples"], combo["ok"], combo["failed"],
               combo["pending"], combo["removed"] + combo.get("stale", 0), pending,
               combo.get("stale", 0))  # fmt: skip
        groups.setdefault(key, []).append(combo["layer"])
    if all(key[3] == key[4] == key[5] == 0 for key in groups):
        n = next(iter(groups))[1] if groups else run["data"]["n_samples"]
        return [
            f"Rows: every sample was extracted for every model and layer fitted ({n} ok of "
            f"{n}); 0 failed, 0 pending, 0 removed."
        ]
    parts = []
    for (model, n, ok, failed, pending, retired, by_split, stale), layers in groups.items():
        where = f"{model} (layer{'s' if len(layers) > 1 else ''} {', '.join(layers)})"
        split_text = f" ({by_split})" if by_split else ""
        stale_text = f", {stale} stale (superseded by a newer row)" if stale else ""
        parts.append(
            f"{where}: {ok} of {n} rows ok, {pending} pending{split_text}, {failed} failed, "
            f"{retired - stale} removed{stale_text}"
        )
    texts = ["Rows the fits used and left out: " + "; ".join(parts) + "."]
    if any(key[4] for key in groups):
        texts.append(
            "**The cache was partial when fit ran** (fit was asked to go ahead: "
            "`allow_partial=True`, `--allow-partial`): pending rows had not been extracted yet "
            "and are in no fit, so every number in this report comes from part of the data. "
            "Finish the extraction and re-run fit for the full result."
        )
    if any(key[3] for key in groups):
        texts.append(_failed_text(run))
    return texts


def _split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.get(split, 3), split)


def _failed_text(run: dict) -> str:
    """How many rows failed extraction (unreadable images); fits never use them."""
    failed = run["data"].get("failed", {})
    if not any(failed.values()):
        return "Failed rows: 0 (every sample was extracted)."
    parts = []
    for model, rows in failed.items():
        shown = ", ".join(f"`{sample_id}` ({reason})" for sample_id, reason in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        parts.append(f"{model}: {len(rows)} failed rows excluded from every fit: {shown}{more}")
    return "Failed rows (see `featurecache ls CACHE`): " + "; ".join(parts) + "."


def _warnings(table: pd.DataFrame) -> list:
    doubts = table[table["warnings"].fillna("").astype(str).str.len() > 0]
    if doubts.empty:
        return []
    rows = tuple((r["model"], r["layer"], r["head"], str(r["warnings"]))
                 for _, r in doubts.iterrows())  # fmt: skip
    return [("h2", "Warnings"), Table(("model", "layer", "head", "warning"), rows)]


def _comparison(table: pd.DataFrame, with_test: bool) -> list:
    """The heatmap when every model has the same layers; else a depth-aligned figure."""
    cells = best_per_layer(table)
    if not layer_names_differ(cells):
        return [_heatmap(table, with_test)]
    score = "test_accuracy" if with_test else "cv_mean"
    what = "test accuracy" if with_test else "CV accuracy"
    winners = best_per(cells, ["model"]).sort_values("model")
    figure = Figure(
        "depth_aligned",
        f"{what} of the best head (by CV) at each layer, layers placed on their relative depth "
        "in the backbone: the models have different layer names, so they are compared by depth. "
        "Each backbone's best layer by CV is ringed.",
        depth_figure(
            cells, score, what, dict(zip(winners["model"], winners["layer"], strict=True))
        ),
    )
    rows = []
    for _, r in winners.iterrows():
        depth = f"{r['depth']:.2f}" if finite(r["depth"]) else "unknown"
        rows.append((r["model"], r["layer"], depth, r["head"], fmt(r["cv_mean"]),
                     fmt(r["test_accuracy"])))  # fmt: skip
    header = ("backbone", "best layer", "depth", "head", "CV", "test")
    return [figure, ("p", "The best layer of each backbone (by CV):"), Table(header, tuple(rows))]


def _heatmap(table: pd.DataFrame, with_test: bool) -> Figure:
    score, label = ("test_accuracy", "test accuracy") if with_test else ("cv_mean", "CV accuracy")
    what = "test accuracy" if with_test else "CV accuracy (no test split)"
    return Figure(
        "heatmap",
        f"{what} of each model × layer, with the head that has the best CV score in that cell "
        "(heads are chosen on CV, never on test).",
        heatmap_figure(best_per_layer(table), score, label),
    )


def _depth_plot(table: pd.DataFrame, with_test: bool) -> Figure:
    return Figure(
        "depth",
        "Accuracy of the best head (by CV) at each layer; error bars are the CV standard deviation"
        + (", crosses the test accuracy." if with_test else "."),
        layer_depth_figure(best_per_layer(table), with_test),
    )


def _heads_plot(table: pd.DataFrame, with_test: bool) -> Figure:
    return Figure(
        "heads",
        "Heads side by side at every model / layer: bars are CV accuracy ± std"
        + (", black ticks the test accuracy." if with_test else "."),
        heads_figure(table, with_test),
    )


def _heads_table(table: pd.DataFrame) -> Table:
    rows = []
    for _, group in table.groupby("head_order", sort=True):
        top = best(group)
        rows.append(
            (
                top["head"],
                f"{top['model']} / {top['layer']}",
                f"{top['cv_mean']:.3f} ± {fmt(top['cv_std'])}",
                fmt(top["test_accuracy"]),
                fmt(top["test_balanced_accuracy"]),
                fmt(top["test_macro_f1"]),
                f"{top['fit_seconds']:.1f}",
            )
        )
    return Table(
        (
            "head",
            "best model / layer (by CV)",
            "CV",
            "test acc.",
            "balanced acc.",
            "macro-F1",
            "fit s",
        ),
        tuple(rows),
    )


def _views_blocks(table: pd.DataFrame) -> list:
    """Plain against views, with and without TTA, for each (features, layer, head) with a
    variant; empty when every combination is plain."""
    if ((table["views"] == PLAIN) & (table["tta"] == PLAIN)).all():
        return []
    rows = []
    for _, group in variant_groups(table):
        for _, row in group.iterrows():
            rows.append(_views_row(row, group))
    text = (
        "Every variant of a head is selected on the same folds and scores the held-out "
        "samples on their plain view, so a CV gain of training on views is a paired "
        "comparison; TTA changes test scoring only, so its gain is a test gain, over the "
        "same head without TTA. Views stored under another model name (the same backbone, "
        "weights and preprocessing) are compared with the plain model. A gain is judged "
        "against the CV spread (the larger CV std of the two): at least 2× is likely real, "
        "1–2× suggestive, below 1× not a reliable difference."
    )
    header = ("model", "layer", "head", "variant", "CV mean ± std", "test acc.", "gain",
              "against the CV spread", "fit s")  # fmt: skip
    return [("h2", "Augmented views and test-time augmentation"), ("p", text),
            Table(header, tuple(rows))]  # fmt: skip


def _views_row(row: pd.Series, group: pd.DataFrame) -> tuple[str, ...]:
    variant = variant_of(row)
    cells = (row["model"], row["layer"], row["head"], variant.label,
             f"{row['cv_mean']:.3f} ± {fmt(row['cv_std'])}", fmt(row["test_accuracy"]))  # fmt: skip
    gain, verdict = views_gain(row, variant, group)
    return (*cells, gain, verdict, fmt(row["fit_seconds"], 2))


def _confusion(predictions: pd.DataFrame, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (predictions["y_true"].to_numpy(int), predictions["y_pred"].to_numpy(int)), 1)
    return matrix


def _confusion_plot(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    return Figure(
        "confusion",
        "Confusion matrix of the best combination on the test split (counts; colour: row fraction).",
        confusion_figure(matrix, class_names),
    )


def _confused_pairs(matrix: np.ndarray, class_names: Sequence[str], top: int = 5) -> Table:
    pairs = []
    n = len(class_names)
    for i in range(n):
        for j in range(i + 1, n):
            count = int(matrix[i, j] + matrix[j, i])
            if count:
                pairs.append(
                    (-count, class_names[i], class_names[j], int(matrix[i, j]), int(matrix[j, i]))
                )
    pairs.sort()
    rows = tuple(
        (f"{a} ↔ {b}", str(-c), f"{a}→{b}: {ab}, {b}→{a}: {ba}") for c, a, b, ab, ba in pairs[:top]
    )
    return Table(
        ("most confused pair", "errors", "directions"), rows or (("(no errors)", "0", ""),)
    )


def _candidates_table(chosen: pd.Series) -> Table:
    rows = tuple(
        (
            params_text(c["params"]),
            f"{c['mean']:.4f}",
            fmt(c["std"], 4),
            " ".join(f"{s:.3f}" for s in c["scores"]),
        )
        for c in chosen["candidates"]
    )
    return Table(("candidate", "CV mean", "CV std", "per fold"), rows)


def _curves(folder: ResultsFolder, table: pd.DataFrame, chosen: pd.Series) -> list:
    """Learning curves of the best combination and of the best combination of each head."""
    curves = folder.curves()
    if curves.empty:
        return []
    lines = {}
    picks = [chosen, *[r for _, r in best_per(table, ["head"]).iterrows()]]
    for pick in picks:
        label = f"{pick['model']} / {pick['layer']} / {pick['head']}"
        mine = curves[(curves["model"] == pick["model"]) & (curves["layer"] == pick["layer"])
                      & (curves["head"] == pick["head"])]  # fmt: skip
        if mine.empty or label in lines:
            continue
        points = [(k, *curve_summary(group["test_accuracy"].tolist()))
                  for k, group in mine.groupby("shots")]  # fmt: skip
        if finite(pick["test_accuracy"]):  # the full training set, as the last point
            n_classes = mine["n_train"].iloc[0] / mine["shots"].iloc[0]
            points.append((float(pick["n_train"]) / n_classes, float(pick["test_accuracy"]), 0.0))
        lines[label] = points
    if not lines:
        return []
    rows = tuple(
        (label, *(f"{k:g}: {m:.3f} ± {h:.3f}" for k, m, h in sorted(points)))
        for label, points in lines.items()
    )
    width = max(len(r) for r in rows)
    rows = tuple(r + ("",) * (width - len(r)) for r in rows)
    draws = int(curves["draw"].max()) + 1
    figure = Figure(
        "learning_curve",
        f"Test accuracy against training images per class (mean of {draws} draws, 95 % "
        "interval); hyper-parameters chosen inside each draw. The last point of each line is "
        "the full training set.",
        learning_curve_figure(lines),
    )
    header = ("combination", *[f"point {i + 1}" for i in range(width - 1)])
    return [("h2", "Learning curves"), figure, Table(header, rows)]


def _baselines(table: pd.DataFrame) -> list:
    """Fixed-classifier heads (zero-shot, out-of-the-box ImageNet...): shown, not searched."""
    fixed = table[table["selection"] == "fixed"]
    if fixed.empty:
        return []
    rows = tuple((r["model"], r["layer"], r["head"], fmt(r["test_accuracy"]))
                 for _, r in fixed.iterrows())  # fmt: skip
    return [("h2", "Baselines"),
            ("p", "Heads with a fixed classifier (nothing fitted on these samples):"),
            Table(("model", "layer", "head", "test"), rows)]  # fmt: skip


def _all_table(table: pd.DataFrame) -> Table:
    rows = tuple(
        (
            r["model"],
            r["layer"],
            r["head"],
            r["params_text"],
            f"{r['cv_mean']:.3f} ± {fmt(r['cv_std'])}",
            fmt(r["test_accuracy"]),
            fmt(r["test_balanced_accuracy"]),
            fmt(r["test_macro_f1"]),
            f"{r['fit_seconds']:.1f}",
            str(r["n_train"]),
            str(r["n_test"]),
            str(r["n_features"]),
        )
        for _, r in table.iterrows()
    )
    header = (
        "model", "layer", "head", "chosen hyper-parameters", "CV mean ± std", "test acc.",
        "balanced acc.", "macro-F1", "fit s", "n_train", "n_test", "features",
    )  # fmt: skip
    return Table(header, rows)


def _cost(table: pd.DataFrame, records: list[dict], chosen: pd.Series) -> list:
    """Extraction, feature width, fit and prediction cost; a cheaper near-equal combination."""
    extraction = {}
    for record in records:
        provenance = record.get("provenance") or {}
        seconds = provenance.get("extract_seconds")
        rate = provenance.get("images_per_second")
        extraction[record["model"]] = (
            f"{rate:.0f} img/s, {seconds:.0f} s" if finite(rate) and finite(seconds)
            else "not recorded"
        )  # fmt: skip
    rows = []
    for _, r in table.iterrows():
        rows.append((r["model"], r["layer"], r["head"], str(int(r["n_features"])),
                     extraction.get(r["model"], "not recorded"), fmt(r["fit_seconds"], 2),
                     fmt(r["predict_seconds_per_1000"], 4), fmt(r["cv_mean"])))  # fmt: skip
    header = ("model", "layer", "head", "features", "extraction", "fit s",
              "predict s / 1,000", "CV")  # fmt: skip
    return [("h2", "Cost"), ("p", cheaper_text(table, chosen)), Table(header, tuple(rows))]


def _fit_time_text(table: pd.DataFrame) -> str:
    total = table["fit_seconds"].sum()
    slowest = table.sort_values("fit_seconds", ascending=False).iloc[0]
    return (
        f"{total:.1f} s of fitting in all (summed over CV folds and final refits, not wall time); "
        f"the slowest combination was {slowest['model']} / {slowest['layer']} / {slowest['head']} "
        f"({slowest['fit_seconds']:.1f} s). Fits that stopped at max_iter: "
        f"{int(table['n_not_converged'].sum())}."
    )


def _fit_time_table(table: pd.DataFrame) -> Table:
    rows = []
    for _, group in table.groupby("head_order", sort=True):
        rows.append(
            (
                group["head"].iloc[0],
                f"{group['fit_seconds'].sum():.1f}",
                f"{group['fit_seconds'].mean():.2f}",
                f"{group['fit_seconds'].max():.2f}",
                str(int(group["n_not_converged"].sum())),
            )
        )
    return Table(("head", "total s", "mean s", "max s", "stopped at max_iter"), tuple(rows))


def _provenance(records: list[dict]) -> list:
    blocks: list = []
    by_model: dict[str, dict[str, dict]] = {}
    for record in records:
        by_model.setdefault(record["model"], {})[record["layer"]] = record
    keys = (
        "backbone", "weights", "weights_sha256", "seed", "preprocessing", "pooling", "dtype",
        "compute_dtype", "config_digest", "torch_version", "torchvision_version",
        "featurecache_version",
    )  # fmt: skip
    for model, layers in sorted(by_model.items()):
        first = next(iter(layers.values()))["provenance"]
        rows = tuple((k, f"`{first[k]}`") for k in keys if first.get(k) not in (None, ""))
        blocks += [
            ("h3", model),
            Table(("attribute", "value"), rows or (("(none recorded)", ""),)),
        ]
        layer_rows = tuple(
            (
                layer,
                fmt(record["depth"]),
                str(record["n_features"]),
                str(record["provenance"].get("raw_shape", "")),
            )
            for layer, record in sorted(
                layers.items(), key=lambda kv: (number(kv[1]["depth"], math.inf), kv[0])
            )
        )
        blocks.append(Table(("layer", "depth", "features", "raw shape"), layer_rows))
    return blocks
