"""img2dataset's parquet output as DATA: the same features per key as the folder."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _shards import write_parquet
from _workers import make_images, one_torch_thread, run_options

from featurecache import extract, load_dataset, open_cache
from featurecache.app.cli import main
from featurecache.exceptions import InvalidArgumentError
from featurecache.sources import ParquetImages, content_digest

ARGS = dict(model="resnet18", weights="none", layers=["embedding"], image_size=32, dtype="float32")


def _by_key(cache, to_key=lambda i: i):
    reader = open_cache(cache)
    X, y, ids = reader.load("resnet18", "embedding")
    splits = dict(zip(reader.ids.tolist(), reader.splits.tolist(), strict=True))
    return {
        to_key(i): (x.tobytes(), reader.class_names[label], splits[i])
        for x, label, i in zip(X, y, ids.tolist(), strict=True)
    }


def test_img2dataset_parquet_gives_the_folders_features(tmp_path):
    data = tmp_path / "data"
    make_images(data / "train", n_per_class=5)
    make_images(data / "test", n_per_class=2, seed=1)
    write_parquet(data, tmp_path / "pq")
    source = ParquetImages(str(tmp_path / "pq" / "*.parquet"), split_from="split")
    dataset = load_dataset(source)
    assert (
        dataset.summary()
        == "2 classes, 14 images (train 10, test 4); skipped: 3 samples without an image"
    )
    assert dataset.skipped["no_image"] == ("00000.parquet:failed-0", "00001.parquet:failed-1",
                                            "00002.parquet:failed-2")  # fmt: skip
    by_path = {i.rsplit(".", 1)[0]: Path(p).read_bytes() for i, p in
               zip(load_dataset(data).ids, load_dataset(data).paths, strict=True)}  # fmt: skip
    assert list(dataset.members.digests) == [content_digest(by_path[k]) for k in dataset.ids]
    with one_torch_thread():
        extract(data, tmp_path / "folder.h5", **ARGS, options=run_options(shard_size=4))
        extract(source, tmp_path / "pq.h5", **ARGS, options=run_options(shard_size=4))
        extract(
            source, tmp_path / "pq-workers.h5", **ARGS, options=run_options(shard_size=4, workers=2)
        )
    want = _by_key(tmp_path / "folder.h5", lambda i: i.rsplit(".", 1)[0])
    assert _by_key(tmp_path / "pq.h5") == want
    assert _by_key(tmp_path / "pq-workers.h5") == want


def test_a_missing_column_fails_in_one_line_naming_the_columns_found(tmp_path, capsys):
    make_images(tmp_path / "data" / "train", n_per_class=2)
    write_parquet(tmp_path / "data", tmp_path / "pq")
    code = main(["extract", str(tmp_path / "pq" / "00000.parquet"), "--cache",
                 str(tmp_path / "c.h5"), "--label-field", "class"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"featurecache: error: DATA '{tmp_path / 'pq' / '00000.parquet'}': '00000.parquet' has "
        "no column 'class' (it has key, jpg, status, url, label, split); name the column to "
        "read with --label-field COLUMN.\n"
    )


def test_a_key_on_two_rows_is_refused(tmp_path):
    make_images(tmp_path / "data" / "train", n_per_class=2)
    (path,) = write_parquet(tmp_path / "data", tmp_path / "pq")
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table]), path)
    with pytest.raises(
        InvalidArgumentError, match=r"the key 'train/ant/00' is on more than one row"
    ):
        load_dataset(str(path))
