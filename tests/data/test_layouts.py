"""Folder layouts read right: split folders in every spelling, mixed layouts refused, skips told."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featurecache.core._validation import ParameterError
from featurecache.data._datasets import SPLIT_NAMES, list_images, load_dataset
from featurecache.exceptions import InvalidArgumentError


def _image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def _classes(folder, names=("cat", "dog"), n=3):
    for name in names:
        for i in range(n):
            _image(folder / name / f"{i}.png", i)


SPELLINGS = [
    (spelled, split)
    for name, split in SPLIT_NAMES.items()
    for spelled in (name, name.upper(), name.capitalize())
]


@pytest.mark.parametrize(("spelled", "split"), SPELLINGS, ids=[s for s, _ in SPELLINGS])
def test_every_split_spelling_is_a_split_not_a_class(tmp_path, spelled, split):
    other = "Test" if split != "test" else "train"
    _classes(tmp_path / spelled)
    _classes(tmp_path / other, n=2)
    data = load_dataset(tmp_path)
    assert data.class_names == ("cat", "dog")
    assert sorted(set(data.splits.tolist())) == sorted({split, SPLIT_NAMES[other.lower()]})
    assert int(np.sum(data.splits == split)) == 6


def test_train_and_test_folders_in_title_case_are_splits(tmp_path):
    _classes(tmp_path / "Train")
    _classes(tmp_path / "Test", n=1)
    data = load_dataset(tmp_path)
    assert data.class_names == ("cat", "dog")
    assert data.splits.tolist().count("train") == 6 and data.splits.tolist().count("test") == 2


def test_split_folders_beside_class_folders_are_refused_naming_both(tmp_path):
    _classes(tmp_path / "train")
    _classes(tmp_path, names=("bird",))
    with pytest.raises(InvalidArgumentError) as info:
        load_dataset(tmp_path)
    assert str(info.value) == (
        f"DATA folder {str(tmp_path)!r} mixes split folders (train/) with class folders (bird/) "
        "at the same level; put every class folder inside a split folder, or rename the "
        "folders that are classes."
    )


def test_two_folders_for_one_split_are_refused(tmp_path):
    _classes(tmp_path / "val")
    _classes(tmp_path / "Validation")
    _classes(tmp_path / "train")
    with pytest.raises(
        InvalidArgumentError, match=r"two folders for the val split \(Validation/ and val/\)"
    ):
        load_dataset(tmp_path)


def test_the_summary_counts_classes_splits_and_each_kind_of_skipped_entry(tmp_path):
    _classes(tmp_path / "train", n=4)
    _classes(tmp_path / "test", n=1)
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / "train" / "dog" / "notes.txt").write_text("x")
    (tmp_path / "train" / "empty").mkdir()
    _image(tmp_path / "stray.png")
    _image(tmp_path / "train" / "stray.png")
    data = load_dataset(tmp_path)
    assert data.summary() == (
        "2 classes, 10 images (train 8, test 2); skipped: 2 hidden files or folders, "
        "1 file that is not an image, 1 class folder without images, "
        "2 images outside a class folder"
    )
    assert data.skipped["hidden"] == (".git", "train/cat/.DS_Store")
    assert data.skipped["wrong_level"] == ("stray.png", "train/stray.png")
    assert data.skipped["empty_class"] == ("train/empty",)
    assert data.skipped["not_image"] == ("train/dog/notes.txt",)


def test_a_clean_folder_skips_nothing(tmp_path):
    _classes(tmp_path)
    assert load_dataset(tmp_path, split="random:0.5").summary() == (
        "2 classes, 6 images (train 3, test 3); skipped: nothing"
    )


def test_a_random_split_on_data_with_splits_is_refused_unless_resplit(tmp_path):
    _classes(tmp_path / "train", n=4)
    _classes(tmp_path / "test", n=2)
    with pytest.raises(ParameterError) as info:
        load_dataset(tmp_path, split="random:0.5")
    assert str(info.value) == (
        "The 'split' parameter of load_dataset must be left out for data that has its own "
        "splits. Got 'random:0.5' instead. Leave it out, or pass resplit=True to replace the "
        "data's splits."
    )
    data = load_dataset(tmp_path, split="random:0.5", resplit=True)
    assert data.splits.tolist().count("test") == 6


def test_a_number_for_split_says_how_to_write_it(tmp_path):
    _classes(tmp_path)
    with pytest.raises(ParameterError, match=r"Got 0.2 instead. Write 'random:0.2'.$"):
        load_dataset(tmp_path, split=0.2)


def test_manifest_split_values_take_the_same_spellings(tmp_path):
    for name in ("a", "b", "c", "d"):
        _image(tmp_path / f"{name}.png")
    (tmp_path / "m.csv").write_text(
        "path,label,split\na.png,x,Training\nb.png,y,TRAIN\nc.png,x,Dev\nd.png,y,testing\n"
    )
    assert load_dataset(tmp_path / "m.csv").splits.tolist() == ["train", "train", "val", "test"]


def test_the_image_rule_skips_hidden_files_and_folders(tmp_path):
    _classes(tmp_path, n=2)
    _image(tmp_path / "cat" / ".hidden.png")
    _image(tmp_path / ".cache" / "thumb.png")
    (tmp_path / "cat" / "readme.md").write_text("x")
    listed = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert listed == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert load_dataset(tmp_path, split="none").ids.tolist() == listed


def test_predict_lists_the_images_extract_lists(tmp_path):
    from featurecache.app._predict import _image_list

    _classes(tmp_path, n=2)
    _image(tmp_path / "cat" / ".hidden.png")
    _image(tmp_path / ".thumbnails" / "t.png")
    (tmp_path / "dog" / "notes.txt").write_text("x")
    predicted = _image_list(tmp_path, ("cat", "dog")).ids.tolist()
    assert predicted == load_dataset(tmp_path, split="none").ids.tolist()
    assert predicted == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]


def test_links_are_followed_where_split_and_class_folders_are_and_listed_below(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _classes(elsewhere, names=("dog", "deep"), n=1)
    root = tmp_path / "data"
    _classes(root / "train", names=("cat",), n=1)
    (root / "train" / "dog").symlink_to(elsewhere / "dog")  # a class folder: followed
    (root / "train" / "cat" / "more").symlink_to(elsewhere / "deep")  # inside a class: not
    (root / "train" / "cat" / "gone.png").symlink_to(tmp_path / "missing.png")  # a sample
    (root / "test").symlink_to(root / "train")  # a split folder: followed
    dataset = load_dataset(root)
    assert dataset.ids.tolist() == [
        "test/cat/0.png", "test/cat/gone.png", "test/dog/0.png",
        "train/cat/0.png", "train/cat/gone.png", "train/dog/0.png",
    ]  # fmt: skip
    assert dataset.paths.tolist() == [str(root.resolve() / i) for i in dataset.ids]
    assert dataset.summary() == "2 classes, 6 images (train 3, test 3); skipped: nothing"
