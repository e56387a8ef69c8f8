"""The ``fit`` and ``report`` subcommands; ``featurecache.app.cli`` adds them with :func:`register`.

Errors are raised as :class:`~featurecache.exceptions.FeatureCacheError`; the
main CLI prints them on one line and exits with their code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from featurecache.app._argparse import add_command

__all__ = ["register"]


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _names(values: list[str] | None) -> list[str] | None:
    """``--models a b`` and ``--models a,b`` both mean ``["a", "b"]``."""
    if values is None:
        return None
    return [name for value in values for name in _csv(value)]


def register(subparsers) -> None:
    """Add ``fit`` and ``report`` to an argparse subparsers object.

    Nothing heavy is imported here: scikit-learn loads when a subcommand runs.
    """
    _add_fit(subparsers)
    _add_report(subparsers)


def _add_fit(subparsers) -> None:
    fit = add_command(
        subparsers, "fit",
        help="choose and fit heads on every (model, layer) of a cache; write a results folder",
        description="Hyper-parameters are chosen by stratified k-fold CV on train (or on the "
        "val split when there is one), the chosen head is refitted on train(+val) and scored "
        "once on test. Re-running with the same arguments reuses finished combinations. A "
        "cache with pending rows (an extraction still running or stopped) is refused unless "
        "--allow-partial is given; nothing is written when fit refuses or fails before its "
        "first combination.",
    )  # fmt: skip
    fit.add_argument("cache", help="the CACHE.h5 index written by `featurecache extract`")
    fit.add_argument(
        "--out", required=True,
        help="results folder: new, empty, or one fit wrote (resumed) (required)",
    )  # fmt: skip
    fit.add_argument(
        "--force", action="store_true",
        help="write into an --out that fit did not write, or start over in a results folder "
        "made from other samples",
    )  # fmt: skip
    _add_fit_choices(fit.add_argument_group("what is fitted"))
    _add_fit_protocol(fit.add_argument_group("the selection protocol"))
    _add_fit_runs(fit.add_argument_group("where the fits run"))
    fit.set_defaults(func=run_fit)


def _add_fit_choices(group) -> None:
    """Which models, layers and heads on which grids; learning curves; views and TTA."""
    group.add_argument(
        "--models", nargs="+", default=None, help="models to fit (default: all in the cache)"
    )
    group.add_argument(
        "--layers", nargs="+", default=None, help="layers to fit (default: all of each model)"
    )
    group.add_argument(
        "--heads",
        type=_csv,
        default=None,
        help="comma-separated heads: logreg, linsvm, svm, mlp, ridge, knn, nystroem "
        "(default: logreg,linsvm; see docs/heads.md)",
    )
    group.add_argument(
        "--combine", nargs="+", default=None, metavar="SET",
        help="feature sets fitted as one more layer each: [NAME=][MODEL:]LAYER+[MODEL:]LAYER... "
        "or [MODEL:]lastN, e.g. lite0:blocks.10+blocks.14, last4, "
        "lite0:blocks.10+lite2:blocks.14; each part standardised on its own (docs/heads.md)",
    )  # fmt: skip
    group.add_argument(
        "--combine-pca", type=int, default=None, metavar="N",
        help="reduce each part of a feature set wider than N by its own PCA (default: none)",
    )  # fmt: skip
    group.add_argument(
        "--grid", default=None,
        help="JSON/YAML file {head: {param: [values]}} updating the default grids "
        "(default: the grids of docs/heads.md)",
    )  # fmt: skip
    group.add_argument(
        "--shots", default=None,
        help="few-shot learning curves: training images per class, e.g. 1,5,10,25,all, "
        "written to RESULTS/curves.csv (default: none)",
    )  # fmt: skip
    group.add_argument(
        "--draws", type=int, default=5, help="seeded draws per number of shots, >= 1"
    )
    group.add_argument(
        "--views", choices=("train",), default=None,
        help="train on every augmented view of every training row (a cache extracted with "
        "--views K --augment SPEC); CV folds grouped by sample (default: plain view only)",
    )  # fmt: skip
    group.add_argument(
        "--tta", choices=("mean-proba", "mean-feature"), default=None,
        help="score test rows on the mean over their test-time views (extract --tta SPEC): "
        "of predict_proba (decision_function for heads without it), or of the features "
        "(default: plain view only)",
    )  # fmt: skip


def _add_fit_protocol(group) -> None:
    """How heads are chosen and scored: folds, seed, PCA, partial caches."""
    group.add_argument("--cv", type=int, default=5, help="CV folds on train, >= 2")
    group.add_argument(
        "--protocol", choices=("ssl-transfer", "dino-knn"), default=None,
        help="evaluate with a published protocol instead of --heads and CV: ssl-transfer "
        "(L-BFGS logreg, 45 weight decays, 20%% val split) or dino-knn (cosine, k=20, "
        "T=0.07) (default: the product's own; docs/heads.md)",
    )  # fmt: skip
    group.add_argument(
        "--seed", type=int, default=0, help="seeds folds and estimators, 0 to 2**32-1"
    )
    group.add_argument(
        "--pca", type=int, default=None,
        help="PCA to N components on layers wider than N (default: no PCA)",
    )  # fmt: skip
    group.add_argument(
        "--allow-partial", action="store_true",
        help="fit on the rows done when the cache has pending rows (the report states them)",
    )  # fmt: skip


def _add_fit_runs(group) -> None:
    """Parallel workers, the joblib backend and the memory budget."""
    group.add_argument(
        "--memory", default=None,
        help="what one layer's fit may hold, e.g. 4GB or 512MB (default: half the RAM); a "
        "larger layer is streamed and results.csv states each head's strategy",
    )  # fmt: skip
    group.add_argument(
        "--select-rows", dest="select_rows", type=int, default=None,
        help="out of core, the most rows a hyper-parameter search runs on (a stratified "
        "sample; default 50000)",
    )  # fmt: skip
    group.add_argument(
        "--jobs", dest="n_jobs", type=int, default=-1,
        help="parallel workers (-1: all cores; 0 is refused)",
    )  # fmt: skip
    group.add_argument(
        "--backend", default="loky", help="joblib backend: loky, threading, multiprocessing, "
        "dask or ray",
    )  # fmt: skip
    group.add_argument(
        "--address", default=None,
        help="dask scheduler or ray cluster address (default: a local one)",
    )  # fmt: skip


def _add_report(subparsers) -> None:
    report = add_command(
        subparsers, "report",
        help="write report.md and a self-contained report.html from a results folder",
    )  # fmt: skip
    report.add_argument("results", help="results folder written by `featurecache fit`")
    report.add_argument(
        "--out", default=None,
        help="report folder: new, empty, or one report wrote (default: reports/<name of "
        "RESULTS>)",
    )  # fmt: skip
    report.add_argument(
        "--force", action="store_true",
        help="write into an --out that report did not write (files of the same names are "
        "replaced)",
    )  # fmt: skip
    report.set_defaults(func=run_report)


def run_fit(args: argparse.Namespace) -> int:
    from featurecache.exceptions import InvalidArgumentError
    from pipelines.fitting._fit import DEFAULT_HEADS, fit
    from pipelines.results._results import best

    if args.protocol is not None and args.heads is not None:
        raise InvalidArgumentError(
            f"--heads cannot be given with --protocol {args.protocol}: the protocol fixes its "
            "own head; drop --heads, or fit the heads in a run without --protocol."
        )
    table = fit(
        args.cache,
        args.out,
        models=_names(args.models),
        layers=_names(args.layers),
        heads=DEFAULT_HEADS if args.heads is None else args.heads,
        grid=args.grid,
        cv=args.cv,
        seed=args.seed,
        n_jobs=args.n_jobs,
        pca=args.pca,
        backend=args.backend,
        address=args.address,
        shots=args.shots,
        draws=args.draws,
        views=args.views,
        tta=args.tta,
        allow_partial=args.allow_partial,
        force=args.force,
        combine=args.combine,
        combine_pca=args.combine_pca,
        protocol=args.protocol,
        memory=args.memory,
        select_rows=args.select_rows,
    )
    print(f"{len(table)} combinations in {Path(args.out) / 'results.csv'}")
    for _, row in table.iterrows():
        if row.get("strategy", "in memory") != "in memory":
            print(f"{row['model']} / {row['layer']} / {row['head']}: {row['strategy']}")
    if len(table):
        print(_best_line(best(table)))
    return 0


def _best_line(chosen) -> str:
    from pipelines.rows._views import Variant

    variant = Variant(**{k: chosen.get(k, v) for k, v in Variant().columns().items()})
    test = chosen["test_accuracy"]
    test_text = "no test split" if test != test else f"test {test:.3f}"
    shown = "" if variant.is_plain else f" ({variant.label})"
    return (
        f"best by CV: {chosen['model']} / {chosen['layer']} / {chosen['head']}{shown} "
        f"(CV {chosen['cv_mean']:.3f} ± {chosen['cv_std']:.3f}, {test_text})"
    )


def run_report(args: argparse.Namespace) -> int:
    from pipelines.reporting._report import report

    out = Path(args.out) if args.out else Path("reports") / Path(args.results).resolve().name
    folder = report(args.results, out, force=args.force)
    print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}")
    return 0
