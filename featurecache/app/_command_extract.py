"""``featurecache extract DATA``: the flags of a :class:`~featurecache.FeatureSpec`, the data
source, the run options and the engine, then one call of ``extract_spec``.
"""

from __future__ import annotations

import sys

from featurecache.app._argparse import add_command, add_resize, csv_list, workers
from featurecache.app._command_ls import views_text
from featurecache.app._source_flags import add_source_flags, data_argument
from featurecache.core._spec import (
    DECODE_CHOICES,
    DEFAULT_DECODE,
    DEFAULT_MODEL,
    DTYPE_CHOICES,
    MAX_IMAGE_SIZE,
    POOL_METHODS,
    STORE_DTYPES,
    FeatureSpec,
)
from featurecache.engines._options import DEVICES

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    parser = add_command(
        sub, "extract", help="extract features of a dataset into the cache",
        description="Extract the features of DATA into a cache: one forward pass captures "
        "every requested layer; finished shards are kept, so re-running resumes. What was "
        "understood of DATA (classes, images per split, skipped entries by kind) is printed "
        "on stdout before any compute; -v lists the skipped entries.",
    )  # fmt: skip
    parser.add_argument(
        "data",
        help="folder of class sub-folders (optionally under train/, val/, test/), "
        "CSV manifest (path,label[,split]), builtin:NAME, or webdataset .tar shards or "
        ".parquet files (a file, brace pattern or glob); each local or a URL (s3://, gs://, "
        "https://), a folder as its prefix (s3://bucket/photos/)",
    )
    parser.add_argument(
        "--cache", required=True,
        help="cache file (.h5) in an existing folder; created, or resumed (required)",
    )  # fmt: skip
    _add_feature_options(parser.add_argument_group(
        "the model and its features (all but --name and --prompts make the cache key)"
    ))  # fmt: skip
    _add_sample_options(parser.add_argument_group("the samples"))
    add_source_flags(parser.add_argument_group(
        "tar shards and parquet files (docs/data-at-scale.md)"
    ))  # fmt: skip
    _add_view_options(parser.add_argument_group("augmented and test-time views (docs/views.md)"))
    _add_run_options(parser, parser.add_argument_group(
        "how it runs (RunOptions and the engine: never the stored numbers)"
    ))  # fmt: skip
    # RayEngine's 'workers' is --ray-workers; RunOptions' is --workers.
    parser.set_defaults(
        func=run,
        owner_flags={"RayEngine.workers": "--ray-workers", "image_column": "--image-field"},
    )


def _add_feature_options(group) -> None:
    """What the stored numbers are (FeatureConfig), the model's name and its prompts."""
    group.add_argument(
        "--model", default=DEFAULT_MODEL, help="backbone name (see `featurecache backbones`)"
    )
    group.add_argument(
        "--weights", default=None,
        help="DEFAULT (downloaded unless --offline), a torchvision weights name, none (seeded "
        "random), or a state-dict file (default: the backbone's default weights)",
    )  # fmt: skip
    group.add_argument(
        "--layers", default=None,
        help="comma-separated layer names, see `featurecache layers MODEL` "
        "(default: the backbone's default set)",
    )  # fmt: skip
    # No choices= for --pool and --resize: which pooling a layer takes is known from the model,
    # and both are refused in the library's words.
    group.add_argument(
        "--pool", default=None,
        help=f"{'|'.join(POOL_METHODS['map'])} for conv maps; {'|'.join(POOL_METHODS['tokens'])} "
        f"for tokens (default: {POOL_METHODS['map'][0]} for maps, {POOL_METHODS['tokens'][0]} "
        "for tokens)",
    )  # fmt: skip
    group.add_argument(
        "--image-size", type=int, default=None,
        help=f"crop size S, 1 to {MAX_IMAGE_SIZE} (default: the weights' or the backbone's own)",
    )  # fmt: skip
    add_resize(group, "the model's own preprocessing, crop for torchvision")
    group.add_argument(
        "--dtype", default="auto", choices=DTYPE_CHOICES,
        help="autocast dtype; auto keeps the cached model's, else the device's best",
    )  # fmt: skip
    group.add_argument(
        "--store-dtype",
        default="float32",
        choices=STORE_DTYPES,
        help="dtype of the stored features",
    )
    group.add_argument(
        "--decode", default="auto", choices=DECODE_CHOICES,
        help="how image files become pixels, part of the cache key: exact, fast (large JPEGs "
        "decoded at 1/2-1/8 scale in the DCT domain), gpu (nvJPEG on a CUDA device) "
        f"(default: auto, the cached model's, else {DEFAULT_DECODE})",
    )  # fmt: skip
    group.add_argument(
        "--name", default=None, help="name of the model in the cache (default: the backbone's)"
    )
    group.add_argument(
        "--prompts", default=None, metavar="FILE",
        help="OpenCLIP and Hugging Face SigLIP/CLIP models: prompt templates of the stored "
        "zero-shot classifier, one per line with {} for the class name (default: "
        "featurecache.DEFAULT_PROMPTS)",
    )  # fmt: skip


