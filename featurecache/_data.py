"""Datasets: folders of class sub-folders, CSV manifests, and built-ins.

A :class:`Dataset` is a sample table (ids, labels, splits, class names) plus a
way to load each sample as a uint8 image tensor. Folder and CSV datasets are
sorted by id, so the order files are listed in never changes the cache.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurecache._spec import parse_random_split
from featurecache._validation import AdviceError, ParameterError
from featurecache.cache import samples_digest
from featurecache.cache._format import SPLITS
from featurecache.cache._samples import STATE_LIVE, SplitSpec, check_aligned
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest
from featurecache.sources import SampleBytes, Source, source_for

__all__ = [
    "Dataset",
    "load_dataset",
    "list_builtins",
    "list_images",
    "is_image",
    "read_table",
    "SPLITS",
    "SPLIT_NAMES",
    "IMAGE_EXTENSIONS",
]

#: Folder names (compared case-insensitively) and manifest values read as each split.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
#: Kinds of entries a folder scan passes over, as :attr:`Dataset.skipped` names them.
SKIPPED_KINDS = {
    "hidden": "hidden files or folders",
    "not_image": "files that are not images",
    "empty_class": "class folders without images",
    "wrong_level": "images outside a class folder",
    "no_image": "samples without an image",
}
#: The same kinds, said of one entry.
SKIPPED_KIND_ONE = {
    "hidden": "hidden file or folder",
    "not_image": "file that is not an image",
    "empty_class": "class folder without images",
    "wrong_level": "image outside a class folder",
    "no_image": "sample without an image",
}
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

    Exactly one of ``paths`` (absolute file paths), ``arrays`` (uint8 images,
    shape ``(n_samples, H, W)`` or ``(n_samples, H, W, C)``) and ``members`` (encoded
    images inside shard files, with their content digests:
    :class:`featurecache.sources.SampleBytes`) is set.
    """

    source: str
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...]
    paths: np.ndarray | None = None
    arrays: np.ndarray | None = field(default=None, repr=False)
    skipped: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    #: How the splits were made (kept by the cache: see :class:`SplitSpec`).
    split_spec: SplitSpec = SplitSpec()
    #: In a cache's row order (:meth:`aligned_to`): a sample with a stale row has two rows.
    aligned: bool = field(default=False, repr=False)
    #: ``(n_samples, 16)`` content digests each file must still have when it is decoded
    #: (set by :meth:`aligned_to` from the cache's table); ``None``: not checked.
    digests: np.ndarray | None = field(default=None, repr=False)
    members: SampleBytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_aligned(self.ids, self.labels, self.splits)
        if not self.aligned and len(set(self.ids.tolist())) != len(self.ids):
            raise InvalidArgumentError(f"sample ids of {self.source} must be unique.")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def samples_digest(self) -> str:
        """SHA-256 over ids, labels and splits (the cache records it)."""
        return samples_digest(self.ids, self.labels, self.splits)

    def summary(self) -> str:
        """One line: classes, images per split, and what the scan passed over by kind."""
        counts = {name or "(no split)": int(np.sum(self.splits == name)) for name in
                  dict.fromkeys(sorted(self.splits.tolist(), key=_split_rank))}  # fmt: skip
        per_split = ", ".join(f"{name} {n}" for name, n in counts.items())
        skipped = ", ".join(
            f"{len(entries)} {(SKIPPED_KIND_ONE if len(entries) == 1 else SKIPPED_KINDS)[kind]}"
            for kind, entries in self.skipped.items()
            if entries
        )
        return (
            f"{len(self.class_names)} classes, {len(self)} images ({per_split}); "
            f"skipped: {skipped or 'nothing'}"
        )

    def aligned_to(self, table) -> Dataset:
        """This dataset in the row order of a cache's sample table (see ``SampleTable``).

        Rows that are not live (removed samples, stale rows) keep the table's labels and
        splits and cannot be loaded; they are never computed again.
        """
        where = {sample_id: i for i, sample_id in enumerate(self.ids.tolist())}
        index = np.array([where.get(i, -1) for i in table.ids.tolist()], dtype=np.int64)
        present = (index >= 0) & (table.state_codes == STATE_LIVE)
        paths = arrays = members = None
        if self.paths is not None:
            paths = np.where(present, self.paths[np.maximum(index, 0)], "").astype(object)
        elif self.members is not None:
            members = self.members.take(np.where(present, index, -1))
        else:
            arrays = self.arrays[np.maximum(index, 0)]
            arrays[~present] = 0
        return Dataset(
            self.source,
            ids=np.asarray(table.ids, dtype=object),
            labels=np.asarray(table.labels, dtype=np.int64),
            splits=np.asarray(table.splits, dtype=object),
            class_names=tuple(table.class_names),
            paths=paths,
            arrays=arrays,
            skipped=self.skipped,
            split_spec=self.split_spec,
            aligned=True,
            digests=getattr(table, "digests", None),
            members=members,
        )

    def load_image(self, index: int):
        """Return sample ``index`` as a uint8 tensor ``(C, H, W)``; raises on a bad image."""
        import torch

        from featurecache.models._preprocess import load_image

        if self.arrays is not None:
            image = torch.from_numpy(np.ascontiguousarray(self.arrays[index]))
            return image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
        if self.members is not None:
            from featurecache.models._preprocess import load_image_bytes

            return load_image_bytes(self.members.read(index))
        return load_image(self.paths[index], expected=self.expected_digest(index))

    def expected_digest(self, index: int) -> bytes | None:
        """The content digest sample ``index`` had when the run compared it with the cache."""
        if self.digests is None or self.paths is None or not self.digests[index].any():
            return None
        return self.digests[index].tobytes()

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
    data: str | os.PathLike | Dataset | Source,
    split: str | None = None,
    seed: int = 0,
    *,
    resplit: bool = False,
) -> Dataset:
    """Resolve the DATA argument into a :class:`Dataset`.

    Parameters
    ----------
    data : str, path, Dataset or Source
        A folder of class sub-folders (optionally under ``train/``, ``val/``, ``test/``),
        a CSV manifest with columns ``path,label[,split]``, ``builtin:NAME``, webdataset
        tar shards or parquet files (a file, brace pattern or glob ending in ``.tar`` or
        ``.parquet``, local or an fsspec URL; a :class:`featurecache.sources.WebDataset` or
        :class:`featurecache.sources.ParquetImages` for labels, classes and splits other
        than the defaults: ``docs/data-at-scale.md``).
    split : str, optional
        ``random:FRACTION`` assigns a seeded, stratified test split of that fraction to
        datasets that have none; ``none`` keeps every sample unsplit. Data with its own
        splits (split folders, a manifest's split column, Fashion-MNIST) refuses it unless
        ``resplit`` is set. A :class:`Dataset` is taken as it is: without splits it gets
        the split asked for, with exactly that split it keeps it, with others it refuses it
        unless ``resplit``.
    seed : int
        Seed of the random split.
    resplit : bool
        Replace the data's own splits with the ``split`` asked for.

    Raises
    ------
    InvalidArgumentError
        When the data is missing, empty, has fewer than two classes, or is malformed.
    """
    if isinstance(data, Dataset):
        return _split_dataset(data, split, seed, resplit)
    if split is not None and not isinstance(split, str):
        parse_random_split(split)  # raises with the template, and a hint for 0.2
    if not isinstance(resplit, bool):
        raise ParameterError("resplit", "load_dataset", "a bool", resplit)
    dataset = _load(data, split, seed)
    return _apply_split(dataset, split, seed, resplit)


