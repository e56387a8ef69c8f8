"""Write a comparison report of a results folder: ``report.md`` and a self-contained ``report.html``.

The best combination, overall and in each cell, is the one
:func:`pipelines._results.best` picks (the highest CV mean, then the lowest CV std,
then fewer features, then the names, then the cheaper variant); test accuracy is
shown for every combination but never used to choose one. When a results folder
holds variants (heads trained on augmented views, test scored with TTA), every
section shows the best variant of each (model, layer, head) and one section,
"Augmented views and test-time augmentation", compares them all. Plots are drawn with matplotlib's Agg
canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featurecache import __version__
from featurecache._paths import check_output
from featurecache._validation import check_bool
from featurecache.cache import Cache, FeatureConfig, atomic_write, open_cache
from pipelines._feature_sets import is_set, load_recorded_set, set_comparison, set_verdict
from pipelines._figures import (
    confidently_wrong,
    depth_figure,
    gallery_figure,
    gap_verdict,
    layer_names_differ,
    learning_curve_figure,
    map_figure,
    per_class_accuracy,
    project_2d,
    thumbnail,
)
from pipelines._fixed import imagenet_view, random_weights, random_weights_reason
from pipelines._results import ResultsFolder, best, best_per, frame
from pipelines._rows import SPLIT_ORDER
from pipelines._shots import curve_summary
from pipelines._views import PLAIN, Variant

__all__ = ["report", "is_report_folder", "views_outcome", "MARKER"]

logger = logging.getLogger(__name__)

PENULTIMATE = "embedding"
TITLE = "featurecache report"
#: Written last into every report folder: how a later report knows it may write there.
MARKER = ".featurecache-report"


@dataclass(frozen=True)
class _Figure:
    name: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def report(results: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``out/report.md``, ``out/report.html`` and ``out/figures/*.png``.

    Parameters
    ----------
    results : str or path
        A results folder written by :func:`~pipelines.fit`.
    out : str or path
        The report folder: new (created), empty, or one a report was written into
        (:func:`is_report_folder`); anything else is refused unless ``force``.
    force : bool
        Write into an ``out`` that report did not write (files of the same names are
        replaced, others left alone; a file at ``out`` is replaced by the folder).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    InvalidArgumentError
        ``results`` is not a results folder, or holds no finished combination, or ``out``
        cannot be used. Nothing is written then.
    """
    force = check_bool(force, "force", "report")
    out = check_output(
        out, "out", "report", kind="folder", ours=is_report_folder, force=force,
        expected="a new or empty folder, or a report folder",
    )  # fmt: skip
    folder = ResultsFolder(results)
    run = folder.read_run("report")
    records = folder.finished()
    full = _table(records)
    table = _best_variants(full)
    chosen = best(table)
    predictions = _predictions(folder.root, chosen)
    blocks = _blocks(run, table, records, chosen, predictions, folder, variants=full)
    blocks[1:1] = _mismatch_blocks(folder, run)
    _write(
        out, blocks, {"results": str(folder.root.resolve()), "featurecache_version": __version__}
    )
    logger.info("report written to %s", out)
    return out


def is_report_folder(path: Path) -> bool:
    """True for an empty folder, or one a report was written into: it holds :data:`MARKER`,
    or (reports older than the marker) a ``report.md`` whose first line is the title."""
    if not path.is_dir():
        return False
    if (path / MARKER).is_file() or not any(path.iterdir()):
        return True
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with open(path / "report.md", encoding="utf-8") as stream:
            return stream.readline().rstrip("\n") == f"# {TITLE}"
    return False


def _write(out: Path, blocks: list, marker: dict) -> None:
    """The figures, then ``report.md`` and ``report.html``, then the marker. If a write fails,
    what this call wrote is removed (the whole folder when it created it)."""
    if out.exists() and not out.is_dir():
        out.unlink()  # a file in the way, accepted under force by check_output
    created = not out.exists()
    files = {out / "figures" / f"{b.name}.png": b.png for b in blocks if isinstance(b, _Figure)}
    files[out / "report.md"] = _markdown(blocks).encode()
    files[out / "report.html"] = _html(blocks).encode()
    files[out / MARKER] = json.dumps(marker, indent=1).encode()
    new = [path for path in files if not path.exists()]
    try:
        for path, data in files.items():
            atomic_write(path, lambda p, d=data: p.write_bytes(d))
    except BaseException:
        with contextlib.suppress(OSError):  # the error that stopped the report matters more
            if created:
                shutil.rmtree(out)
            else:
                for path in new:
                    path.unlink(missing_ok=True)
        raise


def best_combination(results: str | os.PathLike) -> tuple[dict, str]:
    """The best (model, layer, head) of a results folder by CV, and the recommendation sentence.

    Returns
    -------
    best : dict
        The combination :func:`pipelines._results.best` picks (test plays no part):
        its record, with ``params_text``.
    recommendation : str
        The report's plain recommendation, in markdown.

    Raises
    ------
    InvalidArgumentError
        ``results`` holds no finished combination.
    """
    table = _best_variants(_table(ResultsFolder(results).finished()))
    chosen = best(table)
    return chosen.to_dict(), recommendation(table, chosen)


