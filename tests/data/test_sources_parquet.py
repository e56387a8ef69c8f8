"""img2dataset's parquet output as DATA: the same features per key as the folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _shards import write_parquet
from _workers import make_images, one_torch_thread, run_options

from featurecache import extract, load_dataset, open_cache
from featurecache.app.cli import main
from featurecache.data import ParquetImages, content_digest
from featurecache.exceptions import InvalidArgumentError
from featurecache.models._preprocess import load_image_bytes

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


def test_a_cell_rewritten_after_the_scan_fails_with_its_reason_when_decoded(tmp_path):
    make_images(tmp_path / "data" / "train", n_per_class=2)
    (path,) = write_parquet(tmp_path / "data", tmp_path / "pq")
    scanned = load_dataset(str(path))
    digests = np.stack([np.frombuffer(d, np.uint8) for d in scanned.members.digests])
    planned = scanned.with_samples(digests=digests)  # as the sample table plans them
    table = pq.read_table(path)
    cells = table.column("jpg").to_pylist()
    kept = cells[1]
    cells[0] = cells[2]  # the first image is now another one
    table = table.set_column(table.schema.get_field_index("jpg"), "jpg", pa.array(cells))
    pq.write_table(table, path, row_group_size=4)
    row = scanned.ids.tolist().index(table.column("key")[0].as_py())
    with pytest.raises(
        InvalidArgumentError,
        match=r"^the shard member changed during extraction; re-run extract$",
    ):
        planned.load_image(row)
    other = scanned.ids.tolist().index(table.column("key")[1].as_py())
    assert torch.equal(planned.load_image(other), load_image_bytes(kept))