def _load(data: str | os.PathLike | Source, split: str | None, seed: int) -> Dataset:
    """The dataset with its own splits (``""`` where it has none)."""
    if isinstance(data, Source):
        return _from_source(data)
    text = str(data)
    source = source_for(text)
    if source is not None:
        return _from_source(source)
    if text.startswith("builtin:"):
        name = text.split(":", 1)[1]
        if name not in _BUILTINS:
            raise UnknownNameError(
                f"unknown built-in dataset {text!r}; expected one of "
                f"{', '.join('builtin:' + b for b in list_builtins())}." + suggest(name, _BUILTINS)
            )
        return _BUILTINS[name]()
    path = Path(text).expanduser()
    if not path.exists():
        raise InvalidArgumentError(
            f"DATA must be a folder of class sub-folders, a CSV manifest or builtin:NAME; "
            f"{text!r} does not exist."
        )
    if path.is_dir():
        return _load_folder(path.resolve())
    if path.suffix.lower() == ".csv":
        return _load_csv(path.resolve())
    raise InvalidArgumentError(
        f"DATA must be a folder of class sub-folders, a CSV manifest (.csv) or builtin:NAME; "
        f"got the file {text!r}."
    )


def _from_source(source: Source) -> Dataset:
    """The dataset of a sharded source: its table scanned, its splits checked."""
    scanned = source.scan()
    if not len(scanned.ids):
        raise InvalidArgumentError(
            f"DATA {source.data!r} holds no images; expected samples with an image field "
            "(jpg, png, webp...) in each shard."
        )
    values = [str(v).strip() for v in scanned.splits.tolist()]
    bad = sorted({v for v in values if v and v.lower() not in SPLIT_NAMES})
    if bad:
        raise InvalidArgumentError(
            f"{scanned.source}: split must be one of train, val, test or empty "
            f"(also {', '.join(n for n in SPLIT_NAMES if n not in SPLITS)}, in any case); "
            f"got {', '.join(map(repr, bad[:5]))}."
        )
    if not (scanned.labels >= 0).any():
        raise AdviceError(
            AdviceError.literal(
                f"{scanned.source}: no sample has a label in the field {str(source.label_spec)!r}; "
            )
            + "name the field that holds them with {flag}.",
            flag=("label_field", "FIELD"),
        )
    _check_classes(scanned.class_names, scanned.source)
    return Dataset(
        scanned.source,
        ids=scanned.ids,
        labels=scanned.labels,
        splits=np.array([SPLIT_NAMES[v.lower()] if v else "" for v in values], dtype=object),
        class_names=scanned.class_names,
        skipped=scanned.skipped,
        members=scanned.members,
    )


