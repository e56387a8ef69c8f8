"""The offline demo: extract, fit and report on a built-in dataset in one command."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache.core._paths import check_output
from featurecache.core._spec import FeatureSpec
from featurecache.core._validation import (
    ParameterError,
    check_choice,
    check_names,
    check_optional_int,
)
from featurecache.data._datasets import Dataset, load_dataset
from featurecache.engines._options import RunOptions
from featurecache.extraction._extract import ExtractResult, check_cache, extract_spec

__all__ = [
    "run_demo", "best_found", "summarize", "DemoSummary", "DemoDefaults", "DEMO_DEFAULTS",
]  # fmt: skip


@dataclass(frozen=True)
class DemoDefaults:
    """What the demo runs on a built-in dataset when the caller does not say."""

    image_size: int | None  # None: the backbone's own input size
    heads: tuple[str, ...]
    resize: str | None = None  # None: the backbone's own preprocessing
    augment: str = "rrc:0.5-1"  # the augmentation of the training views (demo views=K)


DEMO_DEFAULTS = {
    # No flip for digits: a mirrored 2 or 7 is not a digit.
    "builtin:digits": DemoDefaults(
        image_size=None,
        heads=("logreg", "linsvm", "svm"),
        augment="rrc:0.5-1",
    ),
    # 70,000 images: 96 px keeps extraction near ten minutes on 2 CPU cores. On 60,000 train rows
    # logreg takes minutes per layer, while LinearSVC took 20 min on a 320-wide layer and the RBF
    # SVM grows with the square of the rows, so both are left to benchmarks/fashion_mnist.py.
    # The crop cuts the edges of every 28x28 garment; squashing the whole image measured better
    # (benchmarks/README.md, "Resize modes").
    "builtin:fashion-mnist": DemoDefaults(
        image_size=96,
        heads=("logreg",),
        resize="squash",
        augment="flip,rrc:0.5-1",
    ),
}


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did and found."""

    dataset: str
    extraction: ExtractResult
    results: Path
    report: Path
    best: dict
    recommendation: str
    earlier_layer: str  # "yes", "no", "tie" or "not reliably", as the recommendation says
    seconds: float
    views: str = ""  # with views=K: plain against views, as the report's comparison says


def run_demo(
    dataset: str = "builtin:digits",
    *,
    model: str = "efficientnet_lite0",
    layers: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    limit: int | None = None,
    image_size: int | None = None,
    resize: str | None = None,
    cache: str | None = None,
    out: str | None = None,
    force: bool = False,
    jobs: int = -1,
    progress: bool = False,
    views: int = 0,
    augment: str | None = None,
) -> DemoSummary:
    """Extract ``model`` features of a built-in dataset, fit heads, and write a report.

    Parameters
    ----------
    dataset : str
        ``builtin:digits`` or ``builtin:fashion-mnist``.
    layers, heads, image_size, resize : optional
        By default the backbone's default layers, and the heads, input size and resize mode
        of ``DEMO_DEFAULTS[dataset]``.
    limit : int, optional
        Keep the first ``limit`` samples of each split (quick runs and tests).
    cache, out : str, optional
        Cache file and report folder; by default ``data/cache/demo-<dataset>.h5`` and
        ``reports/demo`` (``reports/demo-<dataset>`` for other datasets).
    force : bool
        Write the report into an ``out`` that :func:`~pipelines.report` did not write.
    views : int
        With 2 or more, also extract ``views`` augmented views of every training image
        (view 0 the plain one) and fit every head twice, plainly and on the views
        (``fit(..., views="train")``); the report compares them. The cache is then
        ``data/cache/demo-<dataset>-views<K>.h5`` by default.
    augment : str, optional
        The augmentation of the views (default: ``DEMO_DEFAULTS[dataset].augment``; see
        ``docs/views.md``).

    Returns
    -------
    DemoSummary
    """
    import pipelines
    from pipelines.reporting._report import is_report_folder
    from pipelines.results._results import ResultsFolder

    started = time.perf_counter()
    check_choice(dataset, "dataset", "run_demo", DEMO_DEFAULTS)
    defaults = DEMO_DEFAULTS[dataset]
    _check_choices(heads, layers, limit, jobs)
    augment = (augment or defaults.augment) if views else None
    spec = FeatureSpec(
        model=model, layers=layers, image_size=image_size or defaults.image_size,
        resize=resize or defaults.resize, views=views, augment=augment,
    ).validate()  # fmt: skip
    stem = dataset.split(":", 1)[1] + (f"-first{limit}" if limit else "")
    stem += f"-views{views}" if views else ""
    report_dir = check_output(
        out or ("reports/demo" if dataset == "builtin:digits" and not limit
                else f"reports/demo-{stem}"),
        "out", "run_demo", kind="folder", ours=is_report_folder, force=force,
        expected="a new or empty folder, or a report folder",
    )  # fmt: skip
    cache_path = Path(cache or f"data/cache/demo-{stem}.h5")
    if cache is None:  # the default's folder is the demo's to create
        cache_path.parent.mkdir(parents=True, exist_ok=True)
    check_cache(cache_path)
    results_dir = cache_path.with_name(cache_path.stem + "-results")
    ResultsFolder(results_dir).check_path()
    data = _limited(load_dataset(dataset), limit)
    extraction = extract_spec(data, cache_path, spec, options=RunOptions(progress=progress))
    fitted = {"models": [extraction.model], "layers": list(extraction.layers),
              "heads": list(heads or defaults.heads), "n_jobs": jobs}  # fmt: skip
    pipelines.fit(cache_path, results_dir, **fitted)
    if views:
        pipelines.fit(cache_path, results_dir, views="train", **fitted)
    pipelines.report(results_dir, report_dir, force=force)
    best, recommendation = best_found(results_dir)
    return DemoSummary(
        dataset=dataset,
        extraction=extraction,
        results=results_dir,
        report=report_dir,
        best=best,
        recommendation=recommendation,
        earlier_layer=earlier_layer(results_dir),
        seconds=time.perf_counter() - started,
        views=views_found(results_dir) if views else "",
    )


