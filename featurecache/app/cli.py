"""The ``featurecache`` command line.

Every subcommand maps onto one public function; errors print one line and exit
with the error's code (2 for bad input).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from featurecache import __version__
from featurecache._validation import ParameterError
from featurecache.engines._options import (
    COMPUTE_DTYPE_NAMES,
    DECODE_MODES,
    DEFAULT_DECODE,
    DEVICES,
    STORE_DTYPES,
)
from featurecache.exceptions import FeatureCacheError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurecache",
        description="Extract frozen-backbone features once into an HDF5 cache, then choose "
        "backbone, layer and head on the cache without a GPU.",
    )
    parser.add_argument("--version", action="version", version=f"featurecache {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_backbones(sub)
    _add_layers(sub)
    _add_extract(sub)
    _add_ls(sub)
    from featurecache.app._fit_commands import register

    register(sub)
    _add_predict(sub)
    _add_demo(sub)
    for name in ("layers", "extract", "predict", "demo"):
        sub.choices[name].add_argument(
            "--offline",
            action="store_true",
            help="never download weights (also FEATURECACHE_OFFLINE=1 or HF_HUB_OFFLINE=1)",
        )
    for command in sub.choices.values():
        command.set_defaults(flags=_flag_names(command))
    return parser


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Map each parameter name (argparse ``dest``) to what the user types: ``--batch-size``, ``CACHE``.

    A subcommand's ``owner_flags`` default adds ``"Owner.parameter"`` keys for parameters
    whose name means another flag (RayEngine's ``workers`` is ``--ray-workers``).
    """
    flags = {
        action.dest: action.option_strings[-1] if action.option_strings else action.dest.upper()
        for action in parser._actions
        if action.dest != "help"
    }
    return {**flags, **(parser.get_default("owner_flags") or {})}


