"""What every shard source shares: its arguments, the table a scan returns, the registry."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from featurecache.cache import DataSource
from featurecache.core._validation import ParameterError
from featurecache.data._fields import FieldSpec, label_indices, parse_field
from featurecache.data._files import is_url, list_files
from featurecache.data._members import SampleBytes

__all__ = ["Scanned", "Source", "register", "source_for", "SOURCES"]

#: Source kinds by the extension of their files (``.tar``, ``.parquet``).
SOURCES: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Make a source kind the one for DATA ending in its extension."""
    SOURCES[cls.extension] = cls
    return cls


def source_for(text: str) -> Source | None:
    """The source DATA names by its extension (``*.tar``, ``{0..9}.parquet``...), or None."""
    ending = text.lower().rstrip("/")
    for extension, cls in SOURCES.items():
        if ending.endswith(extension):
            return cls(text)
    return None


@dataclass(frozen=True)
class Scanned:
    """What a scan found: the sample table's columns and where each image lies.

    ``splits`` are the raw values (``""`` for none); ``skipped`` lists entries that hold no
    image, by kind (``no_image``).
    """

    source: str
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...]
    members: SampleBytes
    skipped: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """Sharded DATA: files (local or fsspec URLs) named by a path, brace pattern or glob.

    Parameters
    ----------
    data : str
        A file, a brace pattern (``shards/{000000..000099}.tar``) or a glob, local or a URL.
    label_field : str, optional
        ``FIELD`` or ``FIELD:KEY`` (:mod:`featurecache.data._fields`); the kind's default
        when omitted.
    classes : sequence of str, optional
        The class names, in index order: integer labels index it, text labels must be in it.
        Without it, integer labels name classes ``"0"``, ``"1"``... and text labels their
        sorted set.
    split_from : str or mapping, optional
        A field spec holding each sample's split (``json:split``), or ``{split: pattern}``:
        the shards each pattern names are that split. Samples without one have none.
    """

    data: str
    label_field: str | None = None
    classes: Sequence[str] | None = None
    split_from: str | Mapping[str, str] | None = None

    kind: ClassVar[str] = ""
    extension: ClassVar[str] = ""
    default_label: ClassVar[str] = ""
    #: Field names compare lower-cased (tar member extensions) or as they are (columns).
    lower_fields: ClassVar[bool] = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.data, (str, os.PathLike)):
            raise ParameterError("data", owner, "a path, brace pattern, glob or URL", self.data)
        object.__setattr__(self, "data", os.fspath(self.data))
        if self.classes is not None:
            if isinstance(self.classes, str) or len(set(self.classes)) != len(self.classes):
                raise ParameterError(
                    "classes", owner, "a sequence of distinct class names", self.classes
                )
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        self.label_spec  # noqa: B018 (validated on construction)
        self.split_spec  # noqa: B018

    @property
    def name(self) -> str:
        """``kind:data``: the source the sample table records (a :class:`DataSource`)."""
        return str(DataSource(self.kind, self.data))

    @property
    def label_spec(self) -> FieldSpec:
        spec = self.label_field or self.default_label
        return parse_field(spec, "label_field", type(self).__name__, self.lower_fields)

    @property
    def split_spec(self) -> FieldSpec | None:
        """The field holding each sample's split, or None (per-shard patterns or no split)."""
        if self.split_from is None or isinstance(self.split_from, Mapping):
            return None
        return parse_field(self.split_from, "split_from", type(self).__name__, self.lower_fields)

    def files(self) -> list[str]:
        """The data's files in order (local ones as absolute paths)."""
        return [_normal(f) for f in list_files(self.data, self.extension.lstrip("."))]

    def split_by_file(self, files: Sequence[str]) -> dict[str, str]:
        """``{file: split}`` from per-split patterns (empty without them)."""
        if not isinstance(self.split_from, Mapping):
            return {}
        found: dict[str, str] = {}
        wanted = set(files)
        for split, pattern in self.split_from.items():
            for name in list_files(pattern, self.extension.lstrip(".")):
                name = _normal(name)
                if name in wanted and found.setdefault(name, split) != split:
                    raise ParameterError(
                        "split_from", type(self).__name__, "patterns naming distinct shards",
                        dict(self.split_from), f"{name!r} is in both {found[name]} and {split}.",
                    )  # fmt: skip
        return found

    def labels(self, values: Sequence[str | None]) -> tuple[np.ndarray, tuple[str, ...]]:
        return label_indices(values, self.classes, f"{self.name} ({self.label_spec})")

    def scan(self) -> Scanned:
        """Read the data's sample table (ids, labels, splits) and place every image."""
        raise NotImplementedError

    def scanned(
        self,
        ids: list[str],
        labels: np.ndarray,
        splits: list[str],
        class_names: tuple[str, ...],
        members: SampleBytes,
        no_image: list[str],
    ) -> Scanned:
        """What this source's scan found, ``no_image`` the keys that hold no image."""
        return Scanned(
            self.name,
            ids=np.array(ids, dtype=object),
            labels=labels,
            splits=np.array(splits, dtype=object),
            class_names=class_names,
            members=members,
            skipped={"no_image": tuple(no_image)},
        )


def _normal(name: str) -> str:
    return name if is_url(name) else os.path.abspath(os.path.expanduser(name))
