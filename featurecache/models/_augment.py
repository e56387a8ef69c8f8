"""Extra views of an image: augmented (``--augment SPEC``) and test-time (``--tta SPEC``).

The grammar, the canonical spelling and the seed derivation are documented in
``docs/views.md``. A view's random state comes from (sample id, view index, seed) alone,
through a :class:`torch.Generator`; the parameters are drawn from it exactly as
torchvision v2's own transforms draw theirs from the default generator, so
``torch.manual_seed(view_seed(...))`` followed by the named v2 transforms gives the same
pixels. Nothing here touches the global random state.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from featurecache._validation import ParameterError
from featurecache.cache import ViewSets
from featurecache.exceptions import suggest

__all__ = [
    "AUGMENT_ITEMS",
    "TTA_ITEMS",
    "MAX_VIEWS",
    "Augment",
    "TestTime",
    "ViewMaker",
    "parse_augment",
    "parse_tta",
    "view_seed",
    "view_generator",
]

#: The items of an augmentation spec, in the order they apply (and are spelled canonically).
AUGMENT_ITEMS = ("rrc", "flip", "jitter")
#: The items of a test-time spec, in canonical order.
TTA_ITEMS = ("crops", "flip")
#: The most views (training or test-time) per row.
MAX_VIEWS = 64
#: RandomResizedCrop's aspect-ratio range (torchvision's default).
RATIO = (3.0 / 4.0, 4.0 / 3.0)

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

    def __call__(self, image: torch.Tensor, generator: torch.Generator, interpolation: str):
        """Apply to a ``uint8 (3, H, W)`` image, drawing every parameter from ``generator``."""
        out = image
        if self.scale is not None:
            height, width = F.get_size(out)
            top, left, h, w = _rrc_params(generator, height, width, self.scale)
            mode = InterpolationMode(interpolation)
            out = F.resized_crop(out, top, left, h, w, [height, width], mode, antialias=True)
        if self.flip is not None and not torch.rand(1, generator=generator) >= self.flip:
            out = F.horizontal_flip(out)
        if self.jitter is not None:
            out = _jitter(out, generator, self.jitter)
        return out


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

    def view(self, image: torch.Tensor, view: int, interpolation: str) -> torch.Tensor:
        """View ``view`` of a ``uint8 (3, H, W)`` image: the plain image, then the five crops
        (four corners, then the centre), each followed by its mirror with ``flip``."""
        base, mirrored = divmod(view, 2) if self.flip else (view, 0)
        out = image
        if base:
            height, width = F.get_size(image)
            size = [max(1, round(self.crops * height)), max(1, round(self.crops * width))]
            crop = F.five_crop(image, size)[base - 1]
            mode = InterpolationMode(interpolation)
            out = F.resize(crop, [height, width], interpolation=mode, antialias=True)
        return F.horizontal_flip(out) if mirrored else out


class ViewMaker:
    """Makes a row's extra views from its decoded image, for a model's :class:`ViewSets`.

    Parameters
    ----------
    sets : ViewSets
    interpolation : str
        The model's resize interpolation, used by ``rrc`` and ``crops``.
    """

    def __init__(self, sets: ViewSets, interpolation: str) -> None:
        self.sets = sets
        self.augment = parse_augment(sets.augment) if sets.k else None
        self.tta = parse_tta(sets.tta) if sets.tta_k else None
        self.interpolation = interpolation

    def count(self, kind: str, split: str) -> int:
        """Views of ``kind`` a row of ``split`` gets, the plain one included (0: none)."""
        if kind == "augment":
            return self.sets.k if split != "test" else 0
        return self.sets.tta_k

    def counts(self, kind: str, splits: np.ndarray) -> np.ndarray:
        """:meth:`count` of every row, given the rows' splits (int64)."""
        if kind == "augment":
            return np.where(splits == "test", 0, self.sets.k).astype(np.int64)
        return np.full(len(splits), self.sets.tta_k, dtype=np.int64)

    def make(self, image: torch.Tensor, sample_id: str, kind: str, view: int) -> torch.Tensor:
        """View ``view`` (1 or more) of ``kind`` of one decoded ``uint8 (C, H, W)`` image."""
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if kind == "tta":
            return self.tta.view(image, view, self.interpolation)
        generator = view_generator(sample_id, view, self.sets.seed)
        return self.augment(image, generator, self.interpolation)


def view_seed(sample_id: str, view: int, seed: int) -> int:
    """The integer seed of one view: SHA-256 of ``"{id}\\0{view}\\0{seed}"``, 63 bits."""
    digest = hashlib.sha256(f"{sample_id}\0{view}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def view_generator(sample_id: str, view: int, seed: int) -> torch.Generator:
    """A CPU generator seeded with :func:`view_seed`: the random state of one view."""
    return torch.Generator().manual_seed(view_seed(sample_id, view, seed))


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


def _rrc_params(g: torch.Generator, height: int, width: int, scale) -> tuple[int, int, int, int]:
    """``RandomResizedCrop.make_params`` of torchvision 0.2x, drawing from ``g``."""
    area = height * width
    log_ratio = torch.log(torch.tensor(RATIO))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect_ratio = torch.exp(
            torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)
        ).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)  # the fall-back: a central crop
    if in_ratio < min(RATIO):
        w, h = width, int(round(width / min(RATIO)))
    elif in_ratio > max(RATIO):
        h, w = height, int(round(height * max(RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _jitter(image: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
    """``ColorJitter(S, S, S)`` (no hue), drawing as its ``make_params`` does."""
    order = torch.randperm(4, generator=g)
    low = max(0.0, 1.0 - strength)
    factors = [float(torch.empty(1).uniform_(low, 1.0 + strength, generator=g).item())
               for _ in range(3)]  # fmt: skip
    kernels = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for index in order.tolist():
        if index < 3:
            image = kernels[index](image, factors[index])
    return image
