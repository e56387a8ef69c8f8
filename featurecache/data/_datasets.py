"""Datasets: folders of class sub-folders, CSV manifests, and built-ins.

A :class:`Dataset` is a sample table (:class:`featurecache.cache.SampleTable`: ids,
labels, splits, class names, its :class:`featurecache.cache.DataSource`) plus a way to
load each sample as a uint8 image tensor. Folder and CSV datasets are
sorted by id, so the order files are listed in never changes the cache.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurecache.cache import SPLITS, DataSource, samples_digest
from featurecache.cache._builtins import BUILTINS
from featurecache.cache._identity import check_content
from featurecache.cache._samples import STATE_LIVE, SampleColumns, SampleTable, SplitSpec
from featurecache.cache._source import ARRAYS
from featurecache.core._spec import parse_random_split
from featurecache.core._validation import AdviceError, ParameterError
from featurecache.data import (
    IMAGE_EXTENSIONS,
    SKIPPED_KIND_ONE,
    SKIPPED_KINDS,
    SPLIT_NAMES,
    SampleBytes,
    Source,
    is_image_name,
    is_url,
    object_files,
    read_layout,
    read_object,
    resolve_url,
    scan_folder,
    source_for,
)
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest

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

#: What a split value may be, as messages say it.
_SPLIT_CHOICES = (
    f"one of {', '.join(SPLITS)} or empty "
    f"(also {', '.join(n for n in SPLIT_NAMES if n not in SPLITS)}, in any case)"
)


@dataclass(frozen=True, eq=False)
class Dataset(SampleColumns):
    """A labelled image dataset: its sample table and a way to load each sample.

    ``samples`` (:class:`featurecache.cache.SampleTable`) holds the ids, labels, splits,
    class names, the source (a :class:`featurecache.cache.DataSource` string) and how the
    splits were made; they read as attributes of the dataset too. Exactly one of ``paths``
    (absolute file paths), ``arrays`` (uint8 images, shape ``(n_samples, H, W)`` or
    ``(n_samples, H, W, C)``) and ``members`` (encoded images inside shard files, with their
    content digests: :class:`featurecache.data.SampleBytes`) is set.
    """

    samples: SampleTable
    paths: np.ndarray | None = None
    arrays: np.ndarray | None = field(default=None, repr=False)
    skipped: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    #: In a cache's row order (:meth:`aligned_to`): a sample with a stale row has two rows.
    aligned: bool = field(default=False, repr=False)
    members: SampleBytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.aligned and len(set(self.ids.tolist())) != len(self.ids):
            raise InvalidArgumentError(f"sample ids of {self.source} must be unique.")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def split_spec(self) -> SplitSpec:
        """How the splits were made (kept by the cache: see :class:`SplitSpec`)."""
        return self.samples.split

    @property
    def digests(self) -> np.ndarray | None:
        """``(n_samples, 16)`` content digests each file must still have when it is decoded
        (set by :meth:`aligned_to` from the cache's table); ``None``: not checked."""
        return self.samples.digests

    @property
    def samples_digest(self) -> str:
        """SHA-256 over ids, labels and splits (the cache records it)."""
        return samples_digest(self.ids, self.labels, self.splits)

    def with_samples(self, **changes) -> Dataset:
        """This dataset with these columns of its sample table replaced (``splits``, ``split``...)."""
        return dataclasses.replace(self, samples=dataclasses.replace(self.samples, **changes))

    def summary(self) -> str:
        """One line: classes, images per split, and what the scan passed over by kind."""
        per_split = ", ".join(f"{name or '(no split)'} {int(np.sum(self.splits == name))}"
                              for name in self.samples.ordered_splits())  # fmt: skip
        skipped = ", ".join(
            f"{len(entries)} {(SKIPPED_KIND_ONE if len(entries) == 1 else SKIPPED_KINDS)[kind]}"
            for kind, entries in self.skipped.items()
            if entries
        )
        return (
            f"{len(self.class_names)} classes, {len(self)} images ({per_split}); "
            f"skipped: {skipped or 'nothing'}"
        )

    def aligned_to(self, table: SampleTable) -> Dataset:
        """This dataset in the row order of a cache's sample table.

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
        aligned = SampleTable(
            ids=np.asarray(table.ids, dtype=object),
            labels=np.asarray(table.labels, dtype=np.int64),
            splits=np.asarray(table.splits, dtype=object),
            class_names=tuple(table.class_names),
            source=self.source,
            digests=table.digests,
            split=self.split_spec,
        )
        return Dataset(
            aligned, paths=paths, arrays=arrays, skipped=self.skipped, aligned=True, members=members
        )

    def subset(self, rows: np.ndarray, note: str) -> Dataset:
        """The samples ``rows`` (ascending indices), ``note`` saying which (``first 100 per
        split``) after a built-in's name in the source."""
        try:
            source = str(DataSource.parse(self.source).with_note(note))
        except InvalidArgumentError:  # a source that takes no note, or a caller's own name
            source = self.source
        table = SampleTable(
            ids=self.ids[rows], labels=self.labels[rows], splits=self.splits[rows],
            class_names=self.class_names, source=source, split=self.split_spec,
        )  # fmt: skip
        return Dataset(
            table,
            paths=None if self.paths is None else self.paths[rows],
            arrays=None if self.arrays is None else self.arrays[rows],
            members=None if self.members is None else self.members.take(rows),
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

            return load_image_bytes(self.read_member(index))
        return load_image(self.paths[index], expected=self.expected_digest(index))

    def read_member(self, index: int, data: bytes | None = None) -> bytes:
        """The encoded image of sample ``index`` of a dataset of ``members`` (``data``: its
        bytes when they were read with its batch), refused unless they have the content
        digest the run planned (:meth:`expected_digest`).

        Raises
        ------
        InvalidArgumentError
            When it cannot be read, or its bytes changed since the run compared them.
        """
        data = self.members.read(index) if data is None else data
        return check_content(data, self.expected_digest(index), self.members.what)

    def expected_digest(self, index: int) -> bytes | None:
        """The content digest sample ``index`` (a file or a member) had when the run compared
        it with the cache; ``None``: not checked (in-memory arrays, or never hashed)."""
        if self.digests is None or self.arrays is not None or not self.digests[index].any():
            return None
        return self.digests[index].tobytes()

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: Sequence[int],
        splits: Sequence[str],
        class_names: Sequence[str],
        source: str = ARRAYS,
    ) -> Dataset:
        """Build a dataset from uint8 images held in memory (no decoding)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise InvalidArgumentError(
                "images must be a uint8 array of shape (n_samples, H, W) or (n_samples, H, W, C); "
                f"got dtype {images.dtype} and shape {images.shape}."
            )
        table = SampleTable(
            ids=_row_ids(len(images)),
            labels=np.asarray(labels, dtype=np.int64),
            splits=np.asarray(splits, dtype=object),
            class_names=tuple(class_names),
            source=source,
        )
        return cls(table, arrays=images)


def list_builtins() -> list[str]:
    return sorted(BUILTINS)


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
        ``.parquet``, local or an fsspec URL; a :class:`featurecache.data.WebDataset` or
        :class:`featurecache.data.ParquetImages` for labels, classes and splits other
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
    if is_url(text):  # on object storage: a CSV manifest, or a folder below a prefix
        return _load_csv(text) if text.lower().endswith(".csv") else _load_objects(text)
    if text.startswith("builtin:"):
        name = text.split(":", 1)[1]
        if name not in BUILTINS:
            raise UnknownNameError(
                f"unknown built-in dataset {text!r}; expected one of "
                f"{', '.join('builtin:' + b for b in list_builtins())}." + suggest(name, BUILTINS)
            )
        return _load_builtin(name)
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
            f"{scanned.source}: split must be {_SPLIT_CHOICES}; got {', '.join(map(repr, bad[:5]))}."
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
    table = SampleTable(
        ids=scanned.ids,
        labels=scanned.labels,
        splits=np.array([SPLIT_NAMES[v.lower()] if v else "" for v in values], dtype=object),
        class_names=scanned.class_names,
        source=scanned.source,
    )
    return Dataset(table, skipped=scanned.skipped, members=scanned.members)


def _load_objects(url: str) -> Dataset:
    """A folder of class sub-folders below a URL prefix, read as a local folder is."""
    scanned = scan_folder(url)
    _check_classes(scanned.class_names, f"folder {scanned.source[len('folder:') :]!r}")
    table = SampleTable(
        scanned.ids, scanned.labels, scanned.splits, scanned.class_names, source=scanned.source
    )
    return Dataset(table, skipped=scanned.skipped, members=scanned.members)


def is_image(path: Path) -> bool:
    """The one rule for which files are images, for extract and predict alike."""
    return is_image_name(path.name)


def list_images(folder: Path) -> list[Path]:
    """Every image below ``folder``, sorted, outside hidden folders."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and is_image(p) and not _hidden(p.relative_to(folder))
    )


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _load_folder(root: Path) -> Dataset:
    """A local folder of class sub-folders, read by the folder rules
    (:func:`featurecache.data.read_layout`) applied to its listing."""
    files, folders = _listing(root)
    layout = read_layout(str(root), files, folders)
    class_names = tuple(sorted({name for _, name, _ in layout.rows}))
    _check_classes(class_names, f"folder {str(root)!r}")
    index = {name: k for k, name in enumerate(class_names)}
    table = SampleTable(
        ids=np.array([sample_id for sample_id, _, _ in layout.rows], dtype=object),
        labels=np.array([index[name] for _, name, _ in layout.rows], dtype=np.int64),
        splits=np.array([split for _, _, split in layout.rows], dtype=object),
        class_names=class_names,
        source=str(DataSource("folder", str(root))),
    )
    base = os.path.join(root, "")
    return Dataset(
        table,
        paths=np.array([base + sample_id for sample_id, _, _ in layout.rows], dtype=object),
        skipped=layout.skipped,
    )


