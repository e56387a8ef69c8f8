"""Datasets: folders, CSV manifests, built-ins, and their one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featurecache.data._datasets import Dataset, load_dataset
from featurecache.exceptions import InvalidArgumentError, UnknownNameError


def _image(path, value=0, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _csv(folder, text):
    (folder / "m.csv").write_text(text)
    return folder / "m.csv"


def test_folder_of_classes_sorted_by_id_with_random_split(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(5):
            _image(tmp_path / cls / f"{i}.png", i)
    dataset = load_dataset(tmp_path, split="random:0.4", seed=0)
    assert list(dataset.ids) == sorted(dataset.ids)
    assert dataset.class_names == ("cat", "dog")
    assert dataset.ids[0] == "cat/0.png" and dataset.labels[0] == 0 and dataset.labels[-1] == 1
    assert sorted(set(dataset.splits)) == ["test", "train"]
    # stratified: each class gets 2 of 5 in test
    for label in (0, 1):
        assert np.sum((dataset.labels == label) & (dataset.splits == "test")) == 2
    assert (
        load_dataset(tmp_path, split="random:0.4", seed=0).samples_digest == dataset.samples_digest
    )


def test_folder_with_split_folders(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _image(tmp_path / split / cls / "x.png")
    dataset = load_dataset(tmp_path)
    assert list(dataset.ids) == ["test/a/x.png", "test/b/x.png", "train/a/x.png", "train/b/x.png"]
    assert list(dataset.splits) == ["test", "test", "train", "train"]


def test_csv_manifest_relative_paths_and_order_independence(tmp_path):
    for name in ("b.png", "a.png", "c.png", "d.png"):
        _image(tmp_path / "img" / name)
    rows = [
        ("img/b.png", "x", "train"),
        ("img/a.png", "y", "train"),
        ("img/c.png", "x", "test"),
        ("img/d.png", "y", "test"),
    ]
    (tmp_path / "m1.csv").write_text("path,label,split\n" + "\n".join(",".join(r) for r in rows))
    (tmp_path / "m2.csv").write_text(
        "path,label,split\n" + "\n".join(",".join(r) for r in reversed(rows))
    )
    first, second = load_dataset(tmp_path / "m1.csv"), load_dataset(tmp_path / "m2.csv")
    assert list(first.ids) == ["img/a.png", "img/b.png", "img/c.png", "img/d.png"]
    assert first.samples_digest == second.samples_digest
    assert first.paths[0] == str((tmp_path / "img" / "a.png").absolute())


def test_builtin_digits_is_seeded_80_20():
    dataset = load_dataset("builtin:digits")
    assert (
        len(dataset) == 1797
        and dataset.arrays.shape == (1797, 8, 8)
        and dataset.arrays.dtype == np.uint8
    )
    assert abs(np.mean(dataset.splits == "test") - 0.2) < 0.01
    assert dataset.load_image(0).shape == (1, 8, 8)
    assert load_dataset("builtin:digits").samples_digest == dataset.samples_digest


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    import featurecache.cache._builtins as builtins

    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(builtins, "FASHION_MNIST_DIRS", ())
    with pytest.raises(InvalidArgumentError, match=r"apt-get install -y dataset-fashion-mnist"):
        load_dataset("builtin:fashion-mnist")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", r"does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", r"holds no images"),
        (
            lambda p: _image(p / "one" / "only" / "x.png") or p / "one",
            r"at least two classes to train a classifier; found 'only'",
        ),
        (
            lambda p: _csv(p, "file,label\na.png,x\n"),
            r"must have columns path,label\[,split\]; missing path",
        ),
        (
            lambda p: _csv(p, "path,label\na.png,x\n,y\n"),
            r"1 rows without a path \(first at line 3\)",
        ),
        (
            lambda p: _csv(p, "path,label,split\na.png,x,test\nb.png,y,test\nc.png,,train\n"),
            r"labels only in the test split",
        ),
        (
            lambda p: _csv(p, "path,label,split\na.png,x,holdout\nb.png,y,train\n"),
            r"split must be one of train, val, test or empty \(also training, valid, "
            r"validation, dev, testing, in any case\); got 'holdout'",
        ),
    ],
    ids=[
        "missing",
        "empty-folder",
        "one-class",
        "csv-columns",
        "csv-paths",
        "labels-only-test",
        "bad-split",
    ],
)
def test_bad_data_is_a_one_line_error(tmp_path, make, message):
    with pytest.raises(InvalidArgumentError, match=message) as info:
        load_dataset(make(tmp_path))
    assert "\n" not in str(info.value)


def test_unknown_builtin_suggests():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'digits'"):
        load_dataset("builtin:digit")


def test_bad_random_split():
    with pytest.raises(
        InvalidArgumentError,
        match=r"The 'split' parameter of load_dataset must be 'random:FRACTION'",
    ):
        load_dataset("builtin:digits", split="random:2")


def test_from_arrays_checks_dtype():
    with pytest.raises(InvalidArgumentError, match=r"uint8 array"):
        Dataset.from_arrays(np.zeros((2, 4, 4), np.float32), [0, 1], ["train", "test"], ["a", "b"])
