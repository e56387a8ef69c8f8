"""The ``featurecache`` command line: ``main()`` and the parser, assembled from one module per
command (``_command_extract``, ``_command_ls``... and ``_fit_commands`` for fit and report).

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
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from featurecache import __version__
from featurecache.app import (
    _command_backbones,
    _command_demo,
    _command_export,
    _command_extract,
    _command_import,
    _command_layers,
    _command_ls,
    _command_predict,
    _command_upgrade,
    _fit_commands,
)
from featurecache.app._argparse import HelpFormatter, Parser, UsageError, verbose_flag
from featurecache.app._errors import (
    CLOSED_PIPE,
    Terminated,
    closed_pipe,
    describe,
    fail,
    sigterm_interrupts,
)

__all__ = ["main", "build_parser", "CLOSED_PIPE"]

#: The commands in the order ``--help`` lists them; fit and report come from ``_fit_commands``.
_BEFORE_FIT = (_command_backbones, _command_layers, _command_extract, _command_ls, _command_upgrade)
_AFTER_FIT = (_command_predict, _command_demo, _command_export, _command_import)
#: Commands that may download weights.
_OFFLINE = ("layers", "extract", "predict", "demo")


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
    for command in _BEFORE_FIT:
        command.add_parser(sub)
    _fit_commands.register(sub)
    for command in _AFTER_FIT:
        command.add_parser(sub)
    for name in _OFFLINE:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        return fail(str(error), 2)
    except SystemExit as stop:  # --help and --version print and stop
        return stop.code if isinstance(stop.code, int) else 0
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "offline", False):
        os.environ["FEATURECACHE_OFFLINE"] = "1"  # also read by loader workers and Ray actors
    try:
        with sigterm_interrupts():
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not as a message at exit
            return code
    except BrokenPipeError:
        return closed_pipe()
    except KeyboardInterrupt as stop:
        how = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(
            f"featurecache: {how}; finished shards and combinations are kept, re-run to resume.",
            file=sys.stderr,
        )
        return 143 if isinstance(stop, Terminated) else 130
    except Exception as error:  # every failure is one line; the traceback only when asked
        if args.verbose:
            traceback.print_exc()
        line, code = describe(error, args.flags)
        return fail(line, code)


if __name__ == "__main__":
    raise SystemExit(main())
