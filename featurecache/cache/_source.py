"""Where a sample table's samples came from: the source string, parsed back, and read again.

A sample table records its source as one string (``/samples`` attribute ``root``, read as
``Cache.source``): ``KIND:LOCATION``, then optional notes ``" (NOTE)"`` after a built-in's
name. :class:`DataSource` is the one place that writes such a string, parses it back, and
reads a sample's image again by its id (the report's thumbnails), with PIL and NumPy only.

=============  ============================================  =================================
kind           location                                      a sample's image, by its id
=============  ============================================  =================================
``folder``     the folder (absolute path or URL)             the file ``LOCATION/ID``
``csv``        the manifest (absolute path or URL)           the file ``ID`` beside it
``builtin``    the name (notes: where its files were, ...)   row ``int(ID)`` of its arrays
``webdataset`` the shards (a path, brace pattern or glob)    not read again
``parquet``    the files (a path, brace pattern or glob)     not read again
``import``     the folder of the imported embeddings         not read again (no images)
``predict``    the images a prediction was asked for         not read again
``arrays``     none: images held in memory                   not read again
=============  ============================================  =================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache.cache._builtins import BUILTINS
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest

__all__ = ["ARRAYS", "DataSource", "SOURCE_KINDS", "SourceKind", "read_sample_image"]


@dataclass(frozen=True)
class SourceKind:
    """A kind of source: whether it has a location and notes, and how an image is read again.

    ``read(source, sample_id)`` returns the sample's pixels (:meth:`DataSource.read_image`);
    ``None`` when the kind keeps no image file to read again.
    """

    name: str
    located: bool = True
    #: Its location never holds a space, so notes after it parse back.
    notes: bool = False
    read: Callable[[DataSource, str], np.ndarray] | None = None


@dataclass(frozen=True)
class DataSource:
    """The source of a sample table: ``KIND:LOCATION`` and notes (see the module docstring).

    ``str(source)`` is the canonical string a sample table stores, and
    ``DataSource.parse(str(source)) == source``.

    Parameters
    ----------
    kind : str
        One of :data:`SOURCE_KINDS`.
    location : str
        A path, pattern or URL; a built-in's name; ``""`` for ``arrays``.
    notes : tuple of str
        Said after a built-in's name, each in parentheses (where its files were found,
        ``first 100 per split``...).

    Raises
    ------
    UnknownNameError
        ``kind`` is not a source kind.
    InvalidArgumentError
        A location missing (or given to ``arrays``), or notes on a kind that takes none.
    """

    kind: str
    location: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        spec = _kind(self.kind, self.kind)
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        what = f"a data source of kind {self.kind!r}"
        if spec.located and not self.location:
            raise InvalidArgumentError(f"{what} needs a location (KIND:LOCATION); got none.")
        if self.location and not spec.located:
            raise InvalidArgumentError(f"{what} has no location; got {self.location!r}.")
        if self.notes and not spec.notes:
            raise InvalidArgumentError(
                f"{what} takes no notes (only a built-in does); got {self.notes!r}."
            )
        if spec.notes and (" " in self.location or "(" in self.location):
            raise InvalidArgumentError(
                f"{what} has a name without spaces or parentheses; got {self.location!r}."
            )
        for note in self.notes:
            if _split_notes(f" ({note})") != (note,):
                raise InvalidArgumentError(
                    f"a note of a source must have balanced parentheses; got {note!r}."
                )

    def __str__(self) -> str:
        head = f"{self.kind}:{self.location}" if self.location else self.kind
        return head + "".join(f" ({note})" for note in self.notes)

    @classmethod
    def parse(cls, text: str) -> DataSource:
        """The source a sample table's source string names.

        Raises
        ------
        UnknownNameError
            ``text`` does not start with a known ``KIND:`` (or is not ``arrays``).
        """
        kind, colon, rest = str(text).partition(":")
        if not colon and kind != ARRAYS:
            raise _unknown(text, kind)
        spec = _kind(kind, text)
        if not spec.notes:
            return cls(kind, rest)
        location, space, tail = rest.partition(" ")
        notes = _split_notes(space + tail)
        if notes is None:
            raise InvalidArgumentError(
                f"data source {text!r}: after the name come notes in parentheses, "
                f"as in 'builtin:NAME (NOTE)'; got {space + tail!r}."
            )
        return cls(kind, location, notes)

    def with_note(self, note: str) -> DataSource:
        """This source with one more note (a subset of a built-in: ``first 100 per split``)."""
        return DataSource(self.kind, self.location, (*self.notes, note))

    @property
    def readable(self) -> bool:
        """Whether a sample's image can be read again from the source."""
        return SOURCE_KINDS[self.kind].read is not None

    @property
    def default_split(self) -> str | None:
        """The split the source's samples get when none is asked (``random:0.2`` for
        ``builtin:digits``), or None."""
        builtin = BUILTINS.get(self.location) if self.kind == "builtin" else None
        return None if builtin is None else builtin.default_split

    def read_image(self, sample_id: str) -> np.ndarray:
        """The pixels of sample ``sample_id``, read again from the source.

        Returns
        -------
        ndarray of shape (H, W, 3) or (H, W), uint8
            A file decoded by PIL and converted to RGB; a built-in's row as stored.

        Raises
        ------
        InvalidArgumentError
            The source keeps no image file to read again (:attr:`readable`).
        OSError, ValueError, IndexError
            The file is gone or unreadable, or no sample has this id.
        """
        read = SOURCE_KINDS[self.kind].read
        if read is None:
            raise InvalidArgumentError(
                f"the images of a {self.kind} source cannot be read again by their id; "
                f"only those of {', '.join(k for k, s in SOURCE_KINDS.items() if s.read)} can."
            )
        return read(self, str(sample_id))


