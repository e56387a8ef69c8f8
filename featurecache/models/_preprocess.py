"""Image loading and the preprocessing that turns an image into a model input.

The preprocessing is part of the cache key: :meth:`Preprocess.to_json` is stored with every
feature matrix, so two runs that resize or normalise differently never share features.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from featurecache.cache._identity import check_content
from featurecache.core._spec import RESIZE_MODES, check_image_size
from featurecache.exceptions import InvalidArgumentError, suggest
from featurecache.models._jpeg import decode_plain_jpeg, jpeg_decoder_available

__all__ = [
    "BACKENDS",
    "CROP_OFFSETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocess",
    "RESIZE_MODES",
    "load_image",
    "load_image_bytes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = tuple(mode.value for mode in InterpolationMode)

#: ``tensor``: torchvision's antialiased tensor resize; ``pil``: PIL's resize, as timm, OpenCLIP
#: and Hugging Face's PIL image processors do, so features equal the library's own transform.
BACKENDS = ("tensor", "pil")
#: Where the centre crop starts when the margin is odd: ``round``, torchvision's
#: ``round((H - S) / 2)`` (timm and OpenCLIP use it too); ``floor``, Hugging Face image
#: processors' ``(H - S) // 2``.
CROP_OFFSETS = ("round", "floor")


@dataclass(frozen=True)
class Preprocess:
    """Resize (``crop``, ``squash`` or ``pad``), center-crop, scale to [0, 1] and normalise.

    Parameters
    ----------
    resize_size : int
        Length of the shorter side after resizing, in pixels.
    crop_size : int
        Side of the square center crop, in pixels; the model sees ``(3, crop_size, crop_size)``.
    mean, std : tuple of 3 floats
        Per-channel normalisation applied after scaling to [0, 1].
    interpolation : str
        A :class:`torchvision.transforms.InterpolationMode` value (``"bilinear"``, ``"bicubic"``…).
    antialias : bool
        Whether the resize is antialiased (tensor backend; PIL always filters).
    resize : {'crop', 'squash', 'pad'}
        See :data:`RESIZE_MODES`.
    backend : {'tensor', 'pil'}
        See :data:`BACKENDS`.
    crop_offset : {'round', 'floor'}
        See :data:`CROP_OFFSETS`.

    Fields at their defaults (``resize='crop'``, ``backend='tensor'``, ``crop_offset='round'``)
    are left out of :meth:`to_dict`, so caches written before these fields existed keep their
    key.
    """

    resize_size: int
    crop_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True
    resize: str = "crop"
    backend: str = "tensor"
    crop_offset: str = "round"

    def __post_init__(self) -> None:
        for name in ("resize_size", "crop_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(
                    f"The {name!r} parameter of Preprocess must be a positive int. Got {value!r} instead."
                )
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise InvalidArgumentError(
                    f"The {name!r} parameter of Preprocess must be 3 finite floats (R, G, B). "
                    f"Got {getattr(self, name)!r} instead."
                )
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise InvalidArgumentError(
                f"The 'std' parameter of Preprocess must be positive. Got {self.std!r} instead."
            )
        interpolation = getattr(self.interpolation, "value", self.interpolation)
        if interpolation not in _INTERPOLATIONS:
            raise InvalidArgumentError(
                f"The 'interpolation' parameter of Preprocess must be one of {_INTERPOLATIONS}. "
                f"Got {self.interpolation!r} instead.{suggest(str(interpolation), _INTERPOLATIONS)}"
            )
        object.__setattr__(self, "interpolation", interpolation)
        object.__setattr__(self, "antialias", bool(self.antialias))
        for name, choices in (
            ("resize", RESIZE_MODES),
            ("backend", BACKENDS),
            ("crop_offset", CROP_OFFSETS),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise InvalidArgumentError(
                    f"The {name!r} parameter of Preprocess must be one of {choices}. "
                    f"Got {value!r} instead.{suggest(str(value), choices)}"
                )

    def with_resize(self, mode: str) -> Preprocess:
        """The same preprocessing with another resize mode.

        ``squash`` and ``pad`` resize to the crop size, so the whole image reaches the model;
        ``crop`` keeps this preprocessing's resize size (its own crop ratio).
        """
        if mode not in RESIZE_MODES:
            raise InvalidArgumentError(
                f"The 'resize' parameter must be one of {RESIZE_MODES}. Got {mode!r} instead."
                f"{suggest(str(mode), RESIZE_MODES)}"
            )
        if mode == self.resize:
            return self
        size = self.resize_size if mode == "crop" else self.crop_size
        return replace(self, resize=mode, resize_size=size)

    @classmethod
    def imagenet(cls, image_size: int = 224) -> Preprocess:
        """The ImageNet standard: resize to ``round(S * 256 / 224)``, crop ``S``, ImageNet mean/std."""
        check_image_size(image_size, "Preprocess.imagenet", optional=False)
        return cls(resize_size=round(image_size * 256 / 224), crop_size=image_size)

    @classmethod
    def from_torchvision_weights(cls, weights: Any, image_size: int | None = None) -> Preprocess:
        """The preprocessing of a torchvision weights enum member (its ``transforms()`` preset).

        Parameters
        ----------
        weights : torchvision.models.WeightsEnum
            For example ``ResNet50_Weights.IMAGENET1K_V2``.
        image_size : int, optional
            Crop to this size instead of the preset's; the resize keeps the preset's
            resize/crop ratio. Mean, std, interpolation and antialias are the preset's.
        """
        preset = weights.transforms()
        crop = _single(preset.crop_size)
        resize = _single(preset.resize_size)
        if image_size is not None and image_size != crop:
            resize, crop = round(image_size * resize / crop), image_size
        return cls(
            resize_size=resize,
            crop_size=crop,
            mean=tuple(preset.mean),
            std=tuple(preset.std),
            interpolation=getattr(preset.interpolation, "value", preset.interpolation),
            antialias=True if preset.antialias is None else bool(preset.antialias),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: ints, lists of floats, str, bool."""
        out = asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        for f in fields(self):
            if f.name in _OPTIONAL and out[f.name] == f.default:
                del out[f.name]
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal preprocessing gives equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not (names - set(_OPTIONAL) <= set(data) <= names):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise InvalidArgumentError(
                f"A preprocessing dict must have the keys {sorted(names)} ({', '.join(_OPTIONAL)} "
                f"optional). Got {got} instead."
            )
        return cls(**data)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` of an image of this size after the resize, before the crop."""
        if self.resize == "squash":
            return self.resize_size, self.resize_size
        if self.resize == "pad":  # the long side becomes resize_size
            scale = self.resize_size / max(height, width)
            return max(1, round(height * scale)), max(1, round(width * scale))
        short, long = sorted((height, width))  # crop: the short side, as torchvision rounds
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Preprocess one image.

        Parameters
        ----------
        image : torch.Tensor
            ``uint8`` tensor of shape ``(C, H, W)`` with ``C`` in {1, 3}; one channel is
            repeated to three.

        Returns
        -------
        torch.Tensor
            ``float32`` tensor of shape ``(3, crop_size, crop_size)``.
        """
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
            got = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
            raise InvalidArgumentError(
                f"Preprocess expects a uint8 tensor of shape (C, H, W). Got {got} instead."
            )
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise InvalidArgumentError(
                "Preprocess expects a uint8 tensor of shape (C, H, W) with C in {1, 3}. "
                f"Got shape {tuple(image.shape)} instead."
            )
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        x = F.to_pil_image(image.contiguous()) if self.backend == "pil" else image
        x = self._resize(x)
        if self.resize == "pad":
            x = self._pad(x)
        x = self._center_crop(x)
        if self.backend == "pil":
            x = F.pil_to_tensor(x)
        x = F.to_dtype(x, torch.float32, scale=True)
        return F.normalize(x, list(self.mean), list(self.std))

    def _resize(self, x: Any) -> Any:
        if self.resize == "crop":
            size = [self.resize_size]
        else:
            size = list(self.resized_size(*F.get_size(x)))
        return F.resize(
            x, size, interpolation=InterpolationMode(self.interpolation), antialias=self.antialias
        )

    def _center_crop(self, x: Any) -> Any:
        height, width = F.get_size(x)
        size = self.crop_size
        if self.crop_offset == "round" or height < size or width < size:
            return F.center_crop(x, [size, size])
        return F.crop(x, (height - size) // 2, (width - size) // 2, size, size)

    def _pad(self, x: Any) -> Any:
        """Letterbox to the crop size with the mean colour (zero after normalisation)."""
        height, width = F.get_size(x)
        dh, dw = max(0, self.crop_size - height), max(0, self.crop_size - width)
        if not (dh or dw):
            return x
        fill = [round(255 * v) for v in self.mean]
        return F.pad(x, [dw // 2, dh // 2, (dw + 1) // 2, (dh + 1) // 2], fill=fill)


#: Fields left out of :meth:`Preprocess.to_dict` at their defaults.
_OPTIONAL = ("resize", "backend", "crop_offset")


def _single(size: Any) -> int:
    """torchvision presets store sizes as ``[n]``."""
    if isinstance(size, (list, tuple)):
        (size,) = size
    return int(size)


def load_image(
    path: str | os.PathLike,
    reduce_to: Callable[[int, int], tuple[int, int]] | None = None,
    expected: bytes | None = None,
) -> torch.Tensor:
    """Read an image file as an RGB ``uint8`` tensor of shape ``(3, H, W)``.

    A plain JPEG decodes through simplejpeg where it is installed (the same pixels as PIL,
    faster: :mod:`featurecache.models._jpeg`), anything else through PIL.
    Greyscale, palette, CMYK and other modes are converted to RGB; 16- and 32-bit integer
    greyscale (``I;16``, ``I``) is scaled from 0..65535 to 0..255; transparent images
    (RGBA, LA, palette with transparency) are composited on white. Animated images give their
    first frame. PIL's decompression-bomb limit applies and truncated files are refused.
    EXIF orientation is not applied (like torchvision's ``ImageFolder`` loader).

    Parameters
    ----------
    path : str or path
    reduce_to : callable, optional
        ``(width, height) -> (width, height)``: the smallest size the caller needs. A JPEG
        file is then decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (PIL's
        ``Image.draft``), the largest reduction that stays at least that size; other
        formats decode at full size.
    expected : bytes, optional
        The content digest (:func:`featurecache.cache.content_digest`) the file had when the
        run compared the dataset with the cache. The bytes are then read once, hashed and
        decoded from memory; other bytes fail the sample (the file changed meanwhile).

    Returns
    -------
    torch.Tensor
        ``uint8`` of shape ``(3, H, W)``, stored channels-last (a view of the decoded
        ``(H, W, 3)`` pixels, which the antialiased resize reads fastest).

    Raises
    ------
    InvalidArgumentError
        On any failure. ``str(error)`` is a short one-line reason (``no such file``,
        ``file is empty (0 bytes)``, ``cannot identify image file``, ``image file is truncated``,
        ``permission denied``, ``decompression bomb: …``); the original exception, if any, is
        its ``__cause__``.
    """
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise InvalidArgumentError(_reason(exc)) from exc
    if size == 0:
        raise InvalidArgumentError("file is empty (0 bytes)")
    source = path if expected is None else io.BytesIO(_read_checked(path, expected))
    pixels = _plain_jpeg_pixels(source, reduce_to)
    if pixels is not None:
        return torch.from_numpy(pixels).permute(2, 0, 1)
    return _pil_image(path, reduce_to)


def load_image_bytes(
    data: bytes, reduce_to: Callable[[int, int], tuple[int, int]] | None = None
) -> torch.Tensor:
    """Decode an image held in memory (a tar member, a parquet cell) as :func:`load_image`
    decodes the same bytes in a file: the same pixels, the same one-line reasons.

    Raises
    ------
    InvalidArgumentError
        On any failure, as :func:`load_image`.
    """
    if not data:
        raise InvalidArgumentError("file is empty (0 bytes)")
    pixels = decode_plain_jpeg(bytes(data), Image.MAX_IMAGE_PIXELS, reduce_to)
    if pixels is not None:
        return torch.from_numpy(pixels).permute(2, 0, 1)
    return _pil_image(io.BytesIO(data), reduce_to)


def _pil_image(source, reduce_to) -> torch.Tensor:
    """Decode a file or a binary stream through PIL (every format, every mode)."""
    try:
        with Image.open(source) as img:
            img.seek(0)
            if reduce_to is not None:
                img.draft(None, reduce_to(*img.size))  # a no-op for formats other than JPEG
            img.load()
            rgb = _to_rgb(img)
            pixels = np.array(rgb, dtype=np.uint8)
    except Exception as exc:  # any decoder failure is a reason to skip this sample
        raise InvalidArgumentError(_reason(exc)) from exc
    return torch.from_numpy(pixels).permute(2, 0, 1)


def _read_checked(path, expected: bytes) -> bytes:
    """The file's bytes, refused unless their content digest is ``expected``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InvalidArgumentError(_reason(exc)) from exc
    return check_content(data, expected, "file")


def _plain_jpeg_pixels(source, reduce_to) -> np.ndarray | None:
    """A plain JPEG's pixels through simplejpeg (the same as PIL's); else ``None``, for PIL.

    ``source`` is a path or the file's bytes in memory.
    """
    if not jpeg_decoder_available():
        return None
    if isinstance(source, io.BytesIO):
        data = source.getvalue()
    else:
        try:
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError:
            return None  # PIL reports the reason
    return decode_plain_jpeg(data, Image.MAX_IMAGE_PIXELS, reduce_to)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PIL's convert("L") clips 16-bit values at 255 instead of scaling them.
        values = np.asarray(img).astype(np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


_REASONS = (
    (FileNotFoundError, "no such file"),
    (IsADirectoryError, "is a directory"),
    (PermissionError, "permission denied"),
    (UnidentifiedImageError, "cannot identify image file"),
)


def _reason(exc: BaseException) -> str:
    """A short, stable, one-line reason for a failed image read."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb: {exc}".splitlines()[0][:200]
    message = str(exc).strip()
    if "truncated" in message.lower():
        return "image file is truncated"
    first = message.splitlines()[0] if message else ""
    return f"{type(exc).__name__}: {first}"[:200] if first else type(exc).__name__
