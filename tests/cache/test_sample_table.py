"""One sample-table type: the cache stores it, the reader exposes it, a dataset is built on it;
and the split order is defined once."""

from __future__ import annotations

import numpy as np
import pytest
from _synthetic import write_cache
from PIL import Image

from featurecache import load_dataset
from featurecache.cache import SPLITS, SampleTable, open_cache
from featurecache.exceptions import InvalidArgumentError
from pipelines.rows._rows import SPLIT_ORDER, row_status


def _folder(root, splits=("test", "train", "val")):
    for split in splits:
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(root / split / cls / "x.png")
    return root


def test_the_reader_exposes_its_sample_table_and_its_columns_as_attributes(tmp_path):
    cache = open_cache(write_cache(tmp_path / "c.h5", n_classes=2))
    table = cache.samples
    assert isinstance(table, SampleTable)
    assert cache.ids is table.ids and cache.labels is table.labels and cache.splits is table.splits
    assert cache.class_names == list(table.class_names) == ["class_0", "class_1"]
    assert cache.source == table.source == "synthetic"
    assert cache.state is table.state_codes and cache.removed is table.removed_mask
    assert not cache.removed.any() and cache.n_samples == len(table) == 60


def test_a_dataset_is_its_sample_table_plus_its_images(tmp_path):
    dataset = load_dataset(_folder(tmp_path / "data"))
    assert isinstance(dataset.samples, SampleTable)
    assert dataset.ids is dataset.samples.ids and dataset.source == dataset.samples.source
    assert dataset.split_spec is dataset.samples.split and len(dataset) == len(dataset.samples) == 6
    moved = dataset.with_samples(splits=np.full(len(dataset), "", dtype=object))
    assert (
        set(moved.splits) == {""}
        and list(dataset.splits) == ["test"] * 2 + ["train"] * 2 + ["val"] * 2
    )
    assert moved.paths is dataset.paths
    table = SampleTable.from_dataset(dataset)
    assert table.ids.tolist() == dataset.ids.tolist() and table.digests.any(axis=1).all()


def test_ids_must_be_unique_and_columns_aligned():
    with pytest.raises(InvalidArgumentError, match=r"^ids, labels and splits must have the same "):
        SampleTable(np.array(["a"]), np.array([0, 1]), np.array(["", ""]), ("x", "y"))
    with pytest.raises(InvalidArgumentError, match=r"^sample ids of arrays must be unique\.$"):
        from featurecache import Dataset

        table = SampleTable(np.array(["a", "a"], dtype=object), np.array([0, 1]),
                            np.array(["", ""], dtype=object), ("x", "y"))  # fmt: skip
        Dataset(table, arrays=np.zeros((2, 4, 4), np.uint8))


def test_every_listing_of_splits_follows_the_one_order(tmp_path):
    table = SampleTable(
        np.arange(6).astype(str), np.zeros(6, np.int64),
        np.array(["test", "", "holdout", "val", "train", "test"], dtype=object), ("x",),
    )  # fmt: skip
    assert table.ordered_splits() == [*SPLITS, "", "holdout"]
    assert SPLIT_ORDER == {name: rank for rank, name in enumerate(SPLITS)}

    per_split = {"test": 2, "val": 1, "train": 3}
    cache = open_cache(write_cache(tmp_path / "c.h5", n_classes=2, n_per_class=per_split))
    (entry,) = [e for e in cache.entries if e.layer == "embedding"]
    assert list(cache.counts("toy", "embedding")) == ["all", *SPLITS]
    assert list(row_status(cache, entry).by_split(cache.splits)) == list(SPLITS)
    dataset = load_dataset(_folder(tmp_path / "data"))
    assert dataset.summary().startswith("2 classes, 6 images (train 2, val 2, test 2); ")


def test_an_empty_folder_names_the_split_folders_in_their_order(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match=r"optionally under train/, val/, test/\.$"):
        load_dataset(tmp_path / "empty")