def earlier_layer_outcome(results: str | os.PathLike) -> str:
    """:func:`earlier_layer_verdict` of the best combination of a results folder."""
    table = _best_variants(_table(ResultsFolder(results).finished()))
    return earlier_layer_verdict(table, best(table))


def views_outcome(results: str | os.PathLike) -> str:
    """One line: the best combination trained on views (by CV) against the same
    combination fitted plainly, with the report's verdict; ``""`` without a views fit."""
    table = _table(ResultsFolder(results).finished())
    trained = table[(table["views"] != PLAIN) & (table["tta"] == PLAIN)]
    if trained.empty:
        return ""
    row = best(trained)
    same = next(group for _, group in _variant_groups(table) if row.name in group.index)
    gain, verdict = _views_gain(row, _variant(row), same)
    test = f", test {row['test_accuracy']:.4f}" if _finite(row["test_accuracy"]) else ""
    return (
        f"{_variant(row).label}: best {row['model']} / {row['layer']} / {row['head']}, CV "
        f"{row['cv_mean']:.4f} ± {row['cv_std']:.4f}{test}; {gain}"
        + (f": {verdict}" if verdict else "")
    )


# -- data -----------------------------------------------------------------------------


def _table(records: list[dict]) -> pd.DataFrame:
    """The records in display order, with the chosen hyper-parameters as text."""
    table = frame(records)
    return table.assign(params_text=table["params"].map(_params_text))


def _best_variants(table: pd.DataFrame) -> pd.DataFrame:
    """The best variant (plain, views, TTA) of each (model, layer, head), by
    :func:`~pipelines._results.best`: one row each, as the other sections expect."""
    return best_per(table, ["model", "layer", "head"])


def _variant(row: pd.Series) -> Variant:
    """The row's variant; a row without the columns (written before views) is plain."""
    return Variant(
        **{column: row.get(column, plain) for column, plain in Variant().columns().items()}
    )


def _best_per_layer(table: pd.DataFrame) -> pd.DataFrame:
    """For each (model, layer), the best head (by :func:`~pipelines._results.best`)."""
    return best_per(table, ["model", "layer"])


def _predictions(root: Path, chosen: pd.Series) -> pd.DataFrame | None:
    name = chosen.get("predictions_file") or ""
    path = root / name
    if not name or not path.is_file():
        return None
    return pd.read_csv(
        path, keep_default_na=False, dtype={"id": str, "true_class": str, "pred_class": str}
    )


def _has_test(table: pd.DataFrame) -> bool:
    return bool(table["test_accuracy"].notna().any())


# -- content --------------------------------------------------------------------------


def _blocks(
    run: dict, table, records, chosen, predictions, folder: ResultsFolder, variants=None
) -> list:
    has_test = _has_test(table)
    class_names = run["data"]["class_names"]
    blocks: list = [("h1", TITLE)]
    blocks += [("h2", "Recommendation"), ("p", recommendation(table, chosen))]
    every = variants if variants is not None else table
    blocks += [("h2", "Protocol"), ("p", _protocol_text(run, every, has_test))]
    blocks += strategy_blocks(every, run)
    blocks += [("h2", "Data"), _data_table(run)] + [("p", text) for text in _rows_text(run)]
    blocks += [("p", f"Cache: `{run['cache']}` (samples digest `{run['samples_digest'][:16]}…`).")]
    blocks += _warnings(table)
    layers = table[[not is_set(row) for _, row in table.iterrows()]]  # feature sets: below
    blocks += [("h2", "Model × layer")] + _comparison(layers, has_test)
    blocks += [("h2", "Accuracy versus layer depth"), _depth_plot(layers, has_test)]
    blocks += [("h2", "Heads compared"), _heads_plot(table, has_test), _heads_table(table)]
    blocks += _feature_set_blocks(table)
    blocks += _views_blocks(every)
    variant = _variant(chosen)
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
        blocks += _best_details(run, chosen, predictions)
    else:
        blocks += [
            ("p", "No test split, so no confusion matrix: nothing was scored on held-out data.")
        ]
    blocks += [("h3", "Candidates of the best combination"), _candidates_table(chosen)]
    blocks += _curves(folder, table, chosen)
    blocks += _baselines(table)
    blocks += _imagenet_views(run, table)
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
    return [("h3", "Fitted out of core"), ("p", text), _Table(header, rows)]