def _listing(root: Path) -> tuple[list[str], list[str]]:
    """``(files, folders)`` below ``root``, relative and ``/``-separated, as
    :func:`featurecache.data.read_layout` reads them.

    Hidden folders are listed, not entered (the rules name only them). Where a split or class
    folder may be (in the root, or in a split folder) a link to a folder is followed and an
    unreadable folder raises; deeper down a link to a folder is listed, not entered, and an
    unreadable folder lists as empty. A broken link is a file (it fails when decoded).
    """
    files: list[str] = []
    folders: list[str] = []
    pending = [("", os.fspath(root))]
    while pending:
        prefix, folder = pending.pop()
        parent = prefix.rstrip("/")
        top = not prefix or (SPLIT_NAMES.get(parent.lower()) is not None and "/" not in parent)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            if top:
                raise
            continue
        for entry in entries:
            name = prefix + entry.name
            if not entry.is_dir():
                files.append(name)
                continue
            folders.append(name)
            if not entry.name.startswith(".") and (top or not entry.is_symlink()):
                pending.append((name + "/", entry.path))
    return files, folders


def read_table(csv_path: Path | str, what: str = "CSV manifest"):
    """A CSV file as a table of str, refusing rows with more fields than the header.

    pandas would read such rows with their first fields as the index (every path shifted
    by a column), so they are an error here. ``what`` names the file in messages.
    """
    import warnings

    import pandas as pd

    source = io.BytesIO(read_object(csv_path)) if is_url(str(csv_path)) else csv_path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(source, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning:
        reason = "its rows have more fields than its header"
    except (ValueError, OSError, pd.errors.ParserError) as error:
        reason = " ".join(str(error).split())
    raise InvalidArgumentError(
        f"cannot read {what} {str(csv_path)!r}: {reason}; write one header line and the "
        "same number of comma-separated fields on every row (quote fields holding commas)."
    )


def _load_csv(csv_path: Path | str) -> Dataset:
    """A CSV manifest, local or at a URL: its relative paths resolve against its folder."""
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
                f"CSV manifest {str(csv_path)!r}: split must be {_SPLIT_CHOICES}; "
                f"got {', '.join(map(repr, bad))}."
            )
        table = table.assign(split=[known[v.lower()] if v else "" for v in values])
        _check_labels_outside_test(table, csv_path)
    table = table.assign(
        id=table["path"].map(lambda p: Path(p).as_posix()),
        file=table["path"].map(
            (lambda p: resolve_url(csv_path, p))
            if is_url(str(csv_path))
            else (lambda p: os.path.realpath(csv_path.parent / p))
        ),
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
    table = SampleTable(
        ids, labels, splits, class_names, source=str(DataSource("csv", str(csv_path)))
    )
    if is_url(str(csv_path)):  # one object per row
        return Dataset(table, members=object_files(paths.tolist()))
    return Dataset(table, paths=paths)


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
    default = DataSource.parse(dataset.source).default_split
    if split is None:
        split = None if has_own else default
        if split is None:
            kind = "given" if has_own else "none"
            return dataset.with_samples(split=SplitSpec(kind))
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
    return dataset.with_samples(splits=splits, split=spec)


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
    return dataset.with_samples(splits=splits, split=table.split)


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


def _load_builtin(name: str) -> Dataset:
    """``builtin:NAME``: its arrays, sample ``i`` named ``str(i)``."""
    found = BUILTINS[name].read(None)
    table = SampleTable(
        ids=_row_ids(len(found.labels)),
        labels=found.labels,
        splits=found.splits,
        class_names=found.class_names,
        source=str(DataSource("builtin", name, found.notes)),
    )
    return Dataset(table, arrays=found.images)


def _row_ids(n: int) -> np.ndarray:
    """Ids ``"0"`` to ``str(n - 1)``: the samples of arrays, by row."""
    return np.array([str(i) for i in range(n)], dtype=object)
