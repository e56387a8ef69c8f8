"""Datasets: folders of class sub-folders, CSV manifests, and built-ins.

A :class:`Dataset` is a sample table (ids, labels, splits, class names) plus a
way to load each sample as a uint8 image tensor. Folder and CSV datasets are
sorted by id, so the order files are listed in never changes the cache.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurecache._validation import ParameterError
from featurecache.cache import samples_digest
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest

__all__ = ["Dataset", "load_dataset", "list_builtins", "SPLITS", "IMAGE_EXTENSIONS"]

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_DIRS = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset.

    Exactly one of ``paths`` (absolute file paths) and ``arrays`` (uint8 images,
    shape ``(n_samples, H, W)`` or ``(n_samples, H, W, C)``) is set.
    """

    source: str
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...]
    paths: np.ndarray | None = None
    arrays: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.labels) == len(self.splits) == n):
            raise InvalidArgumentError(
                f"ids, labels and splits must have the same length; got {n}, "
                f"{len(self.labels)} and {len(self.splits)}."
            )
        if len(set(self.ids.tolist())) != n:
            raise InvalidArgumentError(f"sample ids of {self.source} must be unique.")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def samples_digest(self) -> str:
        """SHA-256 over ids, labels and splits (the cache records it)."""
        return samples_digest(self.ids, self.labels, self.splits)

    def load_image(self, index: int):
        """Return sample ``index`` as a uint8 tensor ``(C, H, W)``; raises on a bad image."""
        import torch

        from featurecache.models._preprocess import load_image

        if self.arrays is not None:
            image = torch.from_numpy(np.ascontiguousarray(self.arrays[index]))
            return image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
        return load_image(self.paths[index])

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: Sequence[int],
        splits: Sequence[str],
        class_names: Sequence[str],
        source: str = "arrays",
    ) -> Dataset:
        """Build a dataset from uint8 images held in memory (no decoding)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise InvalidArgumentError(
                "images must be a uint8 array of shape (n_samples, H, W) or (n_samples, H, W, C); "
                f"got dtype {images.dtype} and shape {images.shape}."
            )
        ids = np.array([str(i) for i in range(len(images))], dtype=object)
        return cls(
            source=source,
            ids=ids,
            labels=np.asarray(labels, dtype=np.int64),
            splits=np.asarray(splits, dtype=object),
            class_names=tuple(class_names),
            arrays=images,
        )


def list_builtins() -> list[str]:
    return sorted(_BUILTINS)


def load_dataset(
    data: str | os.PathLike | Dataset, split: str | None = None, seed: int = 0
) -> Dataset:
    """Resolve the DATA argument into a :class:`Dataset`.

    Parameters
    ----------
    data : str, path or Dataset
        A folder of class sub-folders (optionally under ``train/``, ``val/``, ``test/``),
        a CSV manifest with columns ``path,label[,split]``, or ``builtin:NAME``.
    split : str, optional
        ``random:FRACTION`` assigns a seeded, stratified test split of that fraction to
        datasets that have none; ``none`` keeps every sample unsplit.
    seed : int
        Seed of the random split.

    Raises
    ------
    InvalidArgumentError
        When the data is missing, empty, has fewer than two classes, or is malformed.
    """
    if isinstance(data, Dataset):
        return data
    text = str(data)
    if text.startswith("builtin:"):
        name = text.split(":", 1)[1]
        if name not in _BUILTINS:
            raise UnknownNameError(
                f"unknown built-in dataset {text!r}; expected one of "
                f"{', '.join('builtin:' + b for b in list_builtins())}." + suggest(name, _BUILTINS)
            )
        return _BUILTINS[name](split, seed)
    path = Path(text).expanduser()
    if not path.exists():
        raise InvalidArgumentError(
            f"DATA must be a folder of class sub-folders, a CSV manifest or builtin:NAME; "
            f"{text!r} does not exist."
        )
    if path.is_dir():
        return _load_folder(path.resolve(), split, seed)
    if path.suffix.lower() == ".csv":
        return _load_csv(path.resolve(), split, seed)
    raise InvalidArgumentError(
        f"DATA must be a folder of class sub-folders, a CSV manifest (.csv) or builtin:NAME; "
        f"got the file {text!r}."
    )


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _scan_classes(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            files = sorted(p for p in child.rglob("*") if _is_image(p) and not p.is_dir())
            if files:
                classes[child.name] = files
    return classes


def _load_folder(root: Path, split: str | None, seed: int) -> Dataset:
    top = {p.name for p in root.iterdir() if p.is_dir()}
    split_dirs = [s for s in SPLITS if s in top]
    rows: list[tuple[str, str, str, Path]] = []  # id, class, split, path
    if split_dirs and top <= set(SPLITS):
        for split_name in split_dirs:
            for class_name, files in _scan_classes(root / split_name).items():
                rows += [(p.relative_to(root).as_posix(), class_name, split_name, p) for p in files]
    else:
        for class_name, files in _scan_classes(root).items():
            rows += [(p.relative_to(root).as_posix(), class_name, "", p) for p in files]
    if not rows:
        raise InvalidArgumentError(
            f"DATA folder {str(root)!r} holds no images; expected class sub-folders of images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), optionally under train/, val/, test/."
        )
    rows.sort(key=lambda row: row[0])
    class_names = tuple(sorted({row[1] for row in rows}))
    ids = np.array([r[0] for r in rows], dtype=object)
    labels = np.array([class_names.index(r[1]) for r in rows], dtype=np.int64)
    splits = np.array([r[2] for r in rows], dtype=object)
    paths = np.array([str(r[3]) for r in rows], dtype=object)
    _check_classes(class_names, f"folder {str(root)!r}")
    if not split_dirs or not top <= set(SPLITS):
        splits = _assign_split(labels, splits, split, seed)
    return Dataset(f"folder:{root}", ids, labels, splits, class_names, paths=paths)


def _load_csv(csv_path: Path, split: str | None, seed: int) -> Dataset:
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise InvalidArgumentError(f"cannot read CSV manifest {str(csv_path)!r}: {error}") from None
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise InvalidArgumentError(
            f"CSV manifest {str(csv_path)!r} must have columns path,label[,split]; "
            f"missing {','.join(missing)} (found {','.join(table.columns) or 'none'})."
        )
    if table.empty:
        raise InvalidArgumentError(f"CSV manifest {str(csv_path)!r} has no rows.")
    empty = table.index[table["path"].str.strip() == ""]
    if len(empty):
        raise InvalidArgumentError(
            f"CSV manifest {str(csv_path)!r} has {len(empty)} rows without a path "
            f"(first at line {int(empty[0]) + 2}); every row needs a path."
        )
    if "split" in table.columns:
        bad = sorted(set(table["split"]) - set(SPLITS) - {""})
        if bad:
            raise InvalidArgumentError(
                f"CSV manifest {str(csv_path)!r}: split must be one of train, val, test or empty; "
                f"got {', '.join(map(repr, bad))}."
            )
        _check_labels_outside_test(table, csv_path)
    table = table.assign(id=table["path"].map(lambda p: Path(p).as_posix()))
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise InvalidArgumentError(
            f"CSV manifest {str(csv_path)!r} lists {duplicated.iloc[0]!r} more than once; "
            "each path must appear once."
        )
    table = table.sort_values("id", kind="stable").reset_index(drop=True)
    names = sorted({label for label in table["label"] if label != ""})
    class_names = tuple(names)
    _check_classes(class_names, f"CSV manifest {str(csv_path)!r}")
    labels = np.array([class_names.index(v) if v else -1 for v in table["label"]], dtype=np.int64)
    splits = np.array(
        table["split"] if "split" in table.columns else [""] * len(table), dtype=object
    )
    paths = np.array([str((csv_path.parent / p).absolute()) for p in table["path"]], dtype=object)
    if "split" not in table.columns or not any(splits):
        splits = _assign_split(labels, splits, split, seed)
    ids = np.array(table["id"], dtype=object)
    return Dataset(f"csv:{csv_path}", ids, labels, splits, class_names, paths=paths)


def _check_labels_outside_test(table, csv_path: Path) -> None:
    labelled = table[table["label"] != ""]
    if len(labelled) and set(labelled["split"]) == {"test"}:
        raise InvalidArgumentError(
            f"CSV manifest {str(csv_path)!r} has labels only in the test split; heads need "
            "labelled train (or val) rows: label some train rows or drop the split column."
        )


def _check_classes(class_names: tuple[str, ...], where: str) -> None:
    if len(class_names) < 2:
        found = repr(class_names[0]) if class_names else "none"
        raise InvalidArgumentError(
            f"{where} must hold at least two classes to train a classifier; found {found}."
        )


def _assign_split(
    labels: np.ndarray, splits: np.ndarray, split: str | None, seed: int
) -> np.ndarray:
    if split is None or split == "none":
        return splits
    fraction = _parse_random_split(split)
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.array([])
    stratify = labels if len(counts) and counts[counts > 0].min() >= 2 else None
    try:
        _, test_index = train_test_split(
            index, test_size=fraction, random_state=seed, stratify=stratify
        )
    except ValueError as error:
        raise ParameterError(
            "split", "load_dataset", "a fraction that leaves samples in both parts", split,
            f"{len(labels)} samples cannot be split: {error}",
        ) from None  # fmt: skip
    result = np.full(len(labels), "train", dtype=object)
    result[test_index] = "test"
    return result


def _parse_random_split(split: str) -> float:
    kind, _, value = split.partition(":") if isinstance(split, str) else ("", "", "")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if kind != "random" or not 0.0 < fraction < 1.0:
        hint = f"Write 'random:{split}'." if isinstance(split, float) and 0 < split < 1 else ""
        raise ParameterError(
            "split", "load_dataset", "'random:FRACTION' with 0 < FRACTION < 1, or 'none'", split,
            hint,
        )  # fmt: skip
    return fraction


def _load_digits(split: str | None, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (n_samples, 8, 8)
    labels = bunch.target.astype(np.int64)
    splits = _assign_split(
        labels, np.full(len(labels), "", dtype=object), split or "random:0.2", seed
    )
    ids = np.array([str(i) for i in range(len(labels))], dtype=object)
    names = tuple(str(n) for n in bunch.target_names)
    return Dataset("builtin:digits", ids, labels, splits, names, arrays=images)


def find_fashion_mnist() -> Path | None:
    """Return the folder holding the Fashion-MNIST IDX files, or None."""
    candidates = [os.environ.get("FASHION_MNIST_DIR", ""), *FASHION_MNIST_DIRS]
    for folder in filter(None, candidates):
        if (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    return None


FASHION_MNIST_HINT = (
    "Fashion-MNIST files not found; set FASHION_MNIST_DIR to a folder holding "
    "train-images-idx3-ubyte.gz (and the other three IDX files), put them in data/fashion-mnist/, "
    "or install the Debian package: apt-get install -y dataset-fashion-mnist."
)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion_mnist(split: str | None, seed: int) -> Dataset:
    folder = find_fashion_mnist()
    if folder is None:
        raise InvalidArgumentError(FASHION_MNIST_HINT)
    parts = {}
    for name, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        parts[name] = (images, labels.astype(np.int64))
    images = np.concatenate([parts["train"][0], parts["test"][0]])
    labels = np.concatenate([parts["train"][1], parts["test"][1]])
    splits = np.array(
        ["train"] * len(parts["train"][1]) + ["test"] * len(parts["test"][1]), dtype=object
    )
    ids = np.array([str(i) for i in range(len(labels))], dtype=object)
    return Dataset(
        f"builtin:fashion-mnist ({folder})",
        ids,
        labels,
        splits,
        FASHION_MNIST_CLASSES,
        arrays=images,
    )


_BUILTINS = {"digits": _load_digits, "fashion-mnist": _load_fashion_mnist}
