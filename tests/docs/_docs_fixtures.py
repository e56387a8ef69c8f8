"""The small data a page names with ``<!-- docs-fixtures: NAME, ... -->``.

Each fixture makes what a page's commands expect to find (a folder of photos, the
Fashion-MNIST files, weights in the torch hub cache) small enough for the suite, in the
page's scratch folder or, when every page can share it, in the session's ``shared`` folder,
and points the product at it through the environment the product already reads.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from _docs_harness import docs_fixture

from featurecache.cache._builtins import read_idx  # the reader of the IDX files the product uses

#: Fashion-MNIST subset: the first images of each class in each split (5-fold CV needs 5).
FASHION_TRAIN, FASHION_TEST = 10, 3


@docs_fixture("photos")
def photos(scratch: Path, env: dict, shared: Path) -> None:
    """``photos/``: 2 classes of 15 crops of scikit-learn's sample photos, no split folders,
    plus a ``notes.txt`` that is not an image; ``new_photos/``: 3 more crops."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(0)
    for name in ("china", "flower"):
        picture = load_sample_image(f"{name}.jpg")  # (427, 640, 3) uint8
        for folder, count in (("photos/" + name, 15), ("new_photos", 2 if name == "china" else 1)):
            (scratch / folder).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                top, left = rng.integers(0, 427 - 200), rng.integers(0, 640 - 200)
                crop = picture[top : top + 200, left : left + 200]
                Image.fromarray(crop).resize((64, 64)).save(scratch / folder / f"{name}-{i}.png")
    (scratch / "photos" / "notes.txt").write_text("not an image\n")


@docs_fixture("photos-cache")
def photos_cache(scratch: Path, env: dict, shared: Path) -> None:
    """What ``photos`` makes, and ``data/cache/photos.h5``: the cache the README's first step
    writes (``featurecache extract photos/ --cache data/cache/photos.h5 --split random:0.2``),
    extracted once per session and copied."""
    photos(scratch, env, shared)
    made = shared / "photos-cache"
    if not (made / "data" / "cache" / "photos.h5").is_file():
        photos(made, env, shared)
        (made / "data" / "cache").mkdir(parents=True, exist_ok=True)
        command = ["extract", "photos/", "--cache", "data/cache/photos.h5", "--split", "random:0.2"]
        subprocess.run(
            [sys.executable, "-m", "featurecache", *command, "--no-progress"],
            cwd=made, env={**os.environ, **env}, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    shutil.copytree(made / "data" / "cache", scratch / "data" / "cache", dirs_exist_ok=True)


@docs_fixture("fashion-mnist")
def fashion_mnist(scratch: Path, env: dict, shared: Path) -> None:
    """``FASHION_MNIST_DIR``: the first 10 train and 3 test images of each class of
    Fashion-MNIST (from the Debian package ``dataset-fashion-mnist`` when installed, else
    synthetic images)."""
    folder = shared / "fashion-mnist"
    if not (folder / "t10k-labels-idx1-ubyte.gz").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        source = _installed_fashion_mnist()
        for prefix, count in (("train", FASHION_TRAIN), ("t10k", FASHION_TEST)):
            if source is not None:
                images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
                labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
                keep = np.sort(
                    np.concatenate([np.flatnonzero(labels == k)[:count] for k in range(10)])
                )
                images, labels = images[keep], labels[keep]
            else:
                images, labels = _synthetic_fashion(10 * count, seed=len(prefix))
            _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
            _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    env["FASHION_MNIST_DIR"] = str(folder)


@docs_fixture("resnet18-weights")
def resnet18_weights(scratch: Path, env: dict, shared: Path) -> None:
    """torchvision's resnet18 ``IMAGENET1K_V1`` file already in the torch hub cache, as if
    downloaded (seeded random weights: the page shows how, not what the weights know)."""
    import torch
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = shared / "torch-home" / "hub" / "checkpoints" / os.path.basename(url)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), cached)
    env["TORCH_HOME"] = str(cached.parents[2])


def _installed_fashion_mnist() -> Path | None:
    for folder in ("/usr/share/datasets/fashion-mnist", os.environ.get("FASHION_MNIST_DIR", "")):
        if folder and (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    return None


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _synthetic_fashion(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class is a bright band's position, with noise."""
    rng = np.random.default_rng(int(hashlib.sha256(str(seed).encode()).hexdigest()[:8], 16))
    labels = np.arange(count, dtype=np.uint8) % 10
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[2 * label + 4 : 2 * label + 8, 4:24] = 220
    return images, labels
