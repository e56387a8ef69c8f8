"""The grammar of view specs: ``--augment SPEC`` and ``--tta SPEC`` (torch-free).

Parsing and the canonical spelling that enters the cache key live here, with the request
(:class:`featurecache.core._spec.FeatureSpec`); :mod:`featurecache.models._augment` applies a
parsed spec to pixels. The grammar is documented in ``docs/views.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from featurecache.core._validation import ParameterError
from featurecache.exceptions import suggest

__all__ = [
    "AUGMENT_ITEMS",
    "TTA_ITEMS",
    "MAX_VIEWS",
    "Augment",
    "TestTime",
    "parse_augment",
    "parse_tta",
]

#: The items of an augmentation spec, in the order they apply (and are spelled canonically).
AUGMENT_ITEMS = ("rrc", "flip", "jitter")
#: The items of a test-time spec, in canonical order.
TTA_ITEMS = ("crops", "flip")
#: The most views (training or test-time) per row.
MAX_VIEWS = 64
_AUGMENT_GRAMMAR = (
    "a comma-separated list of rrc[:LO-HI], flip[:P], jitter:S "
    "(e.g. 'flip,rrc:0.35-1,jitter:0.2'; see docs/views.md)"
)
_TTA_GRAMMAR = (
    "a comma-separated list of crops:F, flip (e.g. 'crops:0.875,flip'; see docs/views.md)"
)


@dataclass(frozen=True)
class Augment:
    """A parsed augmentation spec: ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``ColorJitter``.

    ``None`` for an item the spec does not name.
    """

    scale: tuple[float, float] | None = None
    flip: float | None = None
    jitter: float | None = None

    @property
    def canonical(self) -> str:
        """The spelling the cache key records: items in order, numbers as ``format(x, 'g')``."""
        items = []
        if self.scale is not None:
            items.append(f"rrc:{_num(self.scale[0])}-{_num(self.scale[1])}")
        if self.flip is not None:
            items.append("flip" if self.flip == 0.5 else f"flip:{_num(self.flip)}")
        if self.jitter is not None:
            items.append(f"jitter:{_num(self.jitter)}")
        return ",".join(items)


@dataclass(frozen=True)
class TestTime:
    """A parsed test-time spec: five crops of ``crops`` of each side, and/or mirrors."""

    crops: float | None = None
    flip: bool = False

    @property
    def canonical(self) -> str:
        items = [] if self.crops is None else [f"crops:{_num(self.crops)}"]
        return ",".join(items + (["flip"] if self.flip else []))

    @property
    def n_views(self) -> int:
        """Views per row, the plain one included."""
        return (6 if self.crops is not None else 1) * (2 if self.flip else 1)


def parse_augment(spec: str, owner: str = "extract") -> Augment:
    """Parse an augmentation spec (``flip,rrc:0.35-1,jitter:0.2``) in any item order.

    Raises
    ------
    ParameterError
        About ``augment``: an unknown item, a bad number, an item named twice, nothing.
    """
    items = _items(spec, "augment", owner, AUGMENT_ITEMS, _AUGMENT_GRAMMAR)
    scale = flip = jitter = None
    if "rrc" in items:
        scale = _range(items["rrc"] or "0.08-1", spec, owner)
    if "flip" in items:
        flip = 0.5 if items["flip"] is None else _number(items["flip"], "flip", spec, owner, 0, 1)
    if "jitter" in items:
        if items["jitter"] is None:
            raise _augment_error(spec, owner, "jitter needs its strength S, e.g. jitter:0.2")
        jitter = _number(items["jitter"], "jitter", spec, owner, 0, 1)
        if jitter == 0:
            raise _augment_error(spec, owner, "jitter:0 changes nothing; leave it out")
    return Augment(scale, flip, jitter)


def parse_tta(spec: str, owner: str = "extract") -> TestTime:
    """Parse a test-time spec (``crops:0.875,flip``) in any item order.

    Raises
    ------
    ParameterError
        About ``tta``.
    """
    items = _items(spec, "tta", owner, TTA_ITEMS, _TTA_GRAMMAR)
    crops = None
    if "crops" in items:
        if items["crops"] is None:
            raise ParameterError(
                "tta", owner, _TTA_GRAMMAR, spec, "crops needs its size F, e.g. crops:0.875."
            )
        crops = _number(items["crops"], "crops", spec, owner, 0, 1, "tta", _TTA_GRAMMAR)
        if crops in (0, 1):
            raise ParameterError(
                "tta", owner, _TTA_GRAMMAR, spec, "crops:F needs 0 < F < 1, e.g. crops:0.875."
            )
    if items.get("flip", None) is not None:
        raise ParameterError("tta", owner, _TTA_GRAMMAR, spec, "flip takes no value here.")
    return TestTime(crops, "flip" in items)


def _items(spec, parameter, owner, names, grammar) -> Mapping[str, str | None]:
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError(parameter, owner, grammar, spec)
    found: dict[str, str | None] = {}
    for raw in spec.split(","):
        name, _, value = raw.strip().partition(":")
        if name not in names:
            hint = f"Unknown item {name!r}; the items are {', '.join(names)}.{suggest(name, names)}"
            raise ParameterError(parameter, owner, grammar, spec, hint)
        if name in found:
            raise ParameterError(parameter, owner, grammar, spec, f"{name} is named twice.")
        found[name] = value if value else None
    return found


def _range(text: str, spec: str, owner: str) -> tuple[float, float]:
    low, sep, high = text.partition("-")
    if not sep:
        raise _augment_error(
            spec, owner, f"rrc takes a scale range LO-HI, e.g. rrc:0.35-1; got {text!r}"
        )
    lo = _number(low, "rrc", spec, owner, 0, 1)
    hi = _number(high, "rrc", spec, owner, 0, 1)
    if not 0 < lo <= hi:
        raise _augment_error(spec, owner, f"rrc:LO-HI needs 0 < LO <= HI <= 1; got {text!r}")
    return lo, hi


def _number(text, item, spec, owner, low, high, parameter="augment", grammar=_AUGMENT_GRAMMAR):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise ParameterError(
            parameter, owner, grammar, spec,
            f"{item} takes a number from {_num(low)} to {_num(high)}; got {text!r}.",
        )  # fmt: skip
    return value


def _augment_error(spec: str, owner: str, hint: str) -> ParameterError:
    return ParameterError("augment", owner, _AUGMENT_GRAMMAR, spec, hint.rstrip(".") + ".")


def _num(value: float) -> str:
    return format(float(value), "g")
