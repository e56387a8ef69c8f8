"""Where each sample's encoded image lies, and its content digest.

:class:`SampleBytes` is what a :class:`featurecache.Dataset` built from shards holds
instead of file paths: per row, the shard file and the place of the image inside it, and
the content digest of its bytes (``content_digest``: what the sample table stores as the
sample's identity). :class:`TarMembers` places an image by byte range (tar members);
:class:`ParquetCells` by row group and row (parquet cells).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from featurecache.cache import content_digest
from featurecache.data._files import is_url, open_binary, read_range
from featurecache.exceptions import InvalidArgumentError

__all__ = ["SampleBytes", "TarMembers", "ParquetCells", "content_digest"]


@dataclass(frozen=True, eq=False)
class SampleBytes:
    """Per row: the index of its file in ``files`` (-1: no sample) and its content digest.

    Attributes
    ----------
    files : tuple of str
        Shard paths or URLs.
    file_index : ndarray of shape (n_samples,), int64
    digests : ndarray of shape (n_samples,), object
        ``content_digest`` of each sample's encoded bytes (16 bytes; ``b""`` for no sample).
    """

    files: tuple[str, ...]
    file_index: np.ndarray
    digests: np.ndarray = field(repr=False)
    #: What a sample is, for messages ("the shard member changed during extraction").
    what: ClassVar[str] = "shard member"

    def __len__(self) -> int:
        return len(self.file_index)

    def read(self, row: int) -> bytes:
        """The encoded image of ``row``."""
        raise NotImplementedError

    def read_batch(self, rows) -> list[bytes]:
        """The encoded images of ``rows`` (a batch), in order."""
        return [self.read(row) for row in rows]

    def content_digests(self, rows) -> list[bytes]:
        """The content digests of ``rows`` (``b""`` for no sample)."""
        return [self.digests[int(row)] for row in rows]

    def stats(self) -> np.ndarray | None:
        """``(n_samples, 4)`` int64 stat columns the sample table compares before hashing
        (see :class:`featurecache.data.ObjectFiles`), or None: every digest is known."""
        return None

    def _check(self, row: int) -> int:
        index = int(self.file_index[row])
        if index < 0:
            raise InvalidArgumentError("no such sample: it is no longer in the data")
        return index

    def take(self, index: np.ndarray) -> SampleBytes:
        """These rows in a new order; ``-1`` in ``index`` makes a row without a sample."""
        index = np.asarray(index, dtype=np.int64)
        present = index >= 0
        safe = np.maximum(index, 0)
        changes = {}
        for name in self._positions:
            values = getattr(self, name)
            where = present.reshape(-1, *[1] * (values.ndim - 1))
            changes[name] = np.where(where, values[safe], -1)
        digests = np.where(present, self.digests[safe], b"").astype(object)
        file_index = np.where(present, self.file_index[safe], -1)
        return replace(self, file_index=file_index, digests=digests, **changes)

    #: The per-row arrays that place a sample in its file (reordered by :meth:`take`).
    _positions: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, eq=False)
class TarMembers(SampleBytes):
    """Tar members: each image is ``sizes[row]`` bytes from ``offsets[row]`` of its shard."""

    offsets: np.ndarray = field(default=None, repr=False)
    sizes: np.ndarray = field(default=None, repr=False)
    _positions: ClassVar[tuple[str, ...]] = ("offsets", "sizes")

    def read(self, row: int) -> bytes:
        shard = self.files[self._check(row)]
        return read_range(shard, int(self.offsets[row]), int(self.sizes[row]))

    def read_batch(self, rows) -> list[bytes]:
        """One read per run of rows that lie close together in one shard (a batch of
        consecutive members is one run), sliced into the images."""
        rows = [int(r) for r in rows]
        found: dict[int, bytes] = {}
        for run in _runs(rows, self.file_index, self.offsets, self.sizes):
            first, last = run[0], run[-1]
            start = int(self.offsets[first])
            data = read_range(
                self.files[self._check(first)], start,
                int(self.offsets[last] + self.sizes[last]) - start,
            )  # fmt: skip
            for row in run:
                at = int(self.offsets[row]) - start
                found[row] = data[at : at + int(self.sizes[row])]
        return [found[row] for row in rows]


@dataclass(frozen=True, eq=False)
class ParquetCells(SampleBytes):
    """Parquet cells: row ``positions[row]`` of row group ``groups[row]`` of ``column``.

    Each process keeps the image column of the last row group it read (a batch's rows are
    consecutive rows of one group), so memory is bounded by one row group per process.
    """

    column: str = "jpg"
    groups: np.ndarray = field(default=None, repr=False)
    positions: np.ndarray = field(default=None, repr=False)
    _positions: ClassVar[tuple[str, ...]] = ("groups", "positions")

    def read(self, row: int) -> bytes:
        shard = self.files[self._check(row)]
        cells = _GROUP.get(shard, int(self.groups[row]), self.column)
        data = cells[int(self.positions[row])].as_py()
        if data is None:
            raise InvalidArgumentError("file is empty (0 bytes)")
        return data


#: Members at most this far apart are read in one range (tar headers and small fields such
#: as labels lie between images).
GAP = 64 << 10


def _runs(rows: list[int], files, offsets, sizes) -> list[list[int]]:
    """``rows`` grouped into runs within one shard, by offset, with small gaps between."""
    runs: list[list[int]] = []
    for row in sorted(rows, key=lambda r: (int(files[r]), int(offsets[r]))):
        if int(files[row]) < 0:
            raise InvalidArgumentError("no such sample: it is no longer in the data")
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and files[row] == files[last]
            and 0 <= offsets[row] - (offsets[last] + sizes[last]) <= GAP
        ):
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


class _LastGroup:
    """The image column of the row group this process read last."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.cells = None

    def get(self, name: str, group: int, column: str):
        key = (os.getpid(), name, group, column)
        if key != self.key:
            self.key, self.cells = None, None  # free the last group before reading the next
            self.cells = read_group(name, group, column)
            self.key = key
        return self.cells


_GROUP = _LastGroup()


def read_group(name: str, group: int, column: str):
    """Column ``column`` of row group ``group`` of the parquet file ``name``."""
    import pyarrow.parquet as pq

    from featurecache.data._files import source_error

    try:
        with open_binary(name) if is_url(name) else open(name, "rb") as handle:
            return pq.ParquetFile(handle).read_row_group(group, columns=[column]).column(0)
    except InvalidArgumentError:
        raise
    except Exception as error:
        raise source_error(name, error) from None
