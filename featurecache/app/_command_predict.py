"""``featurecache predict``: new images through a fitted head, or the backbone's own classes."""

from __future__ import annotations

import os

from featurecache.app._argparse import add_command, workers
from featurecache.engines._options import DEVICES

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    parser = add_command(
        sub, "predict",
        help="predict new images with a fitted head, or with the backbone's own ImageNet classes",
        description="Predict new images with a head written by `featurecache fit`: the head "
        "records the backbone, weights digest, preprocessing, pooling and layer it was fitted "
        "on, and exactly that is rebuilt. Writes a CSV: id, path, status, reason, prediction "
        "and proba_<class> columns. With --imagenet, the classifier the backbone was trained "
        "with (stored in --cache by extract) gives its own ImageNet classes: of every cached "
        "sample (without torch), or of IMAGES through the same backbone.",
    )  # fmt: skip
    parser.add_argument(
        "images", nargs="?", default=None,
        help="a folder of images or a CSV with a path column (optional with --imagenet: the "
        "cached samples by default)",
    )  # fmt: skip
    parser.add_argument(
        "--head", default=None,
        help="a head file from `featurecache fit`, RESULTS/heads/MODEL/LAYER/HEAD.joblib "
        "(this or --imagenet, no default)",
    )  # fmt: skip
    parser.add_argument(
        "--imagenet", action="store_true",
        help="the backbone's own ImageNet classes, from the classifier stored in --cache",
    )  # fmt: skip
    parser.add_argument(
        "--cache", default=None, help="with --imagenet: the cache (required with it, no default)"
    )
    parser.add_argument(
        "--model", default=None,
        help="with --imagenet: the model in the cache (default: the only one storing it)",
    )  # fmt: skip
    parser.add_argument(
        "--top", type=int, default=5, help="with --imagenet: classes listed per image"
    )
    parser.add_argument(
        "--out", required=True,
        help="output CSV; an existing file is replaced only if it holds featurecache "
        "predictions (required)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument(
        "--device", default="auto", choices=DEVICES, help="where the forward pass runs"
    )
    parser.add_argument(
        "--workers", type=workers, default="auto",
        help="data-loading processes: an int >= 0 or auto",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurecache.app._predict import (
        check_predictions_path,
        predict,
        predict_imagenet,
        write_predictions,
    )
    from featurecache.exceptions import InvalidArgumentError

    if args.imagenet == (args.head is not None):
        raise InvalidArgumentError("predict takes either --head FILE or --imagenet --cache CACHE.")
    if args.imagenet and args.cache is None:
        raise InvalidArgumentError(
            "predict --imagenet needs --cache: the cache that stores the classifier."
        )
    if args.head is not None and args.images is None:
        raise InvalidArgumentError(
            "predict --head needs IMAGES: a folder or a CSV with a path column."
        )
    inputs = {"the head file": args.head, "the cache": args.cache}
    if args.images is not None and os.path.isfile(args.images):
        inputs["the IMAGES CSV"] = args.images
    inputs = {name: path for name, path in inputs.items() if path is not None}
    out = check_predictions_path(args.out, force=args.force, probe=True, inputs=inputs)
    options = dict(batch_size=args.batch_size, device=args.device, workers=args.workers)
    if args.imagenet:
        table = predict_imagenet(args.images, args.cache, model=args.model, top=args.top, **options)
    else:
        table = predict(args.images, args.head, **options)
    write_predictions(table, out, force=args.force)
    n_failed = int((table["status"] != "ok").sum())
    print(f"predicted {len(table) - n_failed} images ({n_failed} unreadable) -> {args.out}")
    if args.imagenet and len(table) <= 20:
        for row in table.itertuples():
            print(f"  {row.id}: {row.top}")
    return 0