def is_image(path: Path) -> bool:
    """The one rule for which files are images, for extract and predict alike."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Every image below ``folder``, sorted, outside hidden folders."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and is_image(p) and not _hidden(p.relative_to(folder))
    )


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


class _Scan:
    """What a folder scan found, and what it passed over by kind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows: list[tuple[str, str, str, Path]] = []  # id, class, split, path
        self.skipped: dict[str, list[str]] = {kind: [] for kind in SKIPPED_KINDS}

    def skip(self, kind: str, path: Path) -> None:
        self.skipped[kind].append(path.relative_to(self.root).as_posix())

    def loose_files(self, folder: Path) -> None:
        """Files directly in ``folder``, where only class folders belong."""
        for child in sorted(folder.iterdir()):
            if child.is_file():
                self.skip(_kind_of_file(child) or "wrong_level", child)

    def classes(self, folder: Path, split: str) -> None:
        for child in sorted(folder.iterdir()):
            if not child.is_dir():
                continue
            if child.name.startswith("."):
                self.skip("hidden", child)
                continue
            found = 0
            for path in sorted(child.rglob("*")):
                relative = path.relative_to(child)
                if _hidden(relative):
                    if relative.name.startswith(".") and not _hidden(relative.parent):
                        self.skip("hidden", path)
                    continue
                if path.is_dir():
                    continue
                kind = _kind_of_file(path)
                if kind:
                    self.skip(kind, path)
                    continue
                self.rows.append((path.relative_to(self.root).as_posix(), child.name, split, path))
                found += 1
            if not found:
                self.skip("empty_class", child)


def _kind_of_file(path: Path) -> str | None:
    """Why a file is not a sample (``hidden``, ``not_image``), or None for an image."""
    if path.name.startswith("."):
        return "hidden"
    return None if is_image(path) else "not_image"


def _split_folders(root: Path) -> tuple[dict[str, Path], list[Path]]:
    """Top-level folders read as splits, by split; and the other visible folders."""
    splits: dict[str, Path] = {}
    others = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        split = SPLIT_NAMES.get(child.name.lower())
        if split is None:
            others.append(child)
        elif split in splits:
            raise InvalidArgumentError(
                f"DATA folder {str(root)!r} has two folders for the {split} split "
                f"({splits[split].name}/ and {child.name}/); merge them into one."
            )
        else:
            splits[split] = child
    return splits, others


