"""How image files become pixels: the decode modes of a feature configuration.

- ``exact``: the full-size decode of :func:`load_image` (what every cache written before
  decode modes existed used).
- ``fast``: a JPEG file at least twice the resize target in both directions is decoded at
  1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled IDCT, PIL's ``Image.draft``),
  then resized exactly as ``exact`` does. Pixels change slightly (the reduction averages
  8x8 blocks where the resize would filter), so the mode is part of the cache key. Smaller
  JPEGs and other formats decode as ``exact``.
- ``gpu``: loader processes only read JPEG bytes; each batch is decoded with nvJPEG on the
  CUDA device (``torchvision.io.decode_jpeg``) and preprocessed there. Files the GPU path
  cannot take (not a plain JPEG, :func:`featurecache.models._jpeg.plain_jpeg`: CMYK, Adobe
  RGB, 12-bit, arithmetic-coded, truncated; or any image nvJPEG refuses) decode as
  ``exact`` on the CPU, and fail there with its reasons.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from functools import partial

import torch

from featurecache.cache import content_digest
from featurecache.models._jpeg import plain_jpeg
from featurecache.models._preprocess import Preprocess, load_image, load_image_bytes

__all__ = ["read_image", "read_image_bytes", "read_jpeg_bytes", "jpeg_tensor", "decode_jpegs"]

_DEPRECATED = "The image decoding and encoding capabilities of TorchVision are deprecated"


def read_image(
    path: str | os.PathLike, preprocess: Preprocess, decode: str, expected: bytes | None = None
) -> torch.Tensor:
    """Decode ``path`` as ``decode`` asks (``exact``, or ``fast`` for large JPEGs).

    ``gpu`` reads as ``exact``: it is the CPU fall-back of the GPU path. ``expected``: the
    content digest the file must still have (see :func:`load_image`).
    """
    if decode == "fast":
        return load_image(path, reduce_to=partial(_draft_size, preprocess), expected=expected)
    return load_image(path, expected=expected)


def read_image_bytes(data: bytes, preprocess: Preprocess, decode: str) -> torch.Tensor:
    """Decode an image held in memory as :func:`read_image` decodes the same bytes in a file."""
    if decode == "fast":
        return load_image_bytes(data, reduce_to=partial(_draft_size, preprocess))
    return load_image_bytes(data)


def _draft_size(preprocess: Preprocess, width: int, height: int) -> tuple[int, int]:
    """The size the resize produces: the decode may shrink the image down to it, not below."""
    new_height, new_width = preprocess.resized_size(height, width)
    return max(1, new_width), max(1, new_height)


def read_jpeg_bytes(path: str | os.PathLike, expected: bytes | None = None) -> torch.Tensor | None:
    """The file's bytes as a ``uint8`` tensor when the GPU can decode it, else ``None``.

    ``expected``: the content digest the file must still have (see :func:`load_image`).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None  # the CPU path reports the reason
    if expected is not None and content_digest(data) != expected:
        return None  # the CPU path reads it again and fails the row with the reason
    return jpeg_tensor(data)


def jpeg_tensor(data: bytes) -> torch.Tensor | None:
    """Encoded bytes as a ``uint8`` tensor when the GPU can decode them, else ``None``."""
    if not plain_jpeg(data):
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_jpegs(
    encoded: Sequence[torch.Tensor], device: torch.device
) -> list[torch.Tensor | Exception]:
    """Decode JPEG bytes on ``device`` as RGB ``uint8 (3, H, W)`` tensors.

    The batch is decoded in one call; when that call fails, each image is decoded alone,
    so one bad image costs only itself. A failed image's entry is its exception.
    """
    if not encoded:
        return []
    try:
        return list(_decode_jpeg(list(encoded), device))
    except Exception:  # one bad image fails the whole call: find it
        results: list[torch.Tensor | Exception] = []
        for data in encoded:
            try:
                results.append(_decode_jpeg(data, device))
            except Exception as error:
                results.append(error)
        return results


def _decode_jpeg(data, device: torch.device):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; until
        # featurecache depends on TorchCodec, torchvision's nvJPEG binding is the one we test.
        warnings.filterwarnings("ignore", _DEPRECATED, DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