def _message(error: FeatureCacheError, flags: dict[str, str]) -> str:
    """The error's line, with a parameter's name turned into the flag the user typed."""
    if isinstance(error, ParameterError):
        flag = flags.get(f"{error.owner}.{error.parameter}") or flags.get(error.parameter)
        if flag:
            return error.render(flag, cli=True)
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "offline", False):
        os.environ["FEATURECACHE_OFFLINE"] = "1"  # also read by loader workers and Ray actors
    try:
        with _sigterm_interrupts():
            return int(args.func(args) or 0)
    except FeatureCacheError as error:
        print(f"featurecache: error: {_message(error, args.flags)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as stop:
        how = "terminated" if isinstance(stop, _Terminated) else "interrupted"
        print(
            f"featurecache: {how}; finished shards and combinations are kept, re-run to resume.",
            file=sys.stderr,
        )
        return 143 if isinstance(stop, _Terminated) else 130


class _Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an interrupt."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into an interrupt while a command runs.

    The default action kills this process alone: joblib's worker processes would keep
    computing their task for minutes. An interrupt unwinds like Ctrl-C instead, and joblib
    terminates its workers on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _csv_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def _workers(text: str) -> int | str:
    return text if text == "auto" else int(text)


# -- backbones ------------------------------------------------------------------------


def _add_backbones(sub) -> None:
    parser = sub.add_parser("backbones", help="list the backbones that can be extracted")
    parser.add_argument(
        "--source",
        default=None,
        help="torchvision, timm, open_clip or hf (default: the built-in backbones)",
    )
    parser.add_argument("--filter", default=None, help="names containing this (* wildcards)")
    parser.set_defaults(func=_run_backbones)


def _run_backbones(args) -> int:
    from featurecache.models._registry import get_backbone, list_backbones

    names = list_backbones(args.source, args.filter)
    if args.source not in (None, "torchvision", "builtin"):
        print("\n".join(names))  # building every record would import and inspect each model
        return 0
    for name in names:
        backbone = get_backbone(name)
        print(f"{name:32s} {backbone.family:16s} default weights: {backbone.default_weights}")
    return 0


# -- layers ---------------------------------------------------------------------------


def _add_layers(sub) -> None:
    parser = sub.add_parser(
        "layers", help="list the capturable layers of a backbone with their shapes"
    )
    parser.add_argument("model")
    parser.add_argument(
        "--image-size", type=int, default=None, help="input size S (default: the backbone's)"
    )
    parser.set_defaults(func=_run_layers)


def _run_layers(args) -> int:
    from featurecache.models._registry import list_layers

    infos = list_layers(args.model, image_size=args.image_size)
    print(f"{'layer':40s} {'output shape':20s} {'depth':>6s}  default  stage")
    for info in infos:
        shape = "x".join(str(s) for s in info.shape)
        default, stage = "*" if info.default else "", "stage" if info.stage else ""
        print(f"{info.name:40s} {shape:20s} {info.depth:6.2f}  {default:7s}  {stage}")
    print(
        f"\n* = default set; stage = exposed by the library itself (forward_intermediates); "
        f"choose others with `featurecache extract DATA --model {args.model} --layers a,b,c`."
    )
    return 0


# -- extract --------------------------------------------------------------------------


def _add_extract(sub) -> None:
    parser = sub.add_parser("extract", help="extract features of a dataset into the cache")
    parser.add_argument(
        "data",
        help="folder of class sub-folders, CSV manifest (path,label[,split]) or builtin:NAME",
    )
    parser.add_argument("--cache", required=True, help="cache file (.h5); created or resumed")
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="backbone name (see `featurecache backbones`)"
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="DEFAULT (downloaded unless --offline), a torchvision weights name, none, or a "
        "state-dict file",
    )
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated layer names (see `featurecache layers MODEL`)",
    )
    parser.add_argument(
        "--pool",
        default=None,
        help="avg|max|avgmax|flatten for conv maps; cls|mean|cls+mean for tokens",
    )
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers", type=_workers, default=None, help="data-loading processes (default: auto)"
    )
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", *COMPUTE_DTYPE_NAMES), help="autocast dtype"
    )
    parser.add_argument("--store-dtype", default="float32", choices=STORE_DTYPES)
    parser.add_argument(
        "--decode",
        default="auto",
        choices=("auto", *DECODE_MODES),
        help="how JPEG files become pixels: exact, fast (DCT-domain downscaling of large "
        "JPEGs), gpu (nvJPEG on a CUDA device); auto keeps the cached model's, else "
        f"{DEFAULT_DECODE}. Part of the cache key",
    )
    parser.add_argument(
        "--name", default=None, help="name of the model in the cache (default: the backbone)"
    )
    parser.add_argument(
        "--split", default=None, help="random:FRACTION or none, for data without splits"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1024, help="rows per committed shard")
    parser.add_argument(
        "--no-locking",
        action="store_true",
        help="no file locks (network file systems); also FEATURECACHE_NO_LOCKING=1",
    )
    parser.add_argument("--engine", default="local", choices=("local", "ray"))
    ray = parser.add_argument_group("with --engine ray")
    ray.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    ray.add_argument(
        "--ray-workers", type=int, default=None, help="Ray actors, one backbone each (default: 2)"
    )
    ray.add_argument("--cpus-per-worker", type=float, default=1.0)
    ray.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--no-progress", action="store_true")
    # RayEngine's 'workers' is --ray-workers; RunOptions' is --workers.
    parser.set_defaults(func=_run_extract, owner_flags={"RayEngine.workers": "--ray-workers"})


def _run_extract(args) -> int:
    from featurecache._extract import extract

    _read_deprecated_workers(args)
    result = extract(
        args.data,
        args.cache,
        model=args.model,
        weights=args.weights,
        layers=_csv_list(args.layers),
        pool=args.pool,
        image_size=args.image_size,
        dtype=args.dtype,
        store_dtype=args.store_dtype,
        decode=args.decode,
        name=args.name,
        split=args.split,
        seed=args.seed,
        options=_run_options(args),
        engine=_engine(args),
    )
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
    print(f"rows: {result.n_ok} ok, {result.n_failed} failed of {result.n_samples}")
    return 0


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

        return LocalEngine()
    from featurecache.engines._ray import RayEngine

    return RayEngine(
        address=args.address,
        workers=2 if args.ray_workers is None else args.ray_workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
    )


# -- ls -------------------------------------------------------------------------------


def _add_ls(sub) -> None:
    parser = sub.add_parser(
        "ls", help="show what a cache holds: models, layers, shapes, status, provenance"
    )
    parser.add_argument("cache")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run_ls)