def _add_sample_options(group) -> None:
    """Which rows the cache holds, their splits, and how a changed dataset is met."""
    group.add_argument(
        "--split", default=None,
        help="random:FRACTION or none, for data without splits (default: the split the cache "
        "stores, else the data's own splits; builtin:digits random:0.2); another split than "
        "the stored one is refused without --resplit",
    )  # fmt: skip
    group.add_argument(
        "--resplit", action="store_true",
        help="let --split replace the splits of data that has its own (split folders, a split "
        "column), or the split the cache stores",
    )  # fmt: skip
    group.add_argument(
        "--seed", type=int, default=0, help="seed of --split and of --weights none, 0 to 2**32-1"
    )
    group.add_argument(
        "--frozen-samples",
        action="store_true",
        help="refuse a dataset that differs from the cache's samples (default: samples are "
        "matched by content; new and changed ones get new rows and are computed, removed ones "
        "are marked removed, labels follow the data, a stored split is kept)",
    )
    group.add_argument(
        "--verify", action="store_true",
        help="hash every file to compare it with the cache (default: only files whose size, "
        "times or inode changed)",
    )  # fmt: skip
    group.add_argument(
        "--retry-failed", action="store_true",
        help="compute the rows that failed for this model again (a failed file whose content "
        "changed is retried anyway)",
    )  # fmt: skip


def _add_view_options(views) -> None:
    """Augmented and test-time views (docs/views.md)."""
    views.add_argument(
        "--views", type=int, default=0, metavar="K",
        help="views per train and val row, view 0 the plain one: 2 to 64, with --augment; "
        "test rows get view 0 only (default: 0, none). Part of the cache key",
    )  # fmt: skip
    views.add_argument(
        "--augment", default=None, metavar="SPEC",
        help="torchvision v2 augmentations of views 1..K-1: rrc[:LO-HI] (RandomResizedCrop "
        "scale), flip[:P], jitter:S (ColorJitter), e.g. flip,rrc:0.35-1,jitter:0.2; each view "
        "seeded by (sample id, view, --seed) (default: none)",
    )  # fmt: skip
    views.add_argument(
        "--tta", default=None, metavar="SPEC",
        help="test-time views of every row: crops:F (five crops of F of each side), flip (the "
        "mirror of each view), e.g. crops:0.875,flip, 12 views with the plain one (default: none)",
    )  # fmt: skip


def _add_run_options(parser, group) -> None:
    """How the extraction runs (RunOptions, the engine): never the stored numbers."""
    group.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    group.add_argument(
        "--workers", type=workers, default=None,
        help="data-loading processes: an int >= 0 or auto (default: auto, one per CPU at the "
        "lowest priority when the forward runs on the CPU, one fewer than the CPUs beside an "
        "accelerator; at least 1 and at most 32)",
    )  # fmt: skip
    group.add_argument(
        "--device", default="auto", choices=DEVICES, help="where the forward pass runs"
    )
    group.add_argument("--shard-size", type=int, default=1024, help="rows per committed shard")
    group.add_argument(
        "--no-locking",
        action="store_true",
        help="no file locks (network file systems); also FEATURECACHE_NO_LOCKING=1",
    )
    group.add_argument(
        "--engine", default="local", choices=("local", "ray"), help="where the shards run"
    )
    group.add_argument(
        "--forward-threads", type=int, default=None, metavar="N",
        help="--engine local on the CPU: threads of the forward pass, leaving the other cores "
        "to the loader processes (default: one per core)",
    )  # fmt: skip
    ray = parser.add_argument_group("with --engine ray")
    ray.add_argument(
        "--address", default=None, help="Ray cluster address (default: a local Ray instance)"
    )
    ray.add_argument(
        "--ray-workers", type=int, default=None, help="Ray actors, one backbone each (default: 2)"
    )
    ray.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each actor reserves")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each actor reserves")
    group.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none without a terminal)"
    )


