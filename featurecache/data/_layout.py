"""A folder of class sub-folders, read from the names below it.

The rules of a folder dataset: class sub-folders of images, optionally under split folders
(``train/``, ``val/``, ``test/`` and their aliases, :data:`SPLIT_NAMES`), the sample id
being the path relative to the folder. :func:`read_layout` applies them to a listing (the
relative names of the files and folders below the root), which is what object storage
gives: a prefix listed through fsspec becomes the same samples as the same files in a
local folder.
"""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from featurecache.cache._format import SPLITS
from featurecache.exceptions import InvalidArgumentError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SKIPPED_KINDS",
    "SKIPPED_KIND_ONE",
    "SPLIT_NAMES",
    "Layout",
    "is_image_name",
    "read_layout",
]

#: Folder names (compared case-insensitively) and manifest values read as each split.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
#: Kinds of entries a folder scan passes over, as :attr:`Dataset.skipped` names them.
SKIPPED_KINDS = {
    "hidden": "hidden files or folders",
    "not_image": "files that are not images",
    "empty_class": "class folders without images",
    "wrong_level": "images outside a class folder",
    "no_image": "samples without an image",
}
#: The same kinds, said of one entry.
SKIPPED_KIND_ONE = {
    "hidden": "hidden file or folder",
    "not_image": "file that is not an image",
    "empty_class": "class folder without images",
    "wrong_level": "image outside a class folder",
    "no_image": "sample without an image",
}
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def is_image_name(name: str) -> bool:
    """The one rule for which files are images: by extension, hidden names excluded."""
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


@dataclass(frozen=True)
class Layout:
    """The samples a folder holds, sorted by id, and what it passed over by kind.

    ``rows`` are ``(id, class name, split)``; the id is the sample's path relative to the
    folder; the split is ``""`` without split folders.
    """

    rows: tuple[tuple[str, str, str], ...]
    skipped: dict[str, tuple[str, ...]]


def read_layout(where: str, files: Iterable[str], folders: Iterable[str] = ()) -> Layout:
    """The samples of a folder from the names below it.

    Parameters
    ----------
    where : str
        The folder as messages name it (a path or a URL).
    files : iterable of str
        Every file below the folder, relative, ``/``-separated.
    folders : iterable of str
        Folders below it that hold no file (the parents of ``files`` are implied).

    Raises
    ------
    InvalidArgumentError
        Split folders mixed with class folders, two folders of one split, or no image.
    """
    files = sorted(set(files))
    entries = sorted({*files, *(f.strip("/") for f in folders)})
    below: dict[str, set[str]] = {}  # folder ("" the root) -> the names directly in it
    for name in entries:
        parts = name.split("/")
        for depth in range(len(parts)):
            below.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    scan = _Scan(entries, set(files))
    splits = _split_folders(where, below, scan.files)
    for name in sorted(below.get("", ())):
        scan.entry(name, "" if not splits else None)
    for split, folder in splits.items():
        for name in sorted(below.get(folder, ())):
            scan.entry(posixpath.join(folder, name), split)
    rows, skipped = scan.rows, scan.skipped
    if not rows:
        raise InvalidArgumentError(
            f"DATA folder {where!r} holds no images; expected class sub-folders of images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), optionally under train/, val/, test/."
        )
    return Layout(
        tuple(sorted(rows)),
        {kind: tuple(sorted(entries)) for kind, entries in skipped.items()},
    )


def _split_folders(where: str, below: dict[str, set[str]], files: set[str]) -> dict[str, str]:
    """``{split: folder}`` of the top-level folders read as splits, in split order."""
    splits: dict[str, str] = {}
    others = []
    for name in sorted(below.get("", ())):
        if name in files or name.startswith("."):
            continue
        split = SPLIT_NAMES.get(name.lower())
        if split is None:
            others.append(name)
        elif split in splits:
            raise InvalidArgumentError(
                f"DATA folder {where!r} has two folders for the {split} split "
                f"({splits[split]}/ and {name}/); merge them into one."
            )
        else:
            splits[split] = name
    if splits and others:
        shown = ", ".join(f"{p}/" for p in others[:5]) + (" ..." if len(others) > 5 else "")
        raise InvalidArgumentError(
            f"DATA folder {where!r} mixes split folders "
            f"({', '.join(f'{p}/' for p in splits.values())}) with class folders ({shown}) "
            "at the same level; put every class folder inside a split folder, or rename the "
            "folders that are classes."
        )
    return dict(sorted(splits.items(), key=lambda item: SPLITS.index(item[0])))


class _Scan:
    """What a folder holds, entry by entry, and what it passed over by kind."""

    def __init__(self, entries: list[str], files: set[str]) -> None:
        self.entries, self.files = entries, files
        self.rows: list[tuple[str, str, str]] = []  # id, class, split
        self.skipped: dict[str, list[str]] = {kind: [] for kind in SKIPPED_KINDS}

    def entry(self, path: str, split: str | None) -> None:
        """A file or folder directly in the root or a split folder: a class folder when
        ``split`` is not None, else passed over."""
        name = posixpath.basename(path)
        if path in self.files:
            self.skipped[_kind_of_file(name) or "wrong_level"].append(path)
        elif name.startswith("."):
            self.skipped["hidden"].append(path)
        elif split is not None:
            self.class_folder(path, split)

    def class_folder(self, folder: str, split: str) -> None:
        """The images anywhere below a class folder; a hidden entry is listed once, at its
        top."""
        found = 0
        hidden: set[str] = set()
        first = bisect.bisect_left(self.entries, folder + "/")
        last = bisect.bisect_left(self.entries, folder + "0")  # "0" sorts right after "/"
        for path in self.entries[first:last]:
            parts = path[len(folder) + 1 :].split("/")
            top = next((k for k, part in enumerate(parts) if part.startswith(".")), None)
            if top is not None:
                hidden.add(posixpath.join(folder, *parts[: top + 1]))
            elif path in self.files:
                kind = _kind_of_file(parts[-1])
                if kind:
                    self.skipped[kind].append(path)
                else:
                    self.rows.append((path, posixpath.basename(folder), split))
                    found += 1
        self.skipped["hidden"].extend(sorted(hidden))
        if not found:
            self.skipped["empty_class"].append(folder)


def _kind_of_file(name: str) -> str | None:
    """Why a file is not a sample (``hidden``, ``not_image``), or None for an image."""
    if name.startswith("."):
        return "hidden"
    return None if is_image_name(name) else "not_image"
