"""The ``featurecache`` command line.

Every subcommand maps onto one public function. Every failure is one line on stderr,
``featurecache: error: WHAT; HOW TO FIX``, with exit code 2 for bad input (a
:class:`~featurecache.exceptions.InvalidArgumentError`, a refused command line, a path
that does not exist or cannot be named) and 1 for a failing environment (a locked or
corrupt cache, a full disk, a read-only file system met during the work, out of memory,
and anything unexpected). ``-v``/``--debug``, before or after the subcommand, adds the
traceback. A reader that closes stdout early (``featurecache ls X | head -1``) ends the
command quietly with exit code 141, as a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

from featurecache import __version__
from featurecache._spec import (
    DECODE_CHOICES,
    DEFAULT_DECODE,
    DEFAULT_MODEL,
    DTYPE_CHOICES,
    MAX_IMAGE_SIZE,
    POOL_METHODS,
    RESIZE_MODES,
    STORE_DTYPES,
    FeatureSpec,
)
from featurecache._validation import AdviceError, ParameterError
from featurecache.app._argparse import (
    HelpFormatter,
    Parser,
    UsageError,
    add_command,
    csv_list,
    verbose_flag,
    workers,
)
from featurecache.engines._options import DEVICES
from featurecache.exceptions import FeatureCacheError

__all__ = ["main", "build_parser"]

#: Exit code of a command whose stdout was closed by its reader (128 + SIGPIPE).
CLOSED_PIPE = 141
#: OS errors about the path the user gave (exit code 2); every other OSError is the environment's.
_BAD_PATH = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="featurecache",
        description="Extract frozen-backbone features once into an HDF5 cache, then choose "
        "backbone, layer and head on the cache without a GPU.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"featurecache {__version__}")
    verbose_flag(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_backbones(sub)
    _add_layers(sub)
    _add_extract(sub)
    _add_ls(sub)
    _add_upgrade(sub)
    from featurecache.app._fit_commands import register

    register(sub)
    _add_predict(sub)
    _add_demo(sub)
    _add_export(sub)
    _add_import(sub)
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
    if isinstance(error, AdviceError):
        return error.render(lambda parameter, value: _spelled(flags, parameter, value))
    return str(error)


def _spelled(flags: dict[str, str], parameter: str, value) -> str:
    """``--allow-partial`` for ``allow_partial=True``, ``--cv 3`` for ``cv=3``."""
    flag = flags.get(parameter)
    if flag is None:
        return f"{parameter}={value!r}"
    return flag if value is True else f"{flag} {value}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        return _fail(str(error), 2)
    except SystemExit as stop:  # --help and --version print and stop
        return stop.code if isinstance(stop.code, int) else 0
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "offline", False):
        os.environ["FEATURECACHE_OFFLINE"] = "1"  # also read by loader workers and Ray actors
    try:
        with _sigterm_interrupts():
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not as a message at exit
            return code
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt as stop:
        how = "terminated" if isinstance(stop, _Terminated) else "interrupted"
        print(
            f"featurecache: {how}; finished shards and combinations are kept, re-run to resume.",
            file=sys.stderr,
        )
        return 143 if isinstance(stop, _Terminated) else 130
    except Exception as error:  # every failure is one line; the traceback only when asked
        if args.verbose:
            traceback.print_exc()
        line, code = _describe(error, args.flags)
        return _fail(line, code)


def _fail(line: str, code: int) -> int:
    print(f"featurecache: error: {_one_line(line)}", file=sys.stderr)
    return code


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def _describe(error: Exception, flags: dict[str, str]) -> tuple[str, int]:
    """The line and exit code of any error: ours, the OS's, memory, or a bug."""
    if isinstance(error, FeatureCacheError):
        return _message(error, flags), error.exit_code
    if _out_of_memory(error):
        return (
            f"out of memory ({_first_line(error)}); lower --batch-size or --image-size, or "
            "run on a machine with more memory.",
            1,
        )
    if isinstance(error, OSError):
        return _os_message(error), 2 if error.errno in _BAD_PATH else 1
    return (
        f"unexpected {type(error).__name__}: {_first_line(error)}. This is a bug in "
        "featurecache: re-run with --debug for the traceback and report it.",
        1,
    )


