"""Write one folder's images as webdataset tar shards and as img2dataset parquet files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from featurecache import load_dataset


def write_shards(data: Path, out: Path, per_shard: int = 4, label: str = "cls") -> list[Path]:
    """The folder's images as shards ``{split}-{k}.tar``: key ``class/name``, the PNG bytes,
    and the label as ``cls`` (the class index) or in ``json`` (class name and split)."""
    dataset = load_dataset(data)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split in ("train", "test"):
        rows = [i for i in range(len(dataset)) if dataset.splits[i] == split]
        for k in range(0, len(rows), per_shard):
            path = out / f"{split}-{k // per_shard}.tar"
            with wds.TarWriter(str(path)) as sink:
                for i in rows[k : k + per_shard]:
                    sample = {
                        "__key__": key_of(dataset.ids[i]),
                        "png": Path(dataset.paths[i]).read_bytes(),
                    }
                    name = dataset.class_names[dataset.labels[i]]
                    if label == "cls":
                        sample["cls"] = int(dataset.labels[i])
                    else:
                        sample["json"] = {"label": name, "split": split}
                    sink.write(sample)
            written.append(path)
    return written


def key_of(folder_id: str) -> str:
    """``train/ant/03.png`` -> ``train/ant/03``: the same sample's webdataset key."""
    return folder_id.rsplit(".", 1)[0]


def write_parquet(data: Path, out: Path, per_file: int = 6) -> list[Path]:
    """The folder's images as img2dataset writes them: ``key``, ``jpg`` (here PNG bytes),
    ``status``, ``url``, plus a ``label`` and a ``split`` column; one failed download per
    file (null image); row groups of 4 rows."""
    dataset = load_dataset(data)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, start in enumerate(range(0, len(dataset), per_file)):
        rows = range(start, min(start + per_file, len(dataset)))
        table = pa.table({
            "key": [dataset.ids[i].rsplit(".", 1)[0] for i in rows] + [f"failed-{n}"],
            "jpg": [Path(dataset.paths[i]).read_bytes() for i in rows] + [None],
            "status": ["success"] * len(rows) + ["failed_to_download"],
            "url": [f"http://127.0.0.1:9/{i}.png" for i in rows] + ["http://127.0.0.1:9/x"],
            "label": [dataset.class_names[dataset.labels[i]] for i in rows] + [None],
            "split": [dataset.splits[i] for i in rows] + [None],
        })  # fmt: skip
        path = out / f"{n:05d}.parquet"
        pq.write_table(table, path, row_group_size=4)
        written.append(path)
    return written