def run(args) -> int:
    from featurecache.extraction._extract import extract_spec

    _read_deprecated_workers(args)
    options, engine = _run_options(args), _engine(args)
    # extract_spec validates the request once, before the session, the cache or the data
    result = extract_spec(
        data_argument(args), args.cache, _feature_spec(args), options=options, engine=engine,
        on_dataset=lambda dataset: _print_understood(dataset, args.verbose),
    )  # fmt: skip
    if result.hit:
        print(
            f"cache hit: {result.model} layers {','.join(result.layers)} already in {result.cache} (no forward pass)"
        )
    else:
        print(
            f"extracted {result.model} layers {','.join(result.computed)} for {result.rows_computed} samples "
            f"in {result.seconds:.1f}s ({result.images_per_second:.1f} img/s, {result.device}, {result.compute_dtype}) "
            f"-> {result.cache}"
        )
    if result.changes != "no change":
        print(f"samples: {result.changes} since the last run")
    counts = result.counts or {"all": _bare_counts(result)}  # an engine may report no splits
    print(f"rows: {_counts_text(counts)}")
    if args.views or args.tta:
        print(_views_line(args.cache, result.model))
    if result.n_ok == 0 and result.n_failed:
        print(
            f"featurecache: error: every row failed ({result.n_failed}); see the reasons with "
            f"`featurecache ls {result.cache}`",
            file=sys.stderr,
        )
        return 1
    return 0


def _feature_spec(args) -> FeatureSpec:
    """The request the flags make (validated by ``extract_spec``)."""
    from featurecache.models._prompts import read_prompts

    return FeatureSpec(
        model=args.model, weights=args.weights, layers=csv_list(args.layers), pool=args.pool,
        image_size=args.image_size, resize=args.resize, dtype=args.dtype,
        store_dtype=args.store_dtype, decode=args.decode, name=args.name, split=args.split,
        seed=args.seed, resplit=args.resplit, frozen_samples=args.frozen_samples,
        verify=args.verify, retry_failed=args.retry_failed,
        prompts=read_prompts(args.prompts) if args.prompts else None, views=args.views,
        augment=args.augment, tta=args.tta,
    )  # fmt: skip


def _print_understood(dataset, verbose: bool) -> None:
    """What was understood of DATA (``-v``: every skipped entry), before any compute."""
    from featurecache.data._datasets import SKIPPED_KINDS

    print(f"data: {dataset.summary()}", flush=True)
    if verbose:
        for kind, entries in dataset.skipped.items():
            for entry in entries:
                print(f"  skipped ({SKIPPED_KINDS[kind]}): {entry}")


def _bare_counts(result) -> dict[str, int]:
    """The counts a result without per-split counts gives: its ok and failed rows."""
    return {"ok": result.n_ok, "failed": result.n_failed, "pending": 0, "removed": 0, "stale": 0}


def _counts_text(counts: dict) -> str:
    """``20 ok, 1 failed, 2 stale (train 15 ok, 1 failed; test 5 ok)``: Cache.counts in words."""

    def words(found: dict) -> str:
        rest = [f"{found[kind]} {kind}" for kind in ("pending", "removed", "stale") if found[kind]]
        return ", ".join([f"{found['ok']} ok", f"{found['failed']} failed", *rest])

    splits = [f"{name or '(no split)'} {words(c)}" for name, c in counts.items() if name != "all"]
    text = words(counts["all"])
    return f"{text} ({'; '.join(splits)})" if len(splits) > 1 else text


def _views_line(cache, model: str) -> str:
    """``views: 4 per train and val row (SPEC); test-time views: 2 per row (SPEC)``."""
    from featurecache.cache import open_cache

    return views_text(open_cache(cache).views(model))


def _read_deprecated_workers(args) -> None:
    """``--workers N --engine ray`` meant N Ray actors; for one release it still does."""
    if args.engine != "ray" or args.workers is None or args.ray_workers is not None:
        return
    args.ray_workers = 2 if args.workers == "auto" else args.workers
    args.workers = None
    print(
        "featurecache: warning: --workers with --engine ray will mean data-loading processes "
        f"in the next release; use --ray-workers {args.ray_workers} for Ray workers.",
        file=sys.stderr,
    )


def _run_options(args):
    from featurecache.engines._options import RunOptions

    return RunOptions(
        batch_size=args.batch_size,
        workers="auto" if args.workers is None else args.workers,
        device=args.device,
        shard_size=args.shard_size,
        locking=False if args.no_locking else None,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def _engine(args):
    if args.engine == "local":
        from featurecache.engines._local import LocalEngine

        return LocalEngine(forward_threads=args.forward_threads)
    from featurecache.engines._ray import RayEngine

    return RayEngine(
        address=args.address,
        workers=2 if args.ray_workers is None else args.ray_workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
    )
