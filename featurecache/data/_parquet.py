"""Parquet files of encoded images as DATA: img2dataset's ``parquet`` output.

img2dataset writes one row per sample: ``key``, the image bytes (``jpg``), ``status``
and the source's columns; a label column is the user's. Rows whose image is null (a
failed download) are passed over. Scanning reads each file one row group at a time;
extraction reads an image's row group once per loader process and batch run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from featurecache.core._validation import AdviceError
from featurecache.data._files import is_url, open_binary, source_error
from featurecache.data._members import ParquetCells, content_digest
from featurecache.data._source import Scanned, Source, register
from featurecache.exceptions import InvalidArgumentError, MissingExtraError

__all__ = ["ParquetImages"]


@register
@dataclass(frozen=True)
class ParquetImages(Source):
    """Parquet files (``.parquet``): see :class:`featurecache.data.Source`.

    ``id_column`` (default ``key``) holds the sample ids, ``image_column`` (default
    ``jpg``) the encoded images; ``label_field`` (default ``label``) names a column,
    ``COLUMN:KEY`` a key into a JSON or struct column.
    """

    id_column: str = "key"
    image_column: str = "jpg"

    kind: ClassVar[str] = "parquet"
    extension: ClassVar[str] = ".parquet"
    default_label: ClassVar[str] = "label"

    def scan(self) -> Scanned:
        files = self.files()
        split_of = self.split_by_file(files)
        ids, raw_labels, splits, skipped = [], [], [], []
        file_index, groups, positions, digests = [], [], [], []
        for index, name in enumerate(files):
            for group, position, key, image, label, split in self._rows(name):
                if image is None:
                    skipped.append(f"{_shown(name)}:{key}")
                    continue
                ids.append(key)
                raw_labels.append(label)
                splits.append(split_of.get(name) or split or "")
                file_index.append(index)
                groups.append(group)
                positions.append(position)
                digests.append(content_digest(image))
        if len(set(ids)) != len(ids):
            twice = next(k for k, n in Counter(ids).items() if n > 1)
            raise InvalidArgumentError(
                f"DATA {self.data!r}: the key {twice!r} is on more than one row; each value of "
                f"column {self.id_column!r} must be unique."
            )
        labels, class_names = self.labels(raw_labels)
        members = ParquetCells(
            files=tuple(files),
            file_index=np.array(file_index, dtype=np.int64),
            digests=np.array(digests + [b""], dtype=object)[:-1],
            column=self.image_column,
            groups=np.array(groups, dtype=np.int64),
            positions=np.array(positions, dtype=np.int64),
        )
        return self.scanned(ids, labels, splits, class_names, members, skipped)

    def _rows(self, name: str):
        """``(group, position, key, image bytes, label, split)`` of each row of a file."""
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtraError(
                "DATA of .parquet files needs pyarrow; install it with "
                "pip install 'featurecache[parquet]'."
            ) from None
        label, split = self.label_spec, self.split_spec
        try:
            with open_binary(name) as handle:
                parquet = pq.ParquetFile(handle)
                columns = self._columns(name, parquet.schema_arrow.names)
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group, columns=columns).to_pydict()
                    n = len(table[self.id_column])
                    for i in range(n):
                        yield (
                            group, i, str(table[self.id_column][i]), table[self.image_column][i],
                            label.value(table[label.field][i]),
                            split.value(table[split.field][i]) if split is not None else None,
                        )  # fmt: skip
        except (InvalidArgumentError, MissingExtraError):
            raise
        except Exception as error:
            raise source_error(name, error) from None

    def _columns(self, name: str, found: list[str]) -> list[str]:
        """The columns to read; a missing one is refused, naming those the file has."""
        split = self.split_spec
        wanted = {
            self.id_column: "id_column",
            self.image_column: "image_column",
            self.label_spec.field: "label_field",
        }
        if split is not None:
            wanted.setdefault(split.field, "split_from")
        missing = [c for c in wanted if c not in found]
        if missing:
            parameter = wanted[missing[0]]
            raise AdviceError(
                AdviceError.literal(
                    f"DATA {self.data!r}: {_shown(name)!r} has no column {missing[0]!r} "
                    f"(it has {', '.join(found)}); "
                )
                + "name the column to read with {flag}.",
                flag=(parameter, "COLUMN"),
            )
        wanted = list(wanted)
        return wanted


def _shown(name: str) -> str:
    return name if is_url(name) else name.rsplit("/", 1)[-1]