def _run_ls(args) -> int:
    from pipelines import open_cache

    cache = open_cache(args.cache)
    if args.json:
        entries = [
            {
                **{
                    k: getattr(e, k)
                    for k in (
                        "model",
                        "layer",
                        "n_features",
                        "dtype",
                        "n_ok",
                        "n_failed",
                        "n_pending",
                        "depth",
                    )
                },
                "provenance": e.provenance,
            }
            for e in cache.entries
        ]
        print(
            json.dumps(
                {"cache": str(cache.path), "n_samples": len(cache.ids), "entries": entries},
                default=str,
                indent=1,
            )
        )
        return 0
    splits = {
        name: int((cache.splits == name).sum()) for name in dict.fromkeys(cache.splits.tolist())
    }
    split_text = ", ".join(f"{name or '(none)'} {count}" for name, count in splits.items())
    print(
        f"{cache.path}: {len(cache.ids)} samples ({split_text}), {len(cache.class_names)} classes"
    )
    for model in cache.models:
        entries = [e for e in cache.entries if e.model == model]
        config = entries[0].provenance if entries else {}
        print(
            f"\n{model}: backbone {config.get('backbone', '?')}, weights {config.get('weights', '?')}, pooling {config.get('pooling', '?')}, compute {config.get('compute_dtype', '?')}"
        )
        print(
            f"  sha256 {str(config.get('weights_sha256', '?'))[:16]}…  preprocessing {config.get('preprocessing', '?')}"
        )
        if config.get("source"):
            revision = f" revision {config['revision']}" if config.get("revision") else ""
            print(f"  source {config['source']} ({config.get('library') or '?'}){revision}")
        print(
            f"  {'layer':32s} {'features':>9s} {'dtype':8s} {'ok':>7s} {'failed':>7s} {'pending':>8s}"
        )
        for e in entries:
            print(
                f"  {e.layer:32s} {e.n_features:9d} {e.dtype:8s} {e.n_ok:7d} {e.n_failed:7d} {e.n_pending:8d}"
            )
        failures = cache.failures(model)
        if failures:
            print(f"  failed samples ({len(failures)}):")
            for sample_id, reason in failures:
                print(f"    {sample_id}: {reason}")
    return 0


# -- predict --------------------------------------------------------------------------


def _add_predict(sub) -> None:
    parser = sub.add_parser("predict", help="predict new images with a fitted head")
    parser.add_argument("images", help="a folder of images or a CSV with a path column")
    parser.add_argument(
        "--head",
        required=True,
        help="a head file from `featurecache fit` (RESULTS/heads/...joblib)",
    )
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=_workers, default="auto")
    parser.set_defaults(func=_run_predict)


def _run_predict(args) -> int:
    from featurecache.app._predict import predict, write_predictions

    table = predict(
        args.images, args.head, batch_size=args.batch_size, device=args.device, workers=args.workers
    )
    write_predictions(table, args.out)
    n_failed = int((table["status"] != "ok").sum())
    print(f"predicted {len(table) - n_failed} images ({n_failed} unreadable) -> {args.out}")
    return 0


# -- demo -----------------------------------------------------------------------------


def _add_demo(sub) -> None:
    parser = sub.add_parser("demo", help="extract, fit and report on a built-in dataset, offline")
    parser.add_argument(
        "--dataset", default="builtin:digits", help="builtin:digits or builtin:fashion-mnist"
    )
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers (default: the backbone's default set)",
    )
    parser.add_argument(
        "--heads",
        default=None,
        help="comma-separated heads (default: logreg,linsvm,svm on digits; logreg on fashion-mnist)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N samples per split (quick runs)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size S (default: the backbone's on digits; 96 on fashion-mnist)",
    )
    parser.add_argument(
        "--cache", default=None, help="cache file (default: data/cache/demo-<dataset>.h5)"
    )
    parser.add_argument("--out", default=None, help="report folder (default: reports/demo)")
    parser.add_argument("--jobs", type=int, default=-1)
    parser.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from featurecache.app._demo import run_demo, summarize

    summary = run_demo(
        dataset=args.dataset,
        model=args.model,
        layers=_csv_list(args.layers),
        heads=_csv_list(args.heads),
        limit=args.limit,
        image_size=args.image_size,
        cache=args.cache,
        out=args.out,
        jobs=args.jobs,
        progress=sys.stderr.isatty(),
    )
    print(summarize(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
