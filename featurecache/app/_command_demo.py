"""``featurecache demo``: extract, fit and report on a built-in dataset, offline."""

from __future__ import annotations

import sys

from featurecache.app._argparse import add_command, add_resize, csv_list
from featurecache.core._spec import DEFAULT_MODEL

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    parser = add_command(sub, "demo", help="extract, fit and report on a built-in dataset, offline")
    parser.add_argument(
        "--dataset", default="builtin:digits", choices=("builtin:digits", "builtin:fashion-mnist"),
        help="the built-in dataset",
    )  # fmt: skip
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="backbone name (see `featurecache backbones`)"
    )
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers (default: the backbone's default set)",
    )
    parser.add_argument(
        "--heads",
        default=None,
        help="comma-separated heads (default: logreg,linsvm,svm on digits; logreg on "
        "fashion-mnist)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N (>= 2) samples per split, for quick runs (default: all)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size S (default: the backbone's on digits; 96 on fashion-mnist)",
    )
    add_resize(parser, "crop on digits; squash on fashion-mnist")
    parser.add_argument(
        "--cache", default=None,
        help="cache file (default: data/cache/demo-<dataset>.h5, its folder created)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="report folder (default: reports/demo)")
    parser.add_argument(
        "--force", action="store_true", help="write the report into an --out report did not write"
    )
    parser.add_argument(
        "--jobs", type=int, default=-1, help="parallel fitting workers (-1: all cores)"
    )
    parser.add_argument(
        "--views", type=int, default=0,
        help="also extract K augmented views of every training image (view 0 the plain one) "
        "and fit every head plainly and on the views; the report compares them (default: 0, "
        "no views; the cache is then data/cache/demo-<dataset>-views<K>.h5)",
    )  # fmt: skip
    parser.add_argument(
        "--augment", default=None,
        help="augmentation of the views (default: rrc:0.5-1 on digits, flip,rrc:0.5-1 on "
        "fashion-mnist; grammar in docs/views.md)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurecache.app._demo import run_demo, summarize

    summary = run_demo(
        dataset=args.dataset,
        model=args.model,
        layers=csv_list(args.layers),
        heads=csv_list(args.heads),
        limit=args.limit,
        image_size=args.image_size,
        resize=args.resize,
        cache=args.cache,
        out=args.out,
        force=args.force,
        jobs=args.jobs,
        progress=sys.stderr.isatty(),
        views=args.views,
        augment=args.augment,
    )
    print(summarize(summary))
    return 0