def _check_choices(heads, layers, limit, jobs) -> None:
    """Every argument the later steps would refuse, refused before the extraction."""
    import pipelines

    for head in check_names(heads, "heads", "run_demo") or ():
        pipelines.get_head(head)
    check_names(layers, "layers", "run_demo")
    check_optional_int(limit, "limit", "run_demo", low=2)
    from pipelines.fitting._fit import check_n_jobs

    try:
        check_n_jobs(jobs)
    except ParameterError as error:  # the demo's parameter is 'jobs'
        raise ParameterError("jobs", "run_demo", error.expected, jobs) from None


def best_found(results: str | os.PathLike) -> tuple[dict, str]:
    """The best combination of a results folder (by :func:`pipelines.best_combination`, so by
    :func:`pipelines.best`) as the summary shows it, and the recommendation as plain text."""
    import pipelines
    from pipelines.rows._views import Variant

    best, recommendation = pipelines.best_combination(results)
    shown = ("model", "layer", "head", "cv_mean", "cv_std", "test_accuracy", "params_text")
    variant = Variant(**{k: best.get(k, v) for k, v in Variant().columns().items()})
    found = {k: best[k] for k in shown} | {"variant": "" if variant.is_plain else variant.label}
    return found, recommendation.replace("**", "").replace("`", "")


def views_found(results: str | os.PathLike) -> str:
    """One line: the best head on views against the same combination fitted plainly, with
    the report's verdict on the CV gain."""
    from pipelines.reporting._report import views_outcome

    return views_outcome(results)


def earlier_layer(results: str | os.PathLike) -> str:
    """Whether an earlier layer beat the penultimate one, in the recommendation's own terms:
    ``"yes"``, ``"no"``, ``"tie"`` (a CV difference of 0.000) or ``"not reliably"``."""
    from pipelines.reporting._report import earlier_layer_outcome

    return earlier_layer_outcome(results)


def summarize(summary: DemoSummary) -> str:
    """The lines the CLI prints after the demo."""
    best = summary.best
    extraction = summary.extraction
    source = (
        "cache hit, no forward pass"
        if extraction.hit
        else f"{extraction.images_per_second:.0f} img/s on {extraction.device}"
    )
    variant = f" ({best['variant']})" if best.get("variant") else ""
    return "\n".join(
        [
            f"featurecache demo on {summary.dataset}: {extraction.n_samples} images, {extraction.model} "
            f"layers {', '.join(extraction.layers)} ({source})",
            f"best: backbone {best['model']}, layer {best['layer']}, head {best['head']}{variant} "
            f"-> test accuracy {best['test_accuracy']:.4f} (CV {best['cv_mean']:.4f} ± {best['cv_std']:.4f})",
            f"earlier layer beat the penultimate one: {summary.earlier_layer}",
            *([summary.views] if summary.views else []),
            summary.recommendation,
            f"report: {summary.report / 'report.html'} (and report.md); took {summary.seconds:.0f}s",
        ]
    )


def _limited(data: Dataset, limit: int | None) -> Dataset:
    if limit is None:
        return data
    keep = np.concatenate(
        [
            np.flatnonzero(data.splits == split)[:limit]
            for split in dict.fromkeys(data.splits.tolist())
        ]
    )
    keep.sort()
    return data.subset(keep, f"first {limit} per split")