def _load_folder(root: Path) -> Dataset:
    splits, others = _split_folders(root)
    if splits and others:
        shown = ", ".join(f"{p.name}/" for p in others[:5]) + (" ..." if len(others) > 5 else "")
        raise InvalidArgumentError(
            f"DATA folder {str(root)!r} mixes split folders "
            f"({', '.join(f'{p.name}/' for p in splits.values())}) with class folders ({shown}) "
            "at the same level; put every class folder inside a split folder, or rename the "
            "folders that are classes."
        )
    scan = _Scan(root)
    scan.loose_files(root)
    if splits:
        for split, folder in sorted(splits.items(), key=lambda item: _split_rank(item[0])):
            scan.loose_files(folder)
            scan.classes(folder, split)
    else:
        scan.classes(root, "")
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") and child.is_dir():
            scan.skip("hidden", child)
    if not scan.rows:
        raise InvalidArgumentError(
            f"DATA folder {str(root)!r} holds no images; expected class sub-folders of images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), optionally under train/, val/, test/."
        )
    rows = sorted(scan.rows, key=lambda row: row[0])
    class_names = tuple(sorted({row[1] for row in rows}))
    _check_classes(class_names, f"folder {str(root)!r}")
    return Dataset(
        f"folder:{root}",
        ids=np.array([r[0] for r in rows], dtype=object),
        labels=np.array([class_names.index(r[1]) for r in rows], dtype=np.int64),
        splits=np.array([r[2] for r in rows], dtype=object),
        class_names=class_names,
        paths=np.array([str(r[3]) for r in rows], dtype=object),
        skipped={kind: tuple(sorted(entries)) for kind, entries in scan.skipped.items()},
    )


