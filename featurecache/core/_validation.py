"""Parameter validation with one message template, after scikit-learn's ``_param_validation``.

Every public function checks its arguments with these helpers, so every message reads
``The 'batch_size' parameter of extract must be an int >= 1. Got 0 instead.`` The
error keeps the parameter's name; the command line rewrites it to the flag the user
typed (``--batch-size must be an int >= 1. Got 0 instead.``). ``bool`` is never an int.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from featurecache.exceptions import (
    ClusterUnreachableError,
    InvalidArgumentError,
    UnknownNameError,
    suggest,
)

__all__ = [
    "check_reachable",
    "cluster_unreachable",
    "ParameterError",
    "UnwritablePathError",
    "AdviceError",
    "check_int",
    "check_float",
    "check_choice",
    "check_names",
    "check_optional_int",
    "check_workers",
    "check_bool",
]


class ParameterError(InvalidArgumentError):
    """A parameter with a value outside what it accepts.

    Attributes
    ----------
    parameter, owner : str
        The parameter's name and the function it belongs to.
    expected : str
        What the parameter accepts, as a phrase (``an int >= 1``).
    got : object
        The value that was given.
    hint, cli_hint : str
        How to fix it, or ``""``; ``cli_hint`` is the same advice in flags.
    """

    def __init__(
        self,
        parameter: str,
        owner: str,
        expected: str,
        got: Any,
        hint: str = "",
        *,
        cli_hint: str | None = None,
    ) -> None:
        self.parameter, self.owner, self.expected, self.got = parameter, owner, expected, got
        self.hint, self.cli_hint = hint, hint if cli_hint is None else cli_hint
        super().__init__(self.render(f"The {parameter!r} parameter of {owner}"))

    def render(self, subject: str, *, cli: bool = False) -> str:
        """The message with ``subject`` (a parameter phrase or a flag) in front.

        ``cli`` picks the hint written for the command line (naming flags, not parameters).
        """
        hint = self.cli_hint if cli else self.hint
        return f"{subject} must be {self.expected}. Got {self.got!r} instead.{' ' + hint if hint else ''}"


class UnwritablePathError(ParameterError):
    """An output path in a folder that cannot be written: a read-only disk, no permission, a
    pseudo file system. The path may be right; the environment fails (CLI exit code 1)."""

    exit_code = 1


class AdviceError(InvalidArgumentError):
    """An error whose message names parameters with values: ``allow_partial=True`` in Python,
    ``--allow-partial`` on the command line.

    ``template`` holds ``{field}`` placeholders; each keyword maps a field to a
    ``(parameter, value)`` pair. ``str(error)`` spells them ``parameter=value``;
    :meth:`render` as the caller asks (the CLI: the flag, with the value unless it is True).
    Literal braces in ``template`` are doubled, as for :meth:`str.format`.
    """

    def __init__(self, template: str, **fields: tuple[str, Any]) -> None:
        self.template, self.fields = template, fields
        super().__init__(self.render(lambda parameter, value: f"{parameter}={value!r}"))

    @staticmethod
    def literal(text: str) -> str:
        """``text`` with its braces doubled, to put into a template as it is."""
        return text.replace("{", "{{").replace("}", "}}")

    def render(self, spell) -> str:
        """The message with each field written as ``spell(parameter, value)``."""
        return self.template.format(
            **{field: spell(parameter, value) for field, (parameter, value) in self.fields.items()}
        )


class UnknownChoiceError(ParameterError, UnknownNameError):
    """A name outside a fixed set of choices."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: Any, parameter: str, owner: str, *, low: int | None = None,
              high: int | None = None, hint: str = "") -> int:  # fmt: skip
    """Return ``value`` if it is an int (never a bool) within ``[low, high]``."""
    if _is_int(value) and (low is None or value >= low) and (high is None or value <= high):
        return int(value)
    raise ParameterError(parameter, owner, "an int" + _range(low, high), value, hint)


