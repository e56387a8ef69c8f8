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

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from featurecache.cache import ViewSets
from featurecache.core._views import Augment, TestTime, parse_augment, parse_tta

# The grammar of views (parse_augment, parse_tta, Augment, TestTime) lives in the torch-free
# core, featurecache.core._views; this module makes their pixels.
__all__ = ["ViewMaker", "view_seed", "view_generator", "augment_image", "tta_view"]

#: RandomResizedCrop's aspect-ratio range (torchvision's default).
RATIO = (3.0 / 4.0, 4.0 / 3.0)


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
            return tta_view(self.tta, image, view, self.interpolation)
        generator = view_generator(sample_id, view, self.sets.seed)
        return augment_image(self.augment, image, generator, self.interpolation)


def view_seed(sample_id: str, view: int, seed: int) -> int:
    """The integer seed of one view: SHA-256 of ``"{id}\\0{view}\\0{seed}"``, 63 bits."""
    digest = hashlib.sha256(f"{sample_id}\0{view}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def view_generator(sample_id: str, view: int, seed: int) -> torch.Generator:
    """A CPU generator seeded with :func:`view_seed`: the random state of one view."""
    return torch.Generator().manual_seed(view_seed(sample_id, view, seed))


def augment_image(
    augment: Augment, image: torch.Tensor, generator: torch.Generator, interpolation: str
) -> torch.Tensor:
    """``augment`` applied to a ``uint8 (3, H, W)`` image, every parameter drawn from
    ``generator``."""
    out = image
    if augment.scale is not None:
        height, width = F.get_size(out)
        top, left, h, w = _rrc_params(generator, height, width, augment.scale)
        mode = InterpolationMode(interpolation)
        out = F.resized_crop(out, top, left, h, w, [height, width], mode, antialias=True)
    if augment.flip is not None and not torch.rand(1, generator=generator) >= augment.flip:
        out = F.horizontal_flip(out)
    if augment.jitter is not None:
        out = _jitter(out, generator, augment.jitter)
    return out


def tta_view(
    test_time: TestTime, image: torch.Tensor, view: int, interpolation: str
) -> torch.Tensor:
    """View ``view`` of ``test_time`` of a ``uint8 (3, H, W)`` image: the plain image, then
    the five crops (four corners, then the centre), each followed by its mirror with ``flip``."""
    base, mirrored = divmod(view, 2) if test_time.flip else (view, 0)
    out = image
    if base:
        height, width = F.get_size(image)
        size = [max(1, round(test_time.crops * height)), max(1, round(test_time.crops * width))]
        crop = F.five_crop(image, size)[base - 1]
        mode = InterpolationMode(interpolation)
        out = F.resize(crop, [height, width], interpolation=mode, antialias=True)
    return F.horizontal_flip(out) if mirrored else out


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