def read_sample_image(source: str, sample_id: str) -> np.ndarray | None:
    """The image of a sample of a cache (its ``Cache.source`` and id), or None when it is not
    readable from here.

    A source that keeps no image file (or one not recognised) still has an id that is itself
    the path of an image file read as that file.

    Returns
    -------
    ndarray of shape (H, W, 3) or (H, W), uint8, or None
    """
    try:
        parsed = DataSource.parse(source)
    except InvalidArgumentError:
        parsed = None
    try:
        if parsed is not None and parsed.readable:
            return parsed.read_image(sample_id)
        if Path(sample_id).is_file():
            return _decode(Path(sample_id))
    except (OSError, ValueError, IndexError):
        return None
    return None


def _kind(name: str, text: str) -> SourceKind:
    if name not in SOURCE_KINDS:
        raise _unknown(text, name)
    return SOURCE_KINDS[name]


def _unknown(text: str, name: str) -> UnknownNameError:
    kinds = sorted(k for k, spec in SOURCE_KINDS.items() if spec.located)
    return UnknownNameError(
        f"unknown data source {text!r}; expected KIND:LOCATION with KIND one of "
        f"{', '.join(kinds)}, or {ARRAYS!r}.{suggest(name, SOURCE_KINDS)}"
    )


def _split_notes(text: str) -> tuple[str, ...] | None:
    """``" (a) (b (c))"`` as ``("a", "b (c)")``; None when ``text`` is not a series of notes."""
    notes = []
    while text:
        end = _closing(text, 1) if text.startswith(" (") else None
        if end is None:
            return None
        notes.append(text[2:end])
        text = text[end + 1 :]
    return tuple(notes)


def _closing(text: str, start: int) -> int | None:
    """The index of the parenthesis closing the one at ``start``, or None."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    return None


# -- reading an image again -----------------------------------------------------------


def _decode(file) -> np.ndarray:
    """An image file (a path or a binary file object) as RGB pixels, as PIL decodes it."""
    from PIL import Image

    with Image.open(file) as opened:
        return np.asarray(opened.convert("RGB"))


def _read_file(location: str, relative: str) -> np.ndarray:
    """The image ``relative`` below ``location``, a folder's path or URL."""
    if not _is_url(location):
        return _decode(Path(location) / relative)
    import fsspec

    with fsspec.open(f"{location.rstrip('/')}/{relative}", "rb") as stream:
        return _decode(stream)


def _is_url(location: str) -> bool:
    return "://" in location


def _read_below_folder(source: DataSource, sample_id: str) -> np.ndarray:
    return _read_file(source.location, sample_id)


def _read_beside_manifest(source: DataSource, sample_id: str) -> np.ndarray:
    location = source.location
    folder = location.rsplit("/", 1)[0] if _is_url(location) else str(Path(location).parent)
    return _read_file(folder, sample_id)


def _read_builtin(source: DataSource, sample_id: str) -> np.ndarray:
    images = _builtin_images(source.location, source.notes[0] if source.notes else "")
    row = int(sample_id)
    if row < 0:
        raise IndexError(f"no sample {sample_id!r} in {source}")
    return images[row]


@functools.lru_cache(maxsize=2)
def _builtin_images(name: str, folder: str) -> np.ndarray:
    """A built-in's images, read once per process (the report reads a few rows of them)."""
    if name not in BUILTINS:
        raise ValueError(f"no built-in dataset {name!r}")
    return BUILTINS[name].read(Path(folder) if folder else None).images


#: The value of a sample table's source for images held in memory.
ARRAYS = "arrays"
#: The source kinds, by name.
SOURCE_KINDS = {
    kind.name: kind
    for kind in (
        SourceKind("folder", read=_read_below_folder),
        SourceKind("csv", read=_read_beside_manifest),
        SourceKind("builtin", notes=True, read=_read_builtin),
        SourceKind("webdataset"),
        SourceKind("parquet"),
        SourceKind("import"),
        SourceKind("predict"),
        SourceKind(ARRAYS, located=False),
    )
}
