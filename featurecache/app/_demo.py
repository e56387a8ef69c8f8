"""The offline demo: extract, fit and report on a built-in dataset in one command."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache._data import Dataset, load_dataset
from featurecache._extract import ExtractResult, extract
from featurecache.engines._options import RunOptions
from featurecache.exceptions import InvalidArgumentError

__all__ = [
    "run_demo", "best_found", "summarize", "DemoSummary", "DemoDefaults", "DEMO_DEFAULTS",
]  # fmt: skip


@dataclass(frozen=True)
class DemoDefaults:
    """What the demo runs on a built-in dataset when the caller does not say."""

    image_size: int | None  # None: the backbone's own input size
    heads: tuple[str, ...]


DEMO_DEFAULTS = {
    "builtin:digits": DemoDefaults(
        image_size=None,
        heads=("logreg", "linsvm", "svm"),
    ),
    # 70,000 images: 96 px keeps extraction near ten minutes on 2 CPU cores. On 60,000 train rows
    # logreg takes minutes per layer, while LinearSVC took 20 min on a 320-wide layer and the RBF
    # SVM grows with the square of the rows, so both are left to benchmarks/fashion_mnist.py.
    "builtin:fashion-mnist": DemoDefaults(
        image_size=96,
        heads=("logreg",),
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


def run_demo(
    dataset: str = "builtin:digits",
    *,
    model: str = "efficientnet_lite0",
    layers: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    limit: int | None = None,
    image_size: int | None = None,
    cache: str | None = None,
    out: str | None = None,
    jobs: int = -1,
    progress: bool = False,
) -> DemoSummary:
    """Extract ``model`` features of a built-in dataset, fit heads, and write a report.

    Parameters
    ----------
    dataset : str
        ``builtin:digits`` or ``builtin:fashion-mnist``.
    layers, heads, image_size : optional
        By default the backbone's default layers, and the heads and input size of
        ``DEMO_DEFAULTS[dataset]``.
    limit : int, optional
        Keep the first ``limit`` samples of each split (quick runs and tests).
    cache, out : str, optional
        Cache file and report folder; by default ``data/cache/demo-<dataset>.h5`` and
        ``reports/demo`` (``reports/demo-<dataset>`` for other datasets).

    Returns
    -------
    DemoSummary
    """
    import pipelines

    started = time.perf_counter()
    if dataset not in DEMO_DEFAULTS:
        raise InvalidArgumentError(
            f"--dataset must be a built-in dataset ({' or '.join(DEMO_DEFAULTS)}); got {dataset!r}."
        )
    defaults = DEMO_DEFAULTS[dataset]
    data = _limited(load_dataset(dataset), limit)
    stem = dataset.split(":", 1)[1] + (f"-first{limit}" if limit else "")
    cache_path = Path(cache or f"data/cache/demo-{stem}.h5")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    report_dir = Path(
        out
        or ("reports/demo" if dataset == "builtin:digits" and not limit else f"reports/demo-{stem}")
    )
    results_dir = cache_path.with_name(cache_path.stem + "-results")
    extraction = extract(
        data,
        cache_path,
        model=model,
        layers=layers,
        image_size=image_size or defaults.image_size,
        options=RunOptions(progress=progress),
    )
    pipelines.fit(
        cache_path, results_dir, models=[extraction.model], layers=list(extraction.layers),
        heads=list(heads or defaults.heads), n_jobs=jobs,
    )  # fmt: skip
    pipelines.report(results_dir, report_dir)
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
    )


def best_found(results: str | os.PathLike) -> tuple[dict, str]:
    """The best combination of a results folder (by :func:`pipelines.best_combination`, so by
    :func:`pipelines.best`) as the summary shows it, and the recommendation as plain text."""
    import pipelines

    best, recommendation = pipelines.best_combination(results)
    shown = ("model", "layer", "head", "cv_mean", "cv_std", "test_accuracy", "params_text")
    return {k: best[k] for k in shown}, recommendation.replace("**", "").replace("`", "")


def earlier_layer(results: str | os.PathLike) -> str:
    """Whether an earlier layer beat the penultimate one, in the recommendation's own terms:
    ``"yes"``, ``"no"``, ``"tie"`` (a CV difference of 0.000) or ``"not reliably"``."""
    from pipelines._report import earlier_layer_outcome

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
    return "\n".join(
        [
            f"featurecache demo on {summary.dataset}: {extraction.n_samples} images, {extraction.model} "
            f"layers {', '.join(extraction.layers)} ({source})",
            f"best: backbone {best['model']}, layer {best['layer']}, head {best['head']} "
            f"-> test accuracy {best['test_accuracy']:.4f} (CV {best['cv_mean']:.4f} ± {best['cv_std']:.4f})",
            f"earlier layer beat the penultimate one: {summary.earlier_layer}",
            summary.recommendation,
            f"report: {summary.report / 'report.html'} (and report.md); took {summary.seconds:.0f}s",
        ]
    )


def _limited(data: Dataset, limit: int | None) -> Dataset:
    if limit is None:
        return data
    if limit < 2:
        raise InvalidArgumentError(f"--limit must be at least 2 samples per split; got {limit}.")
    keep = np.concatenate(
        [
            np.flatnonzero(data.splits == split)[:limit]
            for split in dict.fromkeys(data.splits.tolist())
        ]
    )
    keep.sort()
    return Dataset(
        source=f"{data.source} (first {limit} per split)",
        ids=data.ids[keep],
        labels=data.labels[keep],
        splits=data.splits[keep],
        class_names=data.class_names,
        arrays=data.arrays[keep],
    )