def _out_of_memory(error: Exception) -> bool:
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or (isinstance(error, RuntimeError) and "allocate memory" in str(error))
    )


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


_OS_ADVICE = {
    errno.EROFS: "write somewhere else",
    errno.EACCES: "choose a location you may write, or fix its permissions",
    errno.EPERM: "choose another location",
    errno.ENOSPC: "free space and re-run the same command",
    errno.EDQUOT: "free space and re-run the same command",
    errno.EFBIG: "raise the file size limit and re-run the same command",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOENT: "check that the path exists",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "name a file, not a folder",
}


def _os_message(error: OSError) -> str:
    """``cannot write 'PATH': REASON; ADVICE`` for an error of the operating system."""
    where = f" {str(error.filename)!r}" if error.filename else ""
    reason = error.strerror or _first_line(error)
    advice = _OS_ADVICE.get(error.errno, "check the path and the file system, then re-run")
    return f"the operating system refused{where}: {reason}; {advice}."


def _closed_pipe() -> int:
    """stdout was closed by its reader: stop quietly, and keep the interpreter's last flush
    from reporting it again."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return CLOSED_PIPE


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


# -- backbones ------------------------------------------------------------------------


def _add_backbones(sub) -> None:
    parser = add_command(
        sub, "backbones", help="list the backbones that can be extracted",
        description="List every registered backbone: its name (for --model), its family and "
        "its default weights; with --source, the names a library offers. `featurecache "
        "layers NAME` lists a backbone's layers.",
    )  # fmt: skip
    parser.add_argument(
        "--source",
        default=None,
        help="torchvision, timm, open_clip or hf (default: the built-in backbones)",
    )
    parser.add_argument(
        "--filter", default=None, help="names containing this, * wildcards (default: all)"
    )
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
    parser = add_command(
        sub, "layers", help="list the capturable layers of a backbone with their shapes"
    )
    parser.add_argument("model", help="a backbone name (see `featurecache backbones`)")
    parser.add_argument(
        "--image-size", type=int, default=None,
        help=f"input size S of the dummy forward pass, 1 to {MAX_IMAGE_SIZE} (default: the "
        "backbone's)",
    )  # fmt: skip
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
        ".parquet files (a file, brace pattern or glob; local or s3://, gs://, https://)",
    )
    parser.add_argument(
        "--cache", required=True,
        help="cache file (.h5) in an existing folder; created, or resumed (required)",
    )  # fmt: skip
    _add_feature_options(parser.add_argument_group(
        "the model and its features (all but --name and --prompts make the cache key)"
    ))  # fmt: skip
    _add_sample_options(parser.add_argument_group("the samples"))
    _add_source_options(parser.add_argument_group(
        "tar shards and parquet files (docs/data-at-scale.md)"
    ))  # fmt: skip
    _add_view_options(parser.add_argument_group("augmented and test-time views (docs/views.md)"))
    _add_run_options(parser, parser.add_argument_group(
        "how it runs (RunOptions and the engine: never the stored numbers)"
    ))  # fmt: skip
    # RayEngine's 'workers' is --ray-workers; RunOptions' is --workers.
    parser.set_defaults(
        func=_run_extract,
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
    _add_resize(group, "the model's own preprocessing, crop for torchvision")
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


def _add_source_options(group) -> None:
    """Where tar shards and parquet files keep each sample's image, id, label and split."""
    group.add_argument(
        "--label-field", default=None, metavar="FIELD[:KEY]",
        help="the field holding each label: a member extension of tar shards (default: cls) "
        "or a parquet column (default: label); FIELD:KEY reads KEY of a JSON field, e.g. "
        "json:label. Integer labels index --classes, text labels name them",
    )  # fmt: skip
    group.add_argument(
        "--classes", default=None, metavar="FILE|A,B,...",
        help="class names in index order: a file of one name per line, or a comma-separated "
        "list (default: 0, 1, ... for integer labels, the sorted names for text labels)",
    )  # fmt: skip
    group.add_argument(
        "--split-from", action="append", default=None, metavar="FIELD[:KEY]|SPLIT=PATTERN",
        help="each sample's split: a field (e.g. json:split), or, repeated, the shards of each "
        "split (e.g. --split-from 'train=train-*.tar' --split-from "
        "'test=test-*.tar') (default: no split)",
    )  # fmt: skip
    group.add_argument(
        "--image-field", default=None, metavar="FIELD",
        help="the member extension (tar) or column (parquet) holding the image (default: the "
        "first of jpg, jpeg, png, webp... in a tar sample; the column jpg in parquet)",
    )  # fmt: skip
    group.add_argument(
        "--id-column", default=None, metavar="COLUMN",
        help="parquet: the column of sample ids (default: key)",
    )  # fmt: skip
    group.add_argument(
        "--shard-index", default=None, metavar="DIR", dest="index_dir",
        help="tar: keep each shard's scan in DIR and reuse it while the shard's size and time "
        "stamp are unchanged, so a run reads only new shards before its first batch "
        "(default: scan every shard)",
    )  # fmt: skip