def check_optional_int(value: Any, parameter: str, owner: str, *, low: int | None = None,
                       hint: str = "") -> int | None:  # fmt: skip
    """Like :func:`check_int`, with ``None`` allowed."""
    if value is None:
        return None
    if _is_int(value) and (low is None or value >= low):
        return int(value)
    raise ParameterError(parameter, owner, "None or an int" + _range(low, None), value, hint)


def check_workers(value: Any, parameter: str, owner: str) -> int | str:
    """``"auto"`` or an int >= 0: a number of processes."""
    if value == "auto" or (_is_int(value) and value >= 0):
        return value
    raise ParameterError(parameter, owner, "'auto' or an int >= 0", value)


def check_bool(value: Any, parameter: str, owner: str) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (never 0 or 1)."""
    if isinstance(value, bool):
        return value
    raise ParameterError(parameter, owner, "True or False", value)


def check_float(value: Any, parameter: str, owner: str, *, low: float | None = None,
                hint: str = "") -> float:  # fmt: skip
    """Return ``value`` as a float if it is a finite real number (never a bool) ``>= low``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (low is None or value >= low):
        return float(value)
    raise ParameterError(parameter, owner, "a number" + _range(low, None), value, hint)


def check_choice(value: Any, parameter: str, owner: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise name them and the closest."""
    options = list(choices)
    if isinstance(value, str) and value in options:
        return value
    expected = "one of " + ", ".join(repr(c) for c in options)
    hint = suggest(value, options).strip() if isinstance(value, str) else ""
    raise UnknownChoiceError(parameter, owner, expected, value, hint)


def check_names(
    value: Any, parameter: str, owner: str, *, allow_none: bool = True
) -> list[str] | None:
    """A list of names: a list or tuple of non-empty str, duplicates removed in order.

    A plain ``str`` is refused (``layers="layer1"`` would otherwise read as ``l, a, y…``).
    """
    if value is None and allow_none:
        return None
    ok = (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) > 0
        and all(isinstance(v, str) and v for v in value)
    )
    if ok:
        return list(dict.fromkeys(value))
    hint = f"Write [{value!r}] for one name." if isinstance(value, str) else ""
    raise ParameterError(parameter, owner, "a non-empty list of names (str)", value, hint)


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in the range [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


#: How to start (or reach) a Ray cluster, for errors about one that does not answer.
RAY_START = (
    "start a cluster with `ray start --head --port 6379` (and `ray start --address HEAD_IP:6379` "
    "on the other nodes), then pass that address or `auto` on one of its nodes"
)
#: How to start a Dask scheduler and its workers.
DASK_START = (
    "start a scheduler with `dask scheduler --port 8786` and its workers with "
    "`dask worker tcp://SCHEDULER_IP:8786`, then pass that address"
)
#: Seconds a scheduler or cluster address has to accept a connection.
CONNECT_SECONDS = 5.0


def check_reachable(address: str, service: str, advice: str) -> None:
    """Raise unless something accepts a TCP connection at ``address`` (``[scheme://]host:port``).

    Clients of Dask and Ray retry a dead address for 30 s to minutes, logging as they go;
    one connection attempt answers at once. An address without a port (Ray's ``auto``) is
    left to the client.

    Raises
    ------
    ClusterUnreachableError
        ``no SERVICE answered at ADDRESS (REASON); ADVICE``.
    """
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        if isinstance(error, TimeoutError):
            reason = f"no answer within {CONNECT_SECONDS:g} s"
        else:
            reason = (error.strerror or str(error) or type(error).__name__).lower()
        raise cluster_unreachable(address, service, reason, advice) from error


def cluster_unreachable(address: str, service: str, reason: str, advice: str):
    """The one-line error for a scheduler or cluster that does not answer."""
    return ClusterUnreachableError(f"no {service} answered at {address} ({reason}); {advice}.")
