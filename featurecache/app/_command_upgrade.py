"""``featurecache upgrade CACHE``: rewrite a cache of an older format version."""

from __future__ import annotations

from featurecache.app._argparse import add_command

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    parser = add_command(
        sub, "upgrade", help="rewrite a cache of an older format version as version 2",
        description="Rewrite a cache written by an older featurecache (format version 1) as "
        "version 2, in place: its shards compacted into segments, its sample table rewritten, "
        "its index rebuilt. Crash-safe (run it again after an interruption) and idempotent. "
        "Older caches are read without it; writing into them needs it.",
    )  # fmt: skip
    parser.add_argument("cache", help="the CACHE.h5 index of the cache")
    parser.add_argument("--no-locking", action="store_true", help="file systems without locks")
    parser.set_defaults(func=run)


def run(args) -> int:
    from featurecache.cache import FORMAT_VERSION, upgrade

    locking = False if args.no_locking else None
    if upgrade(args.cache, locking=locking):
        print(f"{args.cache}: upgraded to version {FORMAT_VERSION}")
    else:
        print(f"{args.cache}: already version {FORMAT_VERSION}; nothing to do")
    return 0