def _data_argument(args):
    """DATA as typed, or the tar shards or parquet files its source flags describe."""
    import dataclasses

    from featurecache.exceptions import InvalidArgumentError
    from featurecache.sources import ParquetImages, source_for

    given = {
        name: getattr(args, name)
        for name in (
            "label_field",
            "classes",
            "split_from",
            "image_field",
            "id_column",
            "index_dir",
        )  # fmt: skip
        if getattr(args, name, None) is not None
    }
    source = source_for(args.data)
    if source is None:
        if given:
            shown = ", ".join(args.flags.get(name, name) for name in given)
            raise InvalidArgumentError(
                f"{shown} describe .tar shards or .parquet files; DATA {args.data!r} is neither: "
                "leave them out, or name shards (e.g. 'train-{000000..000009}.tar')."
            )
        return args.data
    if "classes" in given:
        given["classes"] = _class_list(given["classes"])
    if "split_from" in given:
        given["split_from"] = _split_from(given["split_from"])
    if "image_field" in given and isinstance(source, ParquetImages):
        given["image_column"] = given.pop("image_field")
    if "index_dir" in given and isinstance(source, ParquetImages):
        raise InvalidArgumentError(
            f"--shard-index keeps scans of tar shards; DATA {args.data!r} is parquet files: "
            "leave it out."
        )
    if "id_column" in given and not isinstance(source, ParquetImages):
        raise InvalidArgumentError(
            f"--id-column names a parquet column; DATA {args.data!r} is tar shards, whose "
            "sample ids are their keys: leave it out."
        )
    return dataclasses.replace(source, **given)


