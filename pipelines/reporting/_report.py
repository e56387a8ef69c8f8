"""Write a comparison report of a results folder: ``report.md`` and a self-contained ``report.html``.

The best combination, overall and in each cell, is the one
:func:`pipelines.results._results.best` picks (the highest CV mean, then the lowest CV std,
then fewer features, then the names, then the cheaper variant); test accuracy is
shown for every combination but never used to choose one. When a results folder
holds variants (heads trained on augmented views, test scored with TTA), every
section shows the best variant of each (model, layer, head) and one section,
"Augmented views and test-time augmentation", compares them all. Plots are drawn with matplotlib's Agg
canvas (no pyplot, no global backend change).

This module reads the results folder and the cache once, and writes the report folder; what
the report decides is :mod:`pipelines.reporting._decisions`', what it says :mod:`pipelines.reporting._sections`',
and how it is written :mod:`pipelines.reporting._render`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from featurecache import __version__
from featurecache.cache import Cache, atomic_write, open_cache
from featurecache.core._paths import check_output
from featurecache.core._validation import check_bool
from pipelines.reporting._decisions import (
    best_variants,
    earlier_layer_verdict,
    recommendation,
    results_table,
    variant_groups,
    variant_of,
    views_gain,
)
from pipelines.reporting._render import TITLE, Figure, finite, to_html, to_markdown
from pipelines.reporting._sections import report_blocks
from pipelines.results._results import ResultsFolder, best
from pipelines.rows._views import PLAIN

__all__ = [
    "report",
    "is_report_folder",
    "best_combination",
    "earlier_layer_outcome",
    "views_outcome",
    "MARKER",
]

logger = logging.getLogger(__name__)

#: Written last into every report folder: how a later report knows it may write there.
MARKER = ".featurecache-report"


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
    full = results_table(records)
    table = best_variants(full)
    chosen = best(table)
    predictions = _predictions(folder.root, chosen)
    cache = _open_run_cache(run)
    blocks = report_blocks(run, table, records, chosen, predictions, folder, cache, full)
    blocks[1:1] = _mismatch_blocks(folder, run, cache)
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
    files = {out / "figures" / f"{b.name}.png": b.png for b in blocks if isinstance(b, Figure)}
    files[out / "report.md"] = to_markdown(blocks).encode()
    files[out / "report.html"] = to_html(blocks).encode()
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
        The combination :func:`pipelines.results._results.best` picks (test plays no part):
        its record, with ``params_text``.
    recommendation : str
        The report's plain recommendation, in markdown.

    Raises
    ------
    InvalidArgumentError
        ``results`` holds no finished combination.
    """
    table, chosen = _decided(results)
    return chosen.to_dict(), recommendation(table, chosen)


def earlier_layer_outcome(results: str | os.PathLike) -> str:
    """:func:`~pipelines.reporting._decisions.earlier_layer_verdict` of the best combination of a
    results folder: ``"yes"``, ``"no"``, ``"tie"`` or ``"not reliably"``."""
    return earlier_layer_verdict(*_decided(results))


def views_outcome(results: str | os.PathLike) -> str:
    """One line: the best combination trained on views (by CV) against the same
    combination fitted plainly, with the report's verdict; ``""`` without a views fit."""
    table = results_table(ResultsFolder(results).finished())
    trained = table[(table["views"] != PLAIN) & (table["tta"] == PLAIN)]
    if trained.empty:
        return ""
    row = best(trained)
    same = next(group for _, group in variant_groups(table) if row.name in group.index)
    gain, verdict = views_gain(row, variant_of(row), same)
    test = f", test {row['test_accuracy']:.4f}" if finite(row["test_accuracy"]) else ""
    return (
        f"{variant_of(row).label}: best {row['model']} / {row['layer']} / {row['head']}, CV "
        f"{row['cv_mean']:.4f} ± {row['cv_std']:.4f}{test}; {gain}"
        + (f": {verdict}" if verdict else "")
    )


# -- what the report reads ---------------------------------------------------------


def _decided(results: str | os.PathLike) -> tuple[pd.DataFrame, pd.Series]:
    """The best variant of each combination of a results folder, and the best of them."""
    table = best_variants(results_table(ResultsFolder(results).finished()))
    return table, best(table)


def _predictions(root: Path, chosen: pd.Series) -> pd.DataFrame | None:
    """The test predictions of the chosen combination; ``None`` when it has none."""
    name = chosen.get("predictions_file") or ""
    path = root / name
    if not name or not path.is_file():
        return None
    return pd.read_csv(
        path, keep_default_na=False, dtype={"id": str, "true_class": str, "pred_class": str}
    )


def _mismatch_blocks(folder: ResultsFolder, run: dict, cache: Cache | None) -> list:
    """A warning section when the results no longer match their cache as it is now (also
    one line on the log); nothing when they match or the cache cannot be read here."""
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
    """The cache the results were fitted on, for the sections that read it; ``None`` (and a
    warning on the log) when it cannot be read here."""
    path = Path(run.get("cache", ""))
    if not path.is_file():
        return None
    try:
        return open_cache(path)
    except Exception as error:  # the report still has everything else to say
        logger.warning("cannot open cache %s for the map and gallery: %s", path, error)
        return None
