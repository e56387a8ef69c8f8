"""Plain JPEG files: recognising them from their markers, and decoding them with simplejpeg.

PIL and simplejpeg both decode with libjpeg-turbo and give the same pixels (checked once
per process on a test image, at full size and at every DCT scale), but simplejpeg decodes
straight into a NumPy array without PIL's chunked reads and copies: about 1.5x the images per
second of decode + preprocess on a 2-core machine (benchmarks/README.md). So a plain JPEG
(:func:`plain_jpeg`) goes through simplejpeg, and everything else, or anything simplejpeg
refuses, through PIL, whose failure reasons are the recorded ones. Which decoder ran never
changes the pixels, so it is not part of the cache key.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import numpy as np

__all__ = ["plain_jpeg", "decode_plain_jpeg", "draft_scale", "jpeg_decoder_available"]

logger = logging.getLogger(__name__)

#: Start-of-frame markers of 8-bit Huffman JPEGs: baseline, extended and progressive.
_PLAIN_FRAMES = (0xC0, 0xC1, 0xC2)
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every SOFn marker
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}
_checked: bool | None = None  # whether simplejpeg gives PIL's pixels in this process


def plain_jpeg(data: bytes) -> bool:
    """Whether ``data`` is a complete 8-bit Huffman JPEG with 1 or 3 YCbCr components.

    Judged from the markers: it starts with SOI and ends with EOI (trailing zero bytes
    allowed), its frame is baseline, extended or progressive, 8-bit, with 1 or 3
    components, and no Adobe marker declares them RGB. CMYK, 12-bit, lossless,
    arithmetic-coded and truncated files are not plain.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return False
    position, adobe_transform = 2, None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe_transform = segment[11]
        if marker in _FRAMES:
            if len(segment) < 6:
                return False
            precision, components = segment[0], segment[5]
            if marker not in _PLAIN_FRAMES or precision != 8 or components not in (1, 3):
                return False
            return not (components == 3 and adobe_transform == 0)  # Adobe RGB, not YCbCr
        position += 2 + length
    return False


def draft_scale(width: int, height: int, target: tuple[int, int]) -> int:
    """PIL's ``Image.draft`` rule: the largest of 8, 4, 2, 1 that keeps ``target`` covered."""
    scale = min(width // max(1, target[0]), height // max(1, target[1]))
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def decode_plain_jpeg(
    data: bytes,
    max_pixels: int | None,
    reduce_to: Callable[[int, int], tuple[int, int]] | None = None,
) -> np.ndarray | None:
    """The RGB pixels ``(H, W, 3)`` of a plain JPEG, as PIL would decode them, or ``None``.

    ``None`` when simplejpeg is not installed or gives other pixels than PIL here, when
    ``data`` is not a plain JPEG, has more than ``max_pixels`` pixels (PIL's
    decompression-bomb limit decides those), or simplejpeg refuses it: the caller then
    decodes with PIL. ``reduce_to`` applies :func:`draft_scale`, as ``Image.draft`` does.
    """
    if not jpeg_decoder_available() or not plain_jpeg(data):
        return None
    import simplejpeg

    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        if max_pixels is not None and width * height > max_pixels:
            return None
        scale = 1 if reduce_to is None else draft_scale(width, height, reduce_to(width, height))
        size = (-(-height // scale), -(-width // scale))
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=size[0], min_width=size[1])
    except Exception:  # PIL decodes it, or says why it cannot
        return None
    return pixels if pixels.shape == (*size, 3) else None


def jpeg_decoder_available() -> bool:
    """simplejpeg is installed and decodes a test image exactly as PIL does (checked once)."""
    global _checked
    if _checked is None:
        try:
            import simplejpeg  # noqa: F401
        except ImportError:
            _checked = False
        else:
            _checked = _same_pixels_as_pil()
            if not _checked:
                logger.warning("simplejpeg decodes differently from PIL here; decoding with PIL")
    return _checked


def _same_pixels_as_pil() -> bool:
    import simplejpeg
    from PIL import Image

    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (67, 93, 3), dtype=np.uint8))
    for options in ({"subsampling": 2}, {"subsampling": 1}, {"progressive": True}):
        encoded = io.BytesIO()
        source.save(encoded, format="JPEG", quality=90, **options)
        data = encoded.getvalue()
        for scale in (1, 2, 4, 8):
            with Image.open(io.BytesIO(data)) as image:
                image.draft(None, (93 // scale, 67 // scale))
                expected = np.asarray(image.convert("RGB"))
            h, w = expected.shape[:2]
            actual = simplejpeg.decode_jpeg(data, "RGB", min_height=h, min_width=w)
            if actual.shape != expected.shape or not np.array_equal(actual, expected):
                return False
    return True