def _class_list(text: str) -> list[str]:
    """Class names from a file of one per line, or from a comma-separated list."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def _split_from(values: list[str]):
    """One field spec, or ``{split: pattern}`` from repeated ``SPLIT=PATTERN``."""
    from featurecache.exceptions import InvalidArgumentError

    patterns = [v for v in values if "=" in v]
    if not patterns and len(values) == 1:
        return values[0]
    if len(patterns) != len(values):
        raise InvalidArgumentError(
            f"--split-from takes one field (e.g. json:split) or SPLIT=PATTERN pairs; got "
            f"{' '.join(map(repr, values))}: give either one field or only SPLIT=PATTERN pairs."
        )
    return dict(value.split("=", 1) for value in patterns)


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
        help="data-loading processes: an int >= 0 or auto (default: auto, one fewer than the "
        "CPUs, at least 1 and at most 32)",
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


def _add_resize(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--resize",
        default=None,
        help=f"{'|'.join(RESIZE_MODES)}. crop: resize the short side, then centre-crop; squash: "
        f"resize to SxS; pad: letterbox to SxS (default: {default})",
    )


def _run_extract(args) -> int:
    from featurecache._extract import extract_spec

    _read_deprecated_workers(args)
    options, engine = _run_options(args), _engine(args)
    # extract_spec validates the request once, before the session, the cache or the data
    result = extract_spec(
        _data_argument(args), args.cache, _feature_spec(args), options=options, engine=engine,
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

    return _views_text(open_cache(cache).views(model))


def _views_text(sets) -> str:
    parts = []
    if sets.k:
        parts.append(f"views: {sets.k} per train and val row ({sets.augment})")
    if sets.tta_k:
        parts.append(f"test-time views: {sets.tta_k} per row ({sets.tta})")
    return "; ".join(parts)


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
    from featurecache._data import SKIPPED_KINDS

    print(f"data: {dataset.summary()}", flush=True)
    if verbose:
        for kind, entries in dataset.skipped.items():
            for entry in entries:
                print(f"  skipped ({SKIPPED_KINDS[kind]}): {entry}")


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


# -- ls -------------------------------------------------------------------------------


def _add_ls(sub) -> None:
    parser = add_command(
        sub, "ls", help="show what a cache holds: models, layers, shapes, status, provenance",
        description="Show what a cache holds: its samples per split and classes, then for each "
        "model its configuration and, per layer, the width, dtype and rows ok, failed and "
        "pending (an extraction still running or stopped), and the failed samples with reasons.",
    )  # fmt: skip
    parser.add_argument("cache", help="the CACHE.h5 index written by `featurecache extract`")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run_ls)


def _run_ls(args) -> int:
    from pipelines import open_cache

    cache = open_cache(args.cache)
    entries = cache.entries  # read once: each listing of a folder cache reads its logs
    if args.json:
        print(json.dumps(_ls_record(cache, entries), default=str, indent=1))
    else:
        print("\n".join(_ls_lines(cache, entries)))
    return 0


def _add_upgrade(sub) -> None:
    parser = add_command(
        sub, "upgrade", help="rewrite a cache of an older format version as version 2",
        description="Rewrite a cache written by an older featurecache (format version 1) as "
        "version 2, in place: its shards compacted into segments, its sample table rewritten, "
        "its index rebuilt. Crash-safe (run it again after an interruption) and idempotent. "
        "Older caches are read without it; writing into them needs it.",
    )  # fmt: skip
    parser.add_argument("cache", help="the CACHE.h5 index of the cache")
    parser.add_argument("--no-locking", action="store_true", help="file systems without locks")
    parser.set_defaults(func=_run_upgrade)


def _run_upgrade(args) -> int:
    from featurecache.cache import FORMAT_VERSION, upgrade

    locking = False if args.no_locking else None
    if upgrade(args.cache, locking=locking):
        print(f"{args.cache}: upgraded to version {FORMAT_VERSION}")
    else:
        print(f"{args.cache}: already version {FORMAT_VERSION}; nothing to do")
    return 0


_ENTRY_FIELDS = (
    "model", "layer", "n_features", "dtype", "n_ok", "n_failed", "n_pending", "n_removed",
    "n_stale", "depth",
)  # fmt: skip


def _ls_record(cache, entries) -> dict:
    """What `ls --json` prints: the samples, every (model, layer), classifiers and views."""
    from featurecache.cache import STATE_REMOVED, STATE_STALE

    return {
        "cache": str(cache.path),
        "n_samples": int((~cache.removed).sum()),
        "n_removed": int((cache.state == STATE_REMOVED).sum()),
        "n_stale": int((cache.state == STATE_STALE).sum()),
        "entries": [
            {
                **{k: getattr(e, k) for k in _ENTRY_FIELDS},
                "counts": cache.counts(e.model, e.layer),
                "provenance": e.provenance,
            }
            for e in entries
        ],
        "classifiers": {
            model: {
                kind: {
                    "layer": c.layer,
                    "n_classes": len(c.class_names),
                    "prompts": list(c.prompts),
                    "source": c.source,
                }
                for kind, c in cache.classifiers(model).items()
            }
            for model in cache.models
        },
        "views": {
            model: sets.to_dict()
            for model in cache.models
            if (sets := cache.views(model)) is not None
        },
    }


def _ls_lines(cache, entries) -> list[str]:
    """What `ls` prints: the samples, then each model with its layers and failures."""
    from featurecache.cache import STATE_REMOVED, STATE_STALE

    active = cache.splits[~cache.removed]
    splits = {name: int((active == name).sum()) for name in dict.fromkeys(active.tolist())}
    split_text = ", ".join(f"{name or '(none)'} {count}" for name, count in splits.items())
    retired = "".join(
        f", {n} {name}"
        for name, code in (("removed", STATE_REMOVED), ("stale", STATE_STALE))
        if (n := int((cache.state == code).sum()))
    )
    lines = [
        f"{cache.path}: {len(active)} samples ({split_text}){retired}, "
        f"{len(cache.class_names)} classes"
    ]
    for model in cache.models:
        lines += ["", *_model_lines(cache, model, [e for e in entries if e.model == model])]
    return lines


def _model_lines(cache, model: str, entries) -> list[str]:
    config = entries[0].provenance if entries else {}
    lines = [
        f"{model}: backbone {config.get('backbone', '?')}, weights {config.get('weights', '?')}, "
        f"pooling {config.get('pooling', '?')}, compute {config.get('compute_dtype', '?')}",
        f"  sha256 {str(config.get('weights_sha256', '?'))[:16]}…  "
        f"preprocessing {config.get('preprocessing', '?')}",
    ]
    if config.get("source"):
        revision = f" revision {config['revision']}" if config.get("revision") else ""
        lines.append(f"  source {config['source']} ({config.get('library') or '?'}){revision}")
    views = cache.views(model)
    if views is not None:
        lines.append(f"  {_views_text(views)}")
    for kind, stored in cache.classifiers(model).items():
        prompts = f", {len(stored.prompts)} prompts" if stored.prompts else ""
        use = "predict --imagenet" if kind == "imagenet" else "fit --heads zeroshot"
        lines.append(
            f"  {kind} classifier: reads {stored.layer}, {len(stored.class_names)} classes"
            f"{prompts} (featurecache {use})"
        )
    header = ("layer", "features", "dtype", "ok", "failed", "pending")
    lines.append("  {:32s} {:>9s} {:8s} {:>7s} {:>7s} {:>8s}".format(*header))
    lines += [
        f"  {e.layer:32s} {e.n_features:9d} {e.dtype:8s} {e.n_ok:7d} {e.n_failed:7d} "
        f"{e.n_pending:8d}"
        for e in entries
    ]
    failures = cache.failures(model)
    if failures:
        lines.append(f"  failed samples ({len(failures)}):")
        lines += [f"    {sample_id}: {reason}" for sample_id, reason in failures]
    return lines


# -- predict --------------------------------------------------------------------------


def _add_predict(sub) -> None:
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
    parser.set_defaults(func=_run_predict)


def _run_predict(args) -> int:
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


# -- demo -----------------------------------------------------------------------------


def _add_demo(sub) -> None:
    parser = add_command(sub, "demo", help="extract, fit and report on a built-in dataset, offline")
    parser.add_argument(
        "--dataset", default="builtin:digits", choices=("builtin:digits", "builtin:fashion-mnist"),
        help="the built-in dataset",
    )  # fmt: skip
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="backbone name (see `featurecache backbones`)"
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
    _add_resize(parser, "crop on digits; squash on fashion-mnist")
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
    parser.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
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


# -- export and import ------------------------------------------------------------------


def _add_export(sub) -> None:
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
    parser.set_defaults(func=_run_export)


def _run_export(args) -> int:
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


def _add_import(sub) -> None:
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
    parser.set_defaults(func=_run_import)


def _run_import(args) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
