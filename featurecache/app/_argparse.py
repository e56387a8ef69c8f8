"""The command line's parser pieces: one-line usage errors, help that shows every default,
and ``-v``/``--debug`` accepted before or after the subcommand."""

from __future__ import annotations

import argparse

from featurecache.core._spec import RESIZE_MODES

__all__ = [
    "Parser", "HelpFormatter", "UsageError", "add_command", "add_resize", "csv_list", "workers",
]  # fmt: skip


class UsageError(Exception):
    """argparse refused the command line (an unknown flag, a missing argument, a bad value)."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, raised instead of printed with usage."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or action.required:
            return text
        if "default" in text:
            return text
        if action.nargs == 0:  # a switch
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def verbose_flag(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``--verbose``/``--debug``; a subcommand's copy leaves the top level's value alone
    unless it is given, so the flag works before or after the subcommand."""
    parser.add_argument(
        "-v", "--verbose", "--debug", action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="log progress details, list skipped entries, and show the traceback of an error",
    )  # fmt: skip


def add_command(subparsers, name: str, *, help: str, description: str | None = None):
    """A subcommand with a description, the shared formatter and the ``-v`` flag."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        formatter_class=HelpFormatter,
    )
    verbose_flag(parser, top=False)
    return parser


def add_resize(parser, default: str) -> None:
    """``--resize``, naming the spec's modes (no ``choices=``: ``extract`` refuses another in
    its own words); ``default`` says what omitting it means for this command."""
    parser.add_argument(
        "--resize",
        default=None,
        help=f"{'|'.join(RESIZE_MODES)}. crop: resize the short side, then centre-crop; squash: "
        f"resize to SxS; pad: letterbox to SxS (default: {default})",
    )


def csv_list(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; ``None`` stays None; ``","`` is ``[]`` (refused later by name)."""
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def workers(text: str) -> int | str:
    """``auto`` or an int (checked by the function that takes it)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an int >= 0, got {text!r}") from None