def recommendation(table: pd.DataFrame, chosen: pd.Series) -> str:
    """One plain paragraph: the chosen backbone, layer and head, and whether an earlier layer
    beat the penultimate ``embedding``."""
    test = (
        f", test accuracy {chosen['test_accuracy']:.3f}"
        if _finite(chosen["test_accuracy"])
        else " (no test split: CV only)"
    )
    variant = _variant(chosen)
    trained = "" if variant.is_plain else f", {variant.label}"
    text = (
        f"Use backbone **{chosen['model']}**, layer **{chosen['layer']}** and head "
        f"**{chosen['head']}** ({chosen['params_text']}{trained}): CV accuracy "
        f"{chosen['cv_mean']:.3f} ± "
        f"{_fmt(chosen['cv_std'])}{test}."
    )
    if is_set(chosen):
        return f"{text} " + next(
            set_verdict(c) for c in set_comparison(table) if c["set"].name == chosen.name
        )
    model_rows = table[table["model"] == chosen["model"]]
    penultimate = model_rows[model_rows["layer"] == PENULTIMATE]
    if penultimate.empty:
        return text + (
            f" No layer named `{PENULTIMATE}` was fitted for {chosen['model']}, so the "
            "penultimate layer cannot be compared."
        )
    if chosen["layer"] == PENULTIMATE:
        return text + _penultimate_won(chosen, model_rows[model_rows["layer"] != PENULTIMATE])
    return text + _earlier_won(chosen, best(penultimate))


def _penultimate_won(chosen: pd.Series, earlier: pd.DataFrame) -> str:
    if earlier.empty:
        return f" Only the penultimate layer `{PENULTIMATE}` was fitted."
    runner = best(earlier)
    gap = chosen["cv_mean"] - runner["cv_mean"]
    if gap_verdict(gap, 0.0)[0] == "tie":
        return (
            f" No earlier layer beat the penultimate layer `{PENULTIMATE}`; the best earlier "
            f"layer, `{runner['layer']}`, tied with it in CV accuracy ({gap:.3f} apart; the tie "
            "rule ranked the penultimate layer first)."
        )
    return (
        f" No earlier layer beat the penultimate layer `{PENULTIMATE}`; the best earlier "
        f"layer, `{runner['layer']}`, scored {gap:.3f} lower in CV accuracy."
    )


def earlier_layer_verdict(table: pd.DataFrame, chosen: pd.Series) -> str:
    """Did an earlier layer beat the penultimate one? ``"yes"``, ``"no"``, ``"tie"`` or
    ``"not reliably"`` (higher, by less than the CV spread): the recommendation's own words."""
    model_rows = table[table["model"] == chosen["model"]]
    penultimate = model_rows[model_rows["layer"] == PENULTIMATE]
    if penultimate.empty or chosen["layer"] == PENULTIMATE:
        return "no"
    top = best(penultimate)
    spread = max(_num(chosen["cv_std"]), _num(top["cv_std"]))
    outcome, judgement = gap_verdict(chosen["cv_mean"] - top["cv_mean"], spread)
    if outcome == "tie":
        return "tie"
    return "not reliably" if judgement == "not a reliable difference" else "yes"


def _earlier_won(chosen: pd.Series, top: pd.Series) -> str:
    """How the chosen earlier layer compares with the best head on the penultimate one."""
    gap = chosen["cv_mean"] - top["cv_mean"]
    spread = max(_num(chosen["cv_std"]), _num(top["cv_std"]))
    outcome, judgement = gap_verdict(gap, spread)
    against = f"`{PENULTIMATE}` ({top['cv_mean']:.3f} with {top['head']})"
    if outcome == "tie":
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


def _protocol_text(run: dict, table: pd.DataFrame, has_test: bool) -> str:
    protocol = run.get("protocol", {})
    text = (
        f"Hyper-parameters were {protocol.get('selection', 'chosen on training data')}; the chosen "
        f"head was refitted on {protocol.get('refit', 'train')} and "
    )
    if has_test:
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


