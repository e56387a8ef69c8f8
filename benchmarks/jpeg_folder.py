"""A deterministic, offline folder of photo-sized JPEGs for the decoding benchmarks.

Crops and rescales of scikit-learn's two sample photos (``load_sample_images``: a temple in
China and a flower, 640 x 427 each), every side between 400 and 1,200 pixels, saved at
JPEG quality 90 in class folders (one per source photo). The same arguments give the same
files on every machine with the same Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_jpeg_folder"]

QUALITY = 90
SIDES = (400, 1200)


def make_jpeg_folder(root: Path, n_images: int, seed: int = 0) -> Path:
    """Write ``n_images`` JPEGs under ``root/<photo>/`` and return ``root``.

    Files already there with the expected name are kept, so a folder can be reused
    between runs with the same arguments.
    """
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    photos = [Image.fromarray(image) for image in samples.images]
    names = [Path(name).stem for name in samples.filenames]
    for i in range(n_images):
        k = i % len(photos)
        path = Path(root) / names[k] / f"{names[k]}_{i:05d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, i])
        width, height = (int(v) for v in rng.integers(SIDES[0], SIDES[1] + 1, size=2))
        image = _crop(photos[k], width / height, rng).resize((width, height), Image.BICUBIC)
        tmp = path.with_suffix(".tmp")
        image.save(tmp, format="JPEG", quality=QUALITY)
        tmp.replace(path)
    return Path(root)


def _crop(photo: Image.Image, aspect: float, rng: np.random.Generator) -> Image.Image:
    """A random crop of ``photo`` with the given width/height ratio, 60-100% of the largest."""
    pw, ph = photo.size
    width, height = (pw, pw / aspect) if pw / aspect <= ph else (ph * aspect, ph)
    scale = rng.uniform(0.6, 1.0)
    width, height = max(16, int(width * scale)), max(16, int(height * scale))
    left = int(rng.integers(0, pw - width + 1))
    top = int(rng.integers(0, ph - height + 1))
    return photo.crop((left, top, left + width, top + height))
