"""The built-in datasets as arrays: what ``builtin:NAME`` names, read without torch.

Stage 1 turns them into datasets (:func:`featurecache.load_dataset`); the report reads a
sample's pixels again through :class:`featurecache.cache.DataSource`. Both read them here,
so a thumbnail shows the pixels the features were computed from.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurecache.exceptions import InvalidArgumentError

__all__ = [
    "BUILTINS",
    "Builtin",
    "BuiltinArrays",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "FASHION_MNIST_HINT",
    "find_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_DIRS = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = (
    "Fashion-MNIST files not found; set FASHION_MNIST_DIR to a folder holding "
    "train-images-idx3-ubyte.gz (and the other three IDX files), put them in data/fashion-mnist/, "
    "or install the Debian package: apt-get install -y dataset-fashion-mnist."
)


@dataclass(frozen=True, eq=False)
class BuiltinArrays:
    """A built-in dataset: sample ``i`` (id ``str(i)``) is ``images[i]``.

    Attributes
    ----------
    images : ndarray of shape (n_samples, H, W), uint8
    labels : ndarray of shape (n_samples,), int64
    splits : ndarray of shape (n_samples,), object
        ``""`` where the dataset has no split of its own.
    class_names : tuple of str
    notes : tuple of str
        What the source string adds after the name (where the files were found).
    """

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Builtin:
    """A built-in dataset: its name, its reader, and the split it gets when none is asked.

    ``read`` takes the folder the source string noted (``None``: find it again).
    """

    name: str
    read: Callable[[Path | None], BuiltinArrays]
    default_split: str | None = None


def _read_digits(folder: Path | None = None) -> BuiltinArrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    return BuiltinArrays(
        images=np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8),  # (n_samples, 8, 8)
        labels=labels,
        splits=np.full(len(labels), "", dtype=object),
        class_names=tuple(str(n) for n in bunch.target_names),
    )


def find_fashion_mnist() -> Path | None:
    """Return the folder holding the Fashion-MNIST IDX files, or None."""
    candidates = [os.environ.get("FASHION_MNIST_DIR", ""), *FASHION_MNIST_DIRS]
    for folder in filter(None, candidates):
        if (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    return None


def read_idx(path: Path) -> np.ndarray:
    """The array of a gzipped IDX file (the format of the MNIST family)."""
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _read_fashion_mnist(folder: Path | None = None) -> BuiltinArrays:
    if folder is None or not (folder / "train-images-idx3-ubyte.gz").is_file():
        folder = find_fashion_mnist()
    if folder is None:
        raise InvalidArgumentError(FASHION_MNIST_HINT)
    parts = {}
    for name, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        parts[name] = (images, labels.astype(np.int64))
    return BuiltinArrays(
        images=np.concatenate([parts["train"][0], parts["test"][0]]),
        labels=np.concatenate([parts["train"][1], parts["test"][1]]),
        splits=np.array(
            ["train"] * len(parts["train"][1]) + ["test"] * len(parts["test"][1]), dtype=object
        ),
        class_names=FASHION_MNIST_CLASSES,
        notes=(str(folder),),
    )


#: The built-in datasets by name (``builtin:NAME``).
BUILTINS = {
    builtin.name: builtin
    for builtin in (
        Builtin("digits", _read_digits, default_split="random:0.2"),
        Builtin("fashion-mnist", _read_fashion_mnist),
    )
}
