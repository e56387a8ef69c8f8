"""The memory budget of a fit, and whether a layer fits in it.

``fit(..., memory=...)`` (``featurecache fit --memory 4GB``) bounds what one layer's fit
may hold. The default is :data:`DEFAULT_FRACTION` of the machine's RAM. A layer whose
in-memory fit (today's path, which holds about :data:`IN_MEMORY_COPIES` float32 copies of
the rows it reads) fits the budget is fitted in memory, exactly as without a budget;
a larger one is fitted out of core (:mod:`pipelines.fitting._ooc`), its rows streamed in windows
of :func:`batch_rows` rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from featurecache.core._validation import ParameterError, check_int

__all__ = [
    "DEFAULT_FRACTION",
    "DEFAULT_SELECT_ROWS",
    "IN_MEMORY_COPIES",
    "Budget",
    "parse_memory",
    "default_memory",
]

#: The share of the machine's RAM a fit may use when ``memory`` is not given.
DEFAULT_FRACTION = 0.5
#: Rows a hyper-parameter search runs on, at most, when a layer is fitted out of core.
DEFAULT_SELECT_ROWS = 50_000
#: Float32 copies of a layer's rows today's in-memory fit holds at its peak (measured:
#: 5.7x to 5.8x the float32 size of the layer on 500,000 x 1,280 and 1,000,000 x 384).
IN_MEMORY_COPIES = 6.0
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)
_EXPECTED = "a size such as 4GB, 512MB or a number of bytes (at least 64MB)"
_LEAST = 64 << 20


def parse_memory(value, owner: str = "fit") -> int:
    """``value`` (``"4GB"``, ``"512MiB"``, ``"1.5G"``, or bytes as an int) in bytes.

    Units are binary (``1GB`` = 2**30 bytes). At least 64 MiB.

    Raises
    ------
    ParameterError
        Anything else.
    """
    if isinstance(value, bool):
        raise ParameterError("memory", owner, _EXPECTED, value)
    if isinstance(value, int):
        n_bytes = value
    else:
        match = _PATTERN.match(str(value))
        if match is None:
            raise ParameterError("memory", owner, _EXPECTED, value)
        n_bytes = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if n_bytes < _LEAST:
        raise ParameterError("memory", owner, _EXPECTED, value)
    return n_bytes


def default_memory() -> int:
    """:data:`DEFAULT_FRACTION` of the machine's RAM, in bytes."""
    import psutil

    return int(psutil.virtual_memory().total * DEFAULT_FRACTION)


@dataclass(frozen=True)
class Budget:
    """How much a fit may hold, and the rows its searches run on out of core.

    Attributes
    ----------
    memory : int
        Bytes.
    select_rows : int
        The most rows a hyper-parameter search runs on out of core (a stratified sample).
    """

    memory: int
    select_rows: int = DEFAULT_SELECT_ROWS

    @classmethod
    def build(cls, memory, select_rows, owner: str = "fit") -> Budget:
        """Validate ``memory`` (``None``: the default) and ``select_rows`` (``None``: the
        default)."""
        memory = default_memory() if memory is None else parse_memory(memory, owner)
        select = DEFAULT_SELECT_ROWS if select_rows is None else select_rows
        return cls(memory, check_int(select, "select_rows", owner, low=100))

    def fits_in_memory(self, n_rows: int, n_features: int) -> bool:
        """Whether today's in-memory fit of ``n_rows`` rows stays within the budget."""
        return IN_MEMORY_COPIES * 4 * n_rows * n_features <= self.memory

    def rows_in_memory(self, n_features: int) -> int:
        """The most rows an in-memory search (or fit) may hold within the budget."""
        return int(self.memory // (IN_MEMORY_COPIES * 4 * max(1, n_features)))

    def batch_rows(self, n_features: int, n_views: int = 1) -> int:
        """Rows per streamed window: a power of two whose float32 window is about 1/16 of the
        budget (64 Ki rows at most; 1,024 at least). A fit holds about seven times a window
        (the window read ahead, its float16 buffer, float64 copies and products); each window
        costs one reader call, so windows are as large as the budget allows."""
        rows = int(self.memory // 16 // (4 * max(1, n_features) * max(1, n_views)))
        rows = min(max(rows, 1024), 1 << 16)
        return 1 << (rows.bit_length() - 1)

    def describe(self) -> str:
        return f"{self.memory / (1 << 30):.2f} GiB"