def _feature_set_blocks(table: pd.DataFrame) -> list:
    """Each feature set against its best single part; empty without feature sets."""
    compared = set_comparison(table)
    if not compared:
        return []
    rows = tuple(
        (
            c["set"]["model"], c["set"]["layer"],
            " + ".join(f"{p['model']}/{p['layer']}" for p in c["set"]["feature_set"]["parts"]),
            c["set"]["head"], f"{_fmt(c['set']['cv_mean'])} ± {_fmt(c['set']['cv_std'])}",
            _fmt(c["set"]["test_accuracy"]),
            "" if c["part"] is None else f"{c['part']['model']}/{c['part']['layer']} "
            f"({c['part']['head']}, {_fmt(c['part']['cv_mean'])})",
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
    return [("h2", "Feature sets"), ("p", text), _Table(header, rows)] + [
        ("p", set_verdict(c)) for c in compared
    ]


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


def _data_table(run: dict) -> _Table:
    data = run["data"]
    counts = data["counts"]
    splits = list(counts)
    header = ("class", *splits)
    rows = [(name, *[str(counts[s].get(name, 0)) for s in splits]) for name in data["class_names"]]
    rows.append(("**total**", *[str(sum(counts[s].values())) for s in splits]))
    return _Table(header, tuple(rows))


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


def _heads_table(table: pd.DataFrame) -> _Table:
    rows = []
    for _, group in table.groupby("head_order", sort=True):
        top = best(group)
        rows.append(
            (
                top["head"],
                f"{top['model']} / {top['layer']}",
                f"{top['cv_mean']:.3f} ± {_fmt(top['cv_std'])}",
                _fmt(top["test_accuracy"]),
                _fmt(top["test_balanced_accuracy"]),
                _fmt(top["test_macro_f1"]),
                f"{top['fit_seconds']:.1f}",
            )
        )
    return _Table(
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


def _all_table(table: pd.DataFrame) -> _Table:
    rows = tuple(
        (
            r["model"],
            r["layer"],
            r["head"],
            r["params_text"],
            f"{r['cv_mean']:.3f} ± {_fmt(r['cv_std'])}",
            _fmt(r["test_accuracy"]),
            _fmt(r["test_balanced_accuracy"]),
            _fmt(r["test_macro_f1"]),
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
    return _Table(header, rows)


def _candidates_table(chosen: pd.Series) -> _Table:
    rows = tuple(
        (
            _params_text(c["params"]),
            f"{c['mean']:.4f}",
            _fmt(c["std"], 4),
            " ".join(f"{s:.3f}" for s in c["scores"]),
        )
        for c in chosen["candidates"]
    )
    return _Table(("candidate", "CV mean", "CV std", "per fold"), rows)


def _fit_time_text(table: pd.DataFrame) -> str:
    total = table["fit_seconds"].sum()
    slowest = table.sort_values("fit_seconds", ascending=False).iloc[0]
    return (
        f"{total:.1f} s of fitting in all (summed over CV folds and final refits, not wall time); "
        f"the slowest combination was {slowest['model']} / {slowest['layer']} / {slowest['head']} "
        f"({slowest['fit_seconds']:.1f} s). Fits that stopped at max_iter: "
        f"{int(table['n_not_converged'].sum())}."
    )


def _fit_time_table(table: pd.DataFrame) -> _Table:
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
    return _Table(("head", "total s", "mean s", "max s", "stopped at max_iter"), tuple(rows))


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
            _Table(("attribute", "value"), rows or (("(none recorded)", ""),)),
        ]
        layer_rows = tuple(
            (
                layer,
                _fmt(record["depth"]),
                str(record["n_features"]),
                str(record["provenance"].get("raw_shape", "")),
            )
            for layer, record in sorted(
                layers.items(), key=lambda kv: (_num(kv[1]["depth"], math.inf), kv[0])
            )
        )
        blocks.append(_Table(("layer", "depth", "features", "raw shape"), layer_rows))
    return blocks


# -- figures --------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _heatmap(table: pd.DataFrame, has_test: bool) -> _Figure:
    cells = _best_per_layer(table)
    models = sorted(cells["model"].unique())
    depth = cells.groupby("layer")["depth_sort"].mean()
    layers = sorted(depth.index, key=lambda name: (depth[name], name))
    value = "test_accuracy" if has_test else "cv_mean"
    grid = np.full((len(models), len(layers)), np.nan)
    labels = {}
    for _, r in cells.iterrows():
        i, j = models.index(r["model"]), layers.index(r["layer"])
        grid[i, j] = r[value]
        labels[i, j] = f"{r[value]:.3f}\n{r['head']}"
    fig = _new_figure(max(4.0, 1.1 * len(layers) + 2), max(2.2, 0.7 * len(models) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    for (i, j), text in labels.items():
        bright = grid[i, j] > np.nanmin(grid) + 0.6 * (np.nanmax(grid) - np.nanmin(grid) + 1e-12)
        ax.text(
            j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white"
        )
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    fig.colorbar(image, ax=ax, label="test accuracy" if has_test else "CV accuracy")
    what = "test accuracy" if has_test else "CV accuracy (no test split)"
    return _Figure(
        "heatmap",
        f"{what} of each model × layer, with the head that has the best CV score in that cell "
        "(heads are chosen on CV, never on test).",
        _png(fig),
    )


def _depth_plot(table: pd.DataFrame, has_test: bool) -> _Figure:
    cells = _best_per_layer(table)
    fig = _new_figure(7, 4)
    ax = fig.add_subplot()
    for k, (model, group) in enumerate(cells.groupby("model", sort=True)):
        x = group["depth"].astype(float).to_numpy()
        if np.isnan(x).any():
            x = np.arange(len(group), dtype=float)
        color = f"C{k % 10}"
        ax.errorbar(x, group["cv_mean"], yerr=group["cv_std"].fillna(0.0), marker="o", capsize=3,
                    color=color, label=f"{model} (CV ± std)")  # fmt: skip
        if has_test:
            ax.plot(x, group["test_accuracy"], linestyle="none", marker="x", color=color,
                    label=f"{model} (test)")  # fmt: skip
        for xi, yi, name in zip(x, group["cv_mean"], group["layer"], strict=True):
            ax.annotate(
                name, (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7
            )
    ax.set_xlabel("layer depth (0 = input, 1 = penultimate embedding)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _Figure(
        "depth",
        "Accuracy of the best head (by CV) at each layer; error bars are the CV standard deviation"
        + (", crosses the test accuracy." if has_test else "."),
        _png(fig),
    )


def _heads_plot(table: pd.DataFrame, has_test: bool) -> _Figure:
    heads = [h for _, h in sorted(set(zip(table["head_order"], table["head"], strict=True)))]
    groups = sorted(
        table[["model", "depth_sort", "layer"]].drop_duplicates().itertuples(index=False)
    )
    fig = _new_figure(max(6.0, 0.5 * len(groups) * len(heads) + 2), 4)
    ax = fig.add_subplot()
    width = 0.8 / len(heads)
    for k, head in enumerate(heads):
        rows = table[table["head"] == head].set_index(["model", "layer"])
        values = [rows["cv_mean"].get((m, layer), np.nan) for m, _, layer in groups]
        errors = [rows["cv_std"].get((m, layer), 0.0) for m, _, layer in groups]
        x = np.arange(len(groups)) + (k - (len(heads) - 1) / 2) * width
        ax.bar(
            x, values, width, yerr=np.nan_to_num(errors), capsize=2, label=head, color=f"C{k % 10}"
        )
        if has_test:
            tests = [rows["test_accuracy"].get((m, layer), np.nan) for m, _, layer in groups]
            ax.plot(x, tests, linestyle="none", marker="_", markersize=10, color="black")
    ax.set_xticks(
        range(len(groups)),
        [f"{m}\n{layer}" for m, _, layer in groups],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel("CV accuracy")
    ax.legend(fontsize=8, ncols=min(4, len(heads)))
    ax.grid(axis="y", alpha=0.3)
    return _Figure(
        "heads",
        "Heads side by side at every model / layer: bars are CV accuracy ± std"
        + (", black ticks the test accuracy." if has_test else "."),
        _png(fig),
    )


def _confusion(predictions: pd.DataFrame, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (predictions["y_true"].to_numpy(int), predictions["y_pred"].to_numpy(int)), 1)
    return matrix


def _confusion_plot(matrix: np.ndarray, class_names: Sequence[str]) -> _Figure:
    n = len(class_names)
    size = min(12.0, max(4.0, 0.45 * n + 2))
    fig = _new_figure(size, size * 0.85)
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    return _Figure(
        "confusion",
        "Confusion matrix of the best combination on the test split (counts; colour: row fraction).",
        _png(fig),
    )


def _confused_pairs(matrix: np.ndarray, class_names: Sequence[str], top: int = 5) -> _Table:
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
    return _Table(
        ("most confused pair", "errors", "directions"), rows or (("(no errors)", "0", ""),)
    )


# -- rendering ------------------------------------------------------------------------


def _markdown(blocks: list) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, _Figure):
            lines += [f"![{block.name}](figures/{block.name}.png)", "", f"*{block.caption}*", ""]
        elif isinstance(block, _Table):
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "|".join(" --- " for _ in block.header) + "|")
            lines += [
                "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in block.rows
            ]
            lines.append("")
        else:
            kind, text = block
            prefix = {"h1": "# ", "h2": "## ", "h3": "### ", "p": ""}[kind]
            lines += [prefix + text, ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    """Escape, then render the two bits of markdown the report uses: **bold** and `code`."""
    parts = html.escape(text).split("`")
    out = []
    for k, part in enumerate(parts):
        if k % 2:
            out.append(f"<code>{part}</code>")
        else:
            bold = part.split("**")
            out.append("".join(f"<strong>{b}</strong>" if i % 2 else b for i, b in enumerate(bold)))
    return "".join(out)


def _html(blocks: list) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, _Figure):
            data = base64.b64encode(block.png).decode()
            body.append(
                f'<figure><img alt="{block.name}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, _Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            kind, text = block
            body.append(f"<{kind}>{_inline(text)}</{kind}>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>featurecache report</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# -- formatting -----------------------------------------------------------------------


def _params_text(params: dict) -> str:
    shown = {k: v for k, v in params.items() if not (k == "pca" and v is None)}
    return ", ".join(f"{k}={_value(v)}" for k, v in sorted(shown.items())) or "defaults"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "(" + ", ".join(str(v) for v in value) + (",)" if len(value) == 1 else ")")
    return str(value)


def _num(value, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fmt(value, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else "–"


# -- the decision sections: depth-aligned comparison, curves, map, gallery, cost ------


def _comparison(table: pd.DataFrame, has_test: bool) -> list:
    """The heatmap when every model has the same layers; else a depth-aligned figure."""
    cells = _best_per_layer(table)
    if not layer_names_differ(cells):
        return [_heatmap(table, has_test)]
    score = "test_accuracy" if has_test else "cv_mean"
    what = "test accuracy" if has_test else "CV accuracy"
    winners = best_per(cells, ["model"]).sort_values("model")
    figure = _Figure(
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
        depth = f"{r['depth']:.2f}" if _finite(r["depth"]) else "unknown"
        rows.append((r["model"], r["layer"], depth, r["head"], _fmt(r["cv_mean"]),
                     _fmt(r["test_accuracy"])))  # fmt: skip
    header = ("backbone", "best layer", "depth", "head", "CV", "test")
    return [figure, ("p", "The best layer of each backbone (by CV):"), _Table(header, tuple(rows))]


def _views_blocks(table: pd.DataFrame) -> list:
    """Plain against views, with and without TTA, for each (features, layer, head) with a
    variant; empty when every combination is plain."""
    if ((table["views"] == PLAIN) & (table["tta"] == PLAIN)).all():
        return []
    rows = []
    for _, group in _variant_groups(table):
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
            _Table(header, tuple(rows))]  # fmt: skip


def _variant_groups(table: pd.DataFrame):
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


def _views_row(row: pd.Series, group: pd.DataFrame) -> tuple[str, ...]:
    variant = _variant(row)
    cells = (row["model"], row["layer"], row["head"], variant.label,
             f"{row['cv_mean']:.3f} ± {_fmt(row['cv_std'])}", _fmt(row["test_accuracy"]))  # fmt: skip
    gain, verdict = _views_gain(row, variant, group)
    return (*cells, gain, verdict, _fmt(row["fit_seconds"], 2))


def _views_gain(row: pd.Series, variant: Variant, group: pd.DataFrame) -> tuple[str, str]:
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
    if not (_finite(row[score]) and _finite(ref[score])):
        return "", "no test split to score TTA on"
    gap = float(row[score] - ref[score])
    spread = max(_num(row["cv_std"]), _num(ref["cv_std"]))
    outcome, judgement = gap_verdict(gap, spread)
    shown = f"{gap:+.3f} {where}"
    if where == "CV" and _finite(row["test_accuracy"]) and _finite(ref["test_accuracy"]):
        shown += f" ({row['test_accuracy'] - ref['test_accuracy']:+.3f} test)"
    shown += f" over {_variant(ref).label}"
    shown += f" ({ref['model']})" if ref["model"] != row["model"] else ""
    if outcome == "tie":
        return shown, "no difference"
    size = f"{abs(gap) / spread:.1f}× the spread (± {spread:.3f})" if spread > 0 else "spread 0"
    sense = "gain" if gap > 0 else "loss"
    return shown, f"{sense} {size}: {judgement}"


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
        if _finite(pick["test_accuracy"]):  # the full training set, as the last point
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
    figure = _Figure(
        "learning_curve",
        f"Test accuracy against training images per class (mean of {draws} draws, 95 % "
        "interval); hyper-parameters chosen inside each draw. The last point of each line is "
        "the full training set.",
        learning_curve_figure(lines),
    )
    header = ("combination", *[f"point {i + 1}" for i in range(width - 1)])
    return [("h2", "Learning curves"), figure, _Table(header, rows)]


def _mismatch_blocks(folder: ResultsFolder, run: dict) -> list:
    """A warning section when the results no longer match their cache as it is now (also
    one line on the log); nothing when they match or the cache cannot be read here."""
    cache = _open_run_cache(run)
    if cache is None:
        return []
    problems = folder.mismatches(cache)
    if not problems:
        return []
    shown = "; ".join(problems[:4]) + (
        f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
    )
    text = (
        f"results folder {str(folder.root)!r} no longer matches cache {run['cache']!r}: {shown}. "
        f"This report shows the results as fitted; run `featurecache fit {run['cache']} --out "
        f"{folder.root}` to refit what changed, then report again."
    )
    logger.warning("%s", text)
    return [("h2", "Warning: these results no longer match the cache"), ("p", text)]


def _open_run_cache(run: dict) -> Cache | None:
    path = Path(run.get("cache", ""))
    if not path.is_file():
        return None
    try:
        return open_cache(path)
    except Exception as error:  # the report still has everything else to say
        logger.warning("cannot open cache %s for the map and gallery: %s", path, error)
        return None


def _best_details(run: dict, chosen: pd.Series, predictions: pd.DataFrame) -> list:
    """Per-class accuracy, a 2-D map of the best layer, the most confidently wrong images."""
    class_names = run["data"]["class_names"]
    y_true = predictions["y_true"].to_numpy(int)
    y_pred = predictions["y_pred"].to_numpy(int)
    rows = tuple((name, str(n), f"{acc:.3f}") for name, n, acc in
                 per_class_accuracy(y_true, y_pred, class_names))  # fmt: skip
    blocks: list = [("h3", "Per-class accuracy (test, worst first)"),
                    _Table(("class", "test rows", "accuracy"), rows)]  # fmt: skip
    cache = _open_run_cache(run)
    if cache is None:
        return blocks + [("p", f"The cache `{run.get('cache')}` is not readable here, so the "
                               "map and the gallery are left out.")]  # fmt: skip
    seed = int(run["arguments"].get("seed", 0))
    shown = map_sample(len(predictions), seed)
    ids = predictions["id"].astype(str).to_numpy()[shown]
    X = (
        _map_set_features(cache, chosen, ids)
        if is_set(chosen)
        else _map_features(cache, chosen, ids)
    )
    if X is None:
        return blocks
    y_true, wrong = y_true[shown], (y_true != y_pred)[shown]
    sampled = (
        f" ({len(shown):,} of the {len(predictions):,} test rows, a seeded sample)"
        if len(shown) < len(predictions) else ""
    )  # fmt: skip
    blocks.append(("h3", "Map of the best layer"))
    for method, coords in project_2d(X, seed=seed):
        blocks.append(_Figure(
            f"map_{method.lower()}",
            f"{method} of the test features of {chosen['model']} / {chosen['layer']}{sampled} "
            f"(fitted on those rows, a picture only), coloured by true class; crosses mark the "
            f"{int(wrong.sum())} test images shown that the head got wrong.",
            map_figure(coords, y_true, wrong, class_names, method),
        ))  # fmt: skip
    return blocks + _gallery(cache, predictions, class_names)


#: The most test rows the map of the best layer shows (a seeded sample beyond).
MAP_POINTS = 5_000


def map_sample(n_rows: int, seed: int, most: int = MAP_POINTS) -> np.ndarray:
    """Ascending positions of the rows the map shows: all, or a seeded sample of ``most``."""
    if n_rows <= most:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=most, replace=False))


def _map_features(cache: Cache, chosen: pd.Series, ids: np.ndarray) -> np.ndarray | None:
    """The features of the test rows ``ids``, in that order, streamed (only their windows are
    read); ``None`` when one is not in the cache's test split any more."""
    test = np.flatnonzero(cache.splits == "test")
    where = pd.Series(test, index=pd.Index(cache.ids[test].astype(str)))
    rows = where.reindex(ids).to_numpy()
    if np.isnan(rows.astype(float)).any():
        return None
    rows = rows.astype(np.int64)
    batches = list(cache.iter_batches(chosen["model"], chosen["layer"], rows))
    found = np.concatenate([b.rows for b in batches]) if batches else np.zeros(0, np.int64)
    if len(found) != len(np.unique(rows)):
        return None
    X = np.concatenate([b.X for b in batches])
    return X[np.searchsorted(found, rows)]


def _map_set_features(cache: Cache, chosen: pd.Series, ids: np.ndarray) -> np.ndarray | None:
    """A feature set's test rows ``ids``, in that order (its parts concatenated); ``None`` when
    one is not in the cache's test split any more."""
    X, found = load_recorded_set(cache, chosen["feature_set"], "test")
    where = pd.Series(np.arange(len(found)), index=pd.Index(found.astype(str)))
    order = where.reindex(ids).to_numpy()
    if np.isnan(order.astype(float)).any():
        return None
    return X[order.astype(np.int64)]


def _gallery(cache: Cache, predictions: pd.DataFrame, class_names) -> list:
    if "confidence" not in predictions:
        return []
    top = confidently_wrong(predictions.assign(
        confidence=pd.to_numeric(predictions["confidence"], errors="coerce")))  # fmt: skip
    blocks: list = [("h3", "Most confidently wrong test images")]
    if top.empty:
        return blocks + [("p", "The best head got every test image right.")]
    rows = tuple((str(r["id"]), r["true_class"], r["pred_class"], f"{r['confidence']:.3f}")
                 for _, r in top.iterrows())  # fmt: skip
    images, captions = [], []
    for _, r in top.iterrows():
        picture = _thumbnail(cache.source, str(r["id"]))
        if picture is not None:
            images.append(picture)
            captions.append(f"true {r['true_class']}\npred {r['pred_class']}")
    if images:
        blocks.append(_Figure(
            "gallery",
            "Test images the best head got wrong with the highest confidence (probability or "
            "vote share of the predicted class), most confident first.",
            gallery_figure(images, captions),
        ))  # fmt: skip
    else:
        blocks.append(("p", f"No thumbnails: the images of `{cache.source or 'this cache'}` "
                            "are not readable from here."))  # fmt: skip
    table = _Table(("id", "true class", "predicted class", "confidence"), rows)
    return blocks + [table]


def _thumbnail(source: str, sample_id: str) -> np.ndarray | None:
    """The image of a sample: a file under a folder dataset, a built-in array, or a path id."""
    try:
        if source.startswith("folder:"):
            return thumbnail(Path(source[len("folder:") :]) / sample_id)
        if source.split(" ")[0] == "builtin:digits":
            return thumbnail(_digits()[int(sample_id)])
        if Path(sample_id).is_file():
            return thumbnail(Path(sample_id))
    except (OSError, ValueError, IndexError):
        return None
    return None


@functools.cache
def _digits() -> np.ndarray:
    """scikit-learn's digits as the built-in dataset stores them (uint8, 8 x 8)."""
    from sklearn.datasets import load_digits

    return np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)


def _cost(table: pd.DataFrame, records: list[dict], chosen: pd.Series) -> list:
    """Extraction, feature width, fit and prediction cost; a cheaper near-equal combination."""
    extraction = {}
    for record in records:
        provenance = record.get("provenance") or {}
        seconds = provenance.get("extract_seconds")
        rate = provenance.get("images_per_second")
        extraction[record["model"]] = (
            f"{rate:.0f} img/s, {seconds:.0f} s" if _finite(rate) and _finite(seconds)
            else "not recorded"
        )  # fmt: skip
    rows = []
    for _, r in table.iterrows():
        rows.append((r["model"], r["layer"], r["head"], str(int(r["n_features"])),
                     extraction.get(r["model"], "not recorded"), _fmt(r["fit_seconds"], 2),
                     _fmt(r["predict_seconds_per_1000"], 4), _fmt(r["cv_mean"])))  # fmt: skip
    header = ("model", "layer", "head", "features", "extraction", "fit s",
              "predict s / 1,000", "CV")  # fmt: skip
    return [("h2", "Cost"), ("p", _cheaper_text(table, chosen)), _Table(header, tuple(rows))]


def _cheaper_text(table: pd.DataFrame, chosen: pd.Series) -> str:
    """Name the cheapest combination whose CV mean is within the best's CV spread."""
    floor = chosen["cv_mean"] - _num(chosen["cv_std"])
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
        f"{int(pick['n_features'])} features, fit {_fmt(pick['fit_seconds'], 2)} s and "
        f"{_fmt(pick['predict_seconds_per_1000'], 4)} s per 1,000 predictions, against "
        f"{int(chosen['n_features'])} features, {_fmt(chosen['fit_seconds'], 2)} s and "
        f"{_fmt(chosen['predict_seconds_per_1000'], 4)} s for the best."
    )


_COSTS = ("n_features", "predict_seconds_per_1000", "fit_seconds")


def _cost_key(row: pd.Series) -> tuple:
    """Feature width, then prediction time, then fit time: the order "cheaper" weighs them."""
    return tuple(_num(row[c], math.inf) for c in _COSTS)


def _cheaper(row: pd.Series, than: pd.Series) -> bool:
    """No dearer on width, prediction or fit time, and cheaper on at least one of them."""
    mine, theirs = _cost_key(row), _cost_key(than)
    return all(a <= b for a, b in zip(mine, theirs, strict=True)) and mine != theirs


def _baselines(table: pd.DataFrame) -> list:
    """Fixed-classifier heads (zero-shot, out-of-the-box ImageNet...): shown, not searched."""
    fixed = table[table["selection"] == "fixed"]
    if fixed.empty:
        return []
    rows = tuple((r["model"], r["layer"], r["head"], _fmt(r["test_accuracy"]))
                 for _, r in fixed.iterrows())  # fmt: skip
    return [("h2", "Baselines"),
            ("p", "Heads with a fixed classifier (nothing fitted on these samples):"),
            _Table(("model", "layer", "head", "test"), rows)]  # fmt: skip


def _imagenet_views(run: dict, table: pd.DataFrame) -> list:
    """For each model that stores its ImageNet classifier: the ImageNet classes it sees most
    often in each dataset class (top-1 of every labeled sample, from the cached embedding)."""
    cache = _open_run_cache(run)
    if cache is None:
        return []
    blocks = []
    for model in dict.fromkeys(table["model"]):
        if model not in cache.models:
            continue
        if random_weights(cache, model):  # never ImageNet's names on random outputs
            blocks.append(("p", random_weights_reason(cache, model)))
            continue
        classifier = cache.classifiers(model).get("imagenet")
        if classifier is None or classifier.layer not in cache.layers(model):
            continue
        view = imagenet_view(cache, model)
        if view.empty:
            continue
        rows = tuple((str(r["class"]), str(r["n"]), str(r["seen_as"])) for _, r in view.iterrows())
        blocks += [("p", f"{model}: its own classifier ({classifier.source}), on the cached "
                         f"{classifier.layer}; the top-1 class of every labeled sample, and the "
                         "share of the class it takes."),
                   _Table(("class", "samples", "ImageNet classes seen"), rows)]  # fmt: skip
    if not blocks:
        return []
    return [("h2", "What the pretrained network sees"), *blocks]


def _warnings(table: pd.DataFrame) -> list:
    doubts = table[table["warnings"].fillna("").astype(str).str.len() > 0]
    if doubts.empty:
        return []
    rows = tuple((r["model"], r["layer"], r["head"], str(r["warnings"]))
                 for _, r in doubts.iterrows())  # fmt: skip
    return [("h2", "Warnings"), _Table(("model", "layer", "head", "warning"), rows)]
