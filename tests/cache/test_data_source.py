"""The source string of a sample table: written, parsed back, and a sample's image read again.

The oracle of the reads is the report's loader as it was before :class:`DataSource` (the
file ``FOLDER/ID`` or scikit-learn's digits, through ``pipelines.reporting._figures.thumbnail``):
the thumbnails must be the same pixels.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from _synthetic import write_folder_cache
from PIL import Image

from featurecache import load_dataset
from featurecache.cache import SOURCE_KINDS, DataSource, open_cache, read_sample_image
from featurecache.data import ParquetImages, WebDataset
from featurecache.exceptions import InvalidArgumentError, UnknownNameError
from pipelines.reporting._figures import thumbnail

#: One source of every kind, and its string.
EXAMPLES = {
    "folder": (DataSource("folder", "/data/my images (v2)"), "folder:/data/my images (v2)"),
    "csv": (DataSource("csv", "/data/m.csv"), "csv:/data/m.csv"),
    "builtin": (
        DataSource("builtin", "fashion-mnist", ("/usr/share/x", "first 5 (of 7) per split")),
        "builtin:fashion-mnist (/usr/share/x) (first 5 (of 7) per split)",
    ),
    "webdataset": (
        DataSource("webdataset", "s3://bucket/{000..009}.tar"),
        "webdataset:s3://bucket/{000..009}.tar",
    ),
    "parquet": (DataSource("parquet", "/data/*.parquet"), "parquet:/data/*.parquet"),
    "import": (DataSource("import", "/exports/run 1"), "import:/exports/run 1"),
    "predict": (DataSource("predict", "photos"), "predict:photos"),
    "arrays": (DataSource("arrays"), "arrays"),
}


def test_every_kind_has_a_round_trip_example():
    assert set(EXAMPLES) == set(SOURCE_KINDS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_a_source_string_parses_back_to_its_source(kind):
    source, text = EXAMPLES[kind]
    assert str(source) == text
    assert DataSource.parse(text) == source
    assert str(DataSource.parse(text)) == text


def test_a_note_is_added_after_the_notes_a_builtin_has():
    source = DataSource.parse("builtin:fashion-mnist (/usr/share/x)").with_note("first 9 per split")
    assert str(source) == "builtin:fashion-mnist (/usr/share/x) (first 9 per split)"
    assert DataSource.parse(str(source)).notes == ("/usr/share/x", "first 9 per split")


def test_an_unknown_source_string_is_refused_with_the_kinds():
    expected = (
        "unknown data source 'synthetic'; expected KIND:LOCATION with KIND one of builtin, "
        "csv, folder, import, parquet, predict, webdataset, or 'arrays'."
    )
    with pytest.raises(UnknownNameError, match=f"^{re.escape(expected)}$"):
        DataSource.parse("synthetic")
    with pytest.raises(UnknownNameError, match=r"'foldr:/x'; .* Did you mean 'folder'\?$"):
        DataSource.parse("foldr:/x")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: DataSource("folder"),
            r"^a data source of kind 'folder' needs a location \(KIND:LOCATION\); got none\.$",
        ),
        (
            lambda: DataSource("arrays", "x"),
            r"^a data source of kind 'arrays' has no location; got 'x'\.$",
        ),
        (
            lambda: DataSource("csv", "/m.csv", ("a",)),
            r"^a data source of kind 'csv' takes no notes \(only a built-in does\); got \('a',\)\.$",
        ),
        (
            lambda: DataSource("builtin", "my digits"),
            r"^a data source of kind 'builtin' has a name without spaces or parentheses; got 'my digits'\.$",
        ),
        (
            lambda: DataSource("builtin", "digits", ("a (b",)),
            r"^a note of a source must have balanced parentheses; got 'a \(b'\.$",
        ),
        (
            lambda: DataSource.parse("builtin:digits x"),
            r"^data source 'builtin:digits x': after the name come notes in parentheses",
        ),
    ],
    ids=[
        "no-location",
        "arrays-location",
        "notes-on-csv",
        "spaced-name",
        "unbalanced",
        "not-a-note",
    ],
)
def test_a_malformed_source_is_refused(make, message):
    with pytest.raises(InvalidArgumentError, match=message):
        make()


def _image(path: Path, mode: str, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(value).integers(0, 255, (17, 23, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels)
    if mode == "P":
        picture = picture.quantize(8)
    elif mode != "RGB":
        picture = picture.convert(mode)
    picture.save(path)


def _folder(root: Path) -> Path:
    for i, mode in enumerate(("RGB", "L", "P", "RGBA")):
        _image(root / ("a" if i % 2 else "b") / f"{i}.png", mode, i)
    return root


def test_the_sources_the_loaders_write_parse_back(tmp_path):
    folder = _folder(tmp_path / "images")
    (tmp_path / "m.csv").write_text("path,label\nimages/a/1.png,x\nimages/b/0.png,y\n")
    assert DataSource.parse(load_dataset(folder).source) == DataSource("folder", str(folder))
    assert DataSource.parse(load_dataset(tmp_path / "m.csv").source) == DataSource(
        "csv", str(tmp_path / "m.csv")
    )
    digits = load_dataset("builtin:digits")
    assert DataSource.parse(digits.source) == DataSource("builtin", "digits")
    assert DataSource.parse(digits.subset(np.arange(3), "first 3").source).notes == ("first 3",)
    for source in (WebDataset(str(tmp_path / "{0..3}.tar")), ParquetImages("x/*.parquet")):
        assert DataSource.parse(source.name) == DataSource(source.kind, source.data)


def test_a_folder_cache_reads_the_thumbnails_the_report_showed(tmp_path):
    path = write_folder_cache(tmp_path)
    cache = open_cache(path)
    assert DataSource.parse(cache.source).kind == "folder"
    for sample_id in cache.ids[:6].tolist():
        old = thumbnail(Path(cache.source[len("folder:") :]) / sample_id)  # the report's loader
        np.testing.assert_array_equal(thumbnail(read_sample_image(cache.source, sample_id)), old)


def test_a_folder_reads_every_mode_as_the_report_showed_it(tmp_path):
    folder = _folder(tmp_path / "images")
    source = load_dataset(folder).source
    for path in sorted(folder.rglob("*.png")):
        sample_id = path.relative_to(folder).as_posix()
        image = read_sample_image(source, sample_id)
        with Image.open(path) as opened:
            np.testing.assert_array_equal(image, np.asarray(opened.convert("RGB")))
        np.testing.assert_array_equal(thumbnail(image), thumbnail(path))


def test_builtin_digits_reads_the_rows_extract_computed(tmp_path):
    from sklearn.datasets import load_digits

    dataset = load_dataset("builtin:digits")
    report_digits = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    limited = dataset.subset(np.arange(0, 40, 3), "first 14 per split")  # the demo's source
    for source in (dataset.source, limited.source):
        for row in (0, 7, 1796):
            image = read_sample_image(source, str(row))
            np.testing.assert_array_equal(image, dataset.arrays[row])
            np.testing.assert_array_equal(thumbnail(image), thumbnail(report_digits[row]))
    assert read_sample_image(dataset.source, "1797") is None
    assert read_sample_image(dataset.source, "-1") is None


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_its_rows_from_the_folder_its_source_notes(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    dataset = load_dataset("builtin:fashion-mnist")
    assert dataset.source == f"builtin:fashion-mnist ({tmp_path})"
    monkeypatch.delenv("FASHION_MNIST_DIR")  # the source's note is enough
    for row in range(10):
        np.testing.assert_array_equal(
            read_sample_image(dataset.source, str(row)), dataset.arrays[row]
        )


def test_a_manifest_reads_its_relative_paths_beside_it_from_any_folder(tmp_path, monkeypatch):
    _folder(tmp_path / "data" / "images")
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text("path,label\nimages/a/1.png,x\nimages/b/0.png,y\n")
    source = load_dataset(manifest).source
    monkeypatch.chdir(tmp_path)
    for sample_id in ("images/a/1.png", "images/b/0.png"):
        with Image.open(tmp_path / "data" / sample_id) as opened:
            expected = np.asarray(opened.convert("RGB"))
        np.testing.assert_array_equal(read_sample_image(source, sample_id), expected)


def test_a_folder_behind_a_url_is_read_through_fsspec(tmp_path):
    import fsspec

    _image(tmp_path / "x.png", "RGB", 3)
    memory = fsspec.filesystem("memory")
    memory.pipe("/featurecache-test/a/x.png", (tmp_path / "x.png").read_bytes())
    try:
        image = read_sample_image("folder:memory://featurecache-test", "a/x.png")
    finally:
        memory.rm("/featurecache-test", recursive=True)
    with Image.open(tmp_path / "x.png") as opened:
        np.testing.assert_array_equal(image, np.asarray(opened))


def test_what_cannot_be_read_again_is_none_and_an_id_that_is_a_file_is_read(tmp_path):
    _image(tmp_path / "x.png", "RGB", 5)
    assert read_sample_image(f"folder:{tmp_path}", "missing.png") is None
    assert read_sample_image(f"webdataset:{tmp_path}/*.tar", "key") is None
    assert read_sample_image("synthetic", "s00001") is None
    with Image.open(tmp_path / "x.png") as opened:
        expected = np.asarray(opened)
    for source in ("synthetic", "", f"parquet:{tmp_path}/x.parquet"):  # the id is a path
        np.testing.assert_array_equal(read_sample_image(source, str(tmp_path / "x.png")), expected)
    with pytest.raises(
        InvalidArgumentError,
        match=r"^the images of a parquet source cannot be read again by their id; only those of "
        r"folder, csv, builtin can\.$",
    ):
        DataSource("parquet", "x.parquet").read_image("0")
