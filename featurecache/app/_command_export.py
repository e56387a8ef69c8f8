"""``featurecache export CACHE``: one layer's usable rows as embedding files."""

from __future__ import annotations

from featurecache.app._argparse import add_command

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    parser = add_command(
        sub, "export",
        help="write one layer's usable rows as embedding files (clip-retrieval's layout)",
        description="Write the usable rows of one (model, layer) (computed, not removed) as "
        "OUT/img_emb/img_emb_K.npy with OUT/metadata/metadata_K.parquet (id, label, split; "
        "the provenance in the parquet metadata), the layout embedding-reader and autofaiss "
        "read; in bounded memory, one part at a time (docs/data-at-scale.md).",
    )  # fmt: skip
    parser.add_argument("cache", metavar="CACHE", help="the cache index (.h5)")
    parser.add_argument("--model", required=True, help="model name in the cache (required)")
    parser.add_argument("--layer", required=True, help="layer name (required)")
    parser.add_argument(
        "--out", required=True, help="a new or empty folder, written whole or not at all"
    )
    parser.add_argument(
        "--format", default="npy", choices=("npy", "parquet"),
        help="npy: img_emb/*.npy with metadata/*.parquet; parquet: img_emb/*.parquet with an "
        "embedding column beside the metadata",
    )  # fmt: skip
    parser.add_argument(
        "--rows-per-part", type=int, default=None,
        help="rows per file (default: as many as fit in 256 MiB)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurecache.cache import export_embeddings

    done = export_embeddings(
        args.cache, args.model, args.layer, args.out, format=args.format,
        rows_per_part=args.rows_per_part,
    )  # fmt: skip
    parts = f"{done.n_parts} part{'s' if done.n_parts != 1 else ''}"
    print(
        f"exported {done.n_rows} rows of {args.model}/{args.layer} ({done.n_features} features) "
        f"in {parts} -> {done.out}"
    )
    return 0
