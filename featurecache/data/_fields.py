"""Labels and splits read from a sample's fields: ``cls``, ``json:label``, ``split``...

A field spec is ``FIELD`` or ``FIELD:KEY``. ``FIELD`` names a tar member's extension
(webdataset) or a parquet column; with ``:KEY`` the field holds JSON (or a struct) and
``KEY`` (dots for nesting, ``meta.label``) is looked up in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from featurecache.core._validation import ParameterError
from featurecache.exceptions import InvalidArgumentError, suggest

__all__ = ["FieldSpec", "parse_field", "label_indices"]


@dataclass(frozen=True)
class FieldSpec:
    """``field`` (a member extension or a column) and an optional ``key`` into its JSON."""

    field: str
    key: str = ""

    def __str__(self) -> str:
        return f"{self.field}:{self.key}" if self.key else self.field

    def value(self, raw) -> str | None:
        """The field's value as text (ints as their digits), or None when absent or empty."""
        if raw is None:
            return None
        if isinstance(raw, (bytes, bytearray, memoryview)):
            raw = bytes(raw).decode("utf-8", errors="replace")
        if self.key:
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except ValueError:
                    return None
            for part in self.key.split("."):
                raw = raw.get(part) if isinstance(raw, Mapping) else None
            if raw is None:
                return None
        text = str(raw).strip()
        return text or None


def parse_field(spec: str, parameter: str, owner: str, lower: bool = False) -> FieldSpec:
    """``FIELD`` or ``FIELD:KEY`` as a :class:`FieldSpec`; ``lower`` lower-cases the field (tar
    member extensions, which webdataset lower-cases)."""
    if not isinstance(spec, str) or not spec.strip(":").strip() or spec.count(":") > 1:
        raise ParameterError(
            parameter, owner, "FIELD or FIELD:KEY, e.g. 'cls' or 'json:label'", spec
        )
    field_name, _, key = spec.partition(":")
    field_name = field_name.strip()
    return FieldSpec(field_name.lower() if lower else field_name, key.strip())


def label_indices(
    values: Sequence[str | None], classes: Sequence[str] | None, where: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as indices into class names; ``-1`` for a sample without a label.

    With ``classes``, an integer value is an index into it and a text value one of its
    names. Without, integer values are their own indices (class names ``"0"``, ``"1"``...)
    and text values index their sorted set, as class folders do.

    Raises
    ------
    InvalidArgumentError
        An index out of ``classes``, or a name not in it.
    """
    given = [v for v in values if v is not None]
    numeric = bool(given) and all(_is_int(v) for v in given)
    if classes is None:
        if numeric:
            top = max(int(v) for v in given)
            classes = tuple(str(i) for i in range(top + 1))
        else:
            classes = tuple(sorted(set(given)))
    classes = tuple(classes)
    where_is = {name: i for i, name in enumerate(classes)}
    labels = np.full(len(values), -1, dtype=np.int64)
    for row, value in enumerate(values):
        if value is None:
            continue
        if numeric and (_is_int(value)):
            index = int(value)
            if not 0 <= index < len(classes):
                raise InvalidArgumentError(
                    f"{where}: label {index} is not an index of the {len(classes)} classes "
                    f"({', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''}); give the "
                    "class list the labels index."
                )
        elif value in where_is:
            index = where_is[value]
        else:
            raise InvalidArgumentError(
                f"{where}: label {value!r} is not one of the classes given "
                f"({', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''})."
                + suggest(value, classes)
            )
        labels[row] = index
    return labels, classes


def _is_int(value: str) -> bool:
    return value.lstrip("-").isdigit()