def _split_rank(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def read_table(csv_path: Path, what: str = "CSV manifest"):
    """A CSV file as a table of str, refusing rows with more fields than the header.

    pandas would read such rows with their first fields as the index (every path shifted
    by a column), so they are an error here. ``what`` names the file in messages.
    """
    import warnings

    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(csv_path, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning:
        reason = "its rows have more fields than its header"
    except (ValueError, OSError, pd.errors.ParserError) as error:
        reason = " ".join(str(error).split())
    raise InvalidArgumentError(
        f"cannot read {what} {str(csv_path)!r}: {reason}; write one header line and the "
        "same number of comma-separated fields on every row (quote fields holding commas)."
    )


def _load_csv(csv_path: Path) -> Dataset:
    table = read_table(csv_path)
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
    table = table.assign(label=table["label"].str.strip())
    if "split" in table.columns:
        known = {name: split for name, split in SPLIT_NAMES.items()}
        values = table["split"].str.strip()
        bad = sorted({v for v in values if v and v.lower() not in known})
        if bad:
            raise InvalidArgumentError(
                f"CSV manifest {str(csv_path)!r}: split must be one of train, val, test or empty "
                f"(also {', '.join(n for n in SPLIT_NAMES if n not in SPLITS)}, in any case); "
                f"got {', '.join(map(repr, bad))}."
            )
        table = table.assign(split=[known[v.lower()] if v else "" for v in values])
        _check_labels_outside_test(table, csv_path)
    table = table.assign(
        id=table["path"].map(lambda p: Path(p).as_posix()),
        file=table["path"].map(lambda p: os.path.realpath(csv_path.parent / p)),
    )
    duplicated = table[table["file"].duplicated(keep=False)]
    if len(duplicated):
        first = duplicated[duplicated["file"] == duplicated["file"].iloc[0]]["path"].tolist()
        raise InvalidArgumentError(
            f"CSV manifest {str(csv_path)!r} lists the file {first[0]!r} more than once "
            f"(also as {first[1]!r}); each file must appear once: remove the other spellings."
        )
    table = table.sort_values("id", kind="stable").reset_index(drop=True)
    names = sorted({label for label in table["label"] if label != ""})
    class_names = tuple(names)
    _check_classes(class_names, f"CSV manifest {str(csv_path)!r}")
    labels = np.array([class_names.index(v) if v else -1 for v in table["label"]], dtype=np.int64)
    splits = np.array(
        table["split"] if "split" in table.columns else [""] * len(table), dtype=object
    )
    paths = np.array(table["file"], dtype=object)
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


def _split_dataset(dataset: Dataset, split: str | None, seed: int, resplit: bool) -> Dataset:
    """A :class:`Dataset` given as it is, with the split asked for: kept when it already has
    exactly that split, applied when it has none, refused when it has its own (unless
    ``resplit``), as for data read from files."""
    if split is None:
        return dataset
    if split == "none":
        wanted = SplitSpec("none")
    else:
        wanted = SplitSpec("random", parse_random_split(split), seed)
    if dataset.split_spec == wanted:
        return dataset
    if not isinstance(resplit, bool):
        raise ParameterError("resplit", "load_dataset", "a bool", resplit)
    return _apply_split(dataset, split, seed, resplit)


def _apply_split(dataset: Dataset, split: str | None, seed: int, resplit: bool) -> Dataset:
    """Give a dataset without splits the random split asked for; never silently replace its own."""
    has_own = bool(np.any(dataset.splits != ""))
    default = _DEFAULT_SPLITS.get(dataset.source.split(" ")[0])
    if split is None:
        split = None if has_own else default
        if split is None:
            kind = "given" if has_own else "none"
            return dataclasses.replace(dataset, split_spec=SplitSpec(kind))
    elif has_own and not resplit:
        raise ParameterError(
            "split", "load_dataset", "left out for data that has its own splits", split,
            "Leave it out, or pass resplit=True to replace the data's splits.",
            cli_hint="Leave it out, or add --resplit to replace the data's splits.",
        )  # fmt: skip
    if split == "none":
        splits, spec = np.full(len(dataset), "", dtype=object), SplitSpec("none")
    else:
        splits = _random_split(dataset.labels, split, seed)
        spec = SplitSpec("random", parse_random_split(split), int(seed))
    return dataclasses.replace(dataset, splits=splits, split_spec=spec)


def follow_split(
    dataset: Dataset, table, split: str | None, resplit: bool, owner: str = "extract"
) -> tuple[Dataset, bool]:
    """The dataset with the split a cache's table stores, and whether moved rows keep theirs.

    A stored split is data: a run that does not ask for a split keeps it, and one that asks
    for another is refused unless ``resplit``. Under a stored random split every sample the
    table knows keeps its split, and a new one is assigned from its id and the stored seed.

    Raises
    ------
    ParameterError
        About ``split``: it differs from the stored split, naming both.
    """
    stored, asked = table.split, dataset.split_spec
    if stored.kind == "unknown" or resplit or asked == stored:
        keep = not resplit and stored.kind == "random"
        return (_keep_random(dataset, table) if keep else dataset), keep
    if split is None and asked.kind != "given":  # the run did not ask: the cache's split stays
        if stored.kind == "random":
            return _keep_random(dataset, table), True
        return dataset, False
    raise ParameterError(
        "split", owner, f"the split the cache's samples have ({stored.describe()})",
        split if split is not None else asked.describe(),
        f"this run asks for {asked.describe()}; leave split out to keep the stored one, "
        "or pass resplit=True to replace it.",
        cli_hint=f"this run asks for {asked.describe()}; leave --split out to keep the stored "
        "one, or add --resplit to replace it.",
    )  # fmt: skip


def _keep_random(dataset: Dataset, table) -> Dataset:
    """Splits of a stored random split: the table's for the samples it knows, new ones
    assigned from the seed and their id."""
    rows = list(
        zip(table.ids.tolist(), table.splits.tolist(), table.state_codes.tolist(), strict=True)
    )
    known = {str(i): str(s) for i, s, _ in rows}  # a removed sample back keeps its split
    known.update({str(i): str(s) for i, s, state in rows if state == STATE_LIVE})
    ids = [str(i) for i in dataset.ids.tolist()]
    new = [i for i in ids if i not in known]
    assigned = dict(zip(new, table.split.assign(new).tolist(), strict=True))
    splits = np.array([known.get(i, assigned.get(i)) for i in ids], dtype=object)
    return dataclasses.replace(dataset, splits=splits, split_spec=table.split)


def _random_split(labels: np.ndarray, split: str, seed: int) -> np.ndarray:
    fraction = parse_random_split(split)
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


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (n_samples, 8, 8)
    labels = bunch.target.astype(np.int64)
    splits = np.full(len(labels), "", dtype=object)  # "random:0.2" unless asked otherwise
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


def _load_fashion_mnist() -> Dataset:
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
#: The split a built-in without its own splits gets when none is asked for.
_DEFAULT_SPLITS = {"builtin:digits": "random:0.2"}
