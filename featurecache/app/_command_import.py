"""``featurecache import DIR``: embeddings computed elsewhere, into a new cache."""

from __future__ import annotations

import json

from featurecache.app._argparse import add_command

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    parser = add_command(
        sub, "import", help="bring embeddings computed elsewhere into a new cache",
        description="Read DIR (an export, or clip-retrieval's img_emb/*.npy with "
        "metadata/*.parquet holding id or image_path, and optionally label and split) into a "
        "new cache for fit, under the FeatureConfig the export records or --config declares.",
    )  # fmt: skip
    parser.add_argument("folder", metavar="DIR", help="the embeddings folder")
    parser.add_argument("--cache", required=True, help="the new cache index (.h5) (required)")
    parser.add_argument(
        "--config", default=None, metavar="FILE",
        help="JSON of the FeatureConfig that computed the embeddings (backbone, "
        "weights_sha256, preprocessing, pooling, dtype, compute_dtype) (default: the export's)",
    )  # fmt: skip
    parser.add_argument("--model", default=None, help="model name (default: the export's)")
    parser.add_argument("--layer", default=None, help="layer name (default: the export's)")
    parser.add_argument("--shard-size", type=int, default=1024, help="rows per shard file")
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurecache.cache import FeatureConfig, import_embeddings, open_cache
    from featurecache.exceptions import InvalidArgumentError

    config = None
    if args.config is not None:
        try:
            with open(args.config, encoding="utf-8") as handle:
                config = FeatureConfig.from_dict(json.load(handle))
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"--config {args.config!r} must be the JSON of a FeatureConfig ({error}); "
                "write a config.json as a cache's model folder holds it."
            ) from None
    cache = import_embeddings(
        args.folder, args.cache, config=config, model=args.model, layer=args.layer,
        shard_size=args.shard_size,
    )  # fmt: skip
    entry = open_cache(cache).entries[0]
    print(f"imported {entry.n_ok} rows of {entry.model}/{entry.layer} -> {cache}")
    return 0
