"""A folder and a CSV manifest on object storage: the same samples as on a local disk.

The objects are served by a real S3 server on 127.0.0.1 (moto's, as in
``test_sources_s3.py``); featurecache lists and reads them through fsspec and s3fs,
configured from the standard environment.
"""

from __future__ import annotations

import http.server
import itertools
import os
import threading
from pathlib import Path

import pytest
import test_sources_s3
import test_sources_webdataset
from _workers import make_images, one_torch_thread, run_options
from test_sources_s3 import _authenticate
from test_sources_webdataset import _by_key

from featurecache import extract, load_dataset, open_cache
from featurecache.app.cli import main
from featurecache.cache import content_digest
from featurecache.data import _objects, object_files, read_layout, resolve_url
from featurecache.data._objects import object_stamp
from featurecache.exceptions import InvalidArgumentError

# Fixtures shared with the tar and parquet tests: the S3 server and a client with the
# environment set; the rows each forward pass computes.
server, s3 = test_sources_s3.server, test_sources_s3.s3
rows_computed = test_sources_webdataset.rows_computed
ARGS = dict(model="resnet18", weights="none", layers=["embedding"], image_size=32, dtype="float32")
_BUCKETS = itertools.count()


def _write_photos(local: Path) -> Path:
    """Split and class folders of images (and a text file, a hidden file), with a manifest
    of the images in ``manifest.csv``."""
    make_images(local / "train", n_per_class=3)
    make_images(local / "test", n_per_class=2, seed=1)
    (local / "train" / "ant" / "notes.txt").write_text("not an image")
    (local / "train" / "bee" / ".DS_Store").write_bytes(b"\0")
    dataset = load_dataset(local)
    lines = ["path,label,split"] + [
        f"{i},{dataset.class_names[y]},{s}"
        for i, y, s in zip(dataset.ids, dataset.labels, dataset.splits, strict=True)
    ]
    (local / "manifest.csv").write_text("\n".join(lines) + "\n")
    return local


@pytest.fixture
def photos(s3, tmp_path) -> tuple[str, Path]:
    """:func:`_write_photos` on disk and the same files under ``s3://BUCKET/photos/``.
    Returns ``(URL of the folder, local folder)``."""
    local = _write_photos(tmp_path / "photos")
    bucket = f"photos-{next(_BUCKETS)}"
    s3.create_bucket(Bucket=bucket)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"photos/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/photos/", local


@pytest.fixture
def served(tmp_path):
    """:func:`_write_photos` served over HTTP on 127.0.0.1 (directory pages list folders).
    Returns ``(URL of the folder, local folder)``."""
    local = _write_photos(tmp_path / "photos")

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(local), **kwargs)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", local
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def fetched(monkeypatch) -> list:
    """The URLs of every object whose bytes are requested."""
    seen = []
    original = _objects._fetch
    monkeypatch.setattr(_objects, "_fetch", lambda urls: seen.extend(urls) or original(urls))
    return seen


def _extract(data, cache, **options):
    with one_torch_thread():
        return extract(data, cache, **ARGS, options=run_options(**options))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_folder_on_s3_gives_the_local_folders_features_labels_and_splits(
    photos, tmp_path, workers
):
    url, local = photos
    _extract(str(local), tmp_path / "local.h5")
    result = _extract(url, tmp_path / "s3.h5", workers=workers)
    want = _by_key(tmp_path / "local.h5", "embedding")
    assert len(want) == 10 and {s for *_, s in want.values()} == {"train", "test"}
    assert _by_key(tmp_path / "s3.h5", "embedding") == want
    assert result.n_ok == 10
    remote, here = load_dataset(url), load_dataset(str(local))
    assert remote.skipped == here.skipped
    assert remote.skipped["not_image"] == ("manifest.csv", "train/ant/notes.txt")
    assert remote.skipped["hidden"] == ("train/bee/.DS_Store",)
    assert open_cache(tmp_path / "s3.h5").source == f"folder:{url.rstrip('/')}"


@pytest.mark.slow
def test_a_csv_manifest_on_s3_gives_the_local_folders_features(photos, tmp_path):
    url, local = photos
    _extract(str(local), tmp_path / "local.h5")
    _extract(f"{url}manifest.csv", tmp_path / "s3.h5")
    _extract(str(local / "manifest.csv"), tmp_path / "local-csv.h5")
    want = _by_key(tmp_path / "local.h5", "embedding")
    assert (
        _by_key(tmp_path / "s3.h5", "embedding")
        == want
        == _by_key(tmp_path / "local-csv.h5", "embedding")
    )


def test_each_samples_digest_is_that_of_its_objects_bytes(photos):
    url, local = photos
    for data in (url, f"{url}manifest.csv"):
        dataset = load_dataset(data)
        rows = list(range(len(dataset)))
        want = [content_digest((local / i).read_bytes()) for i in dataset.ids]
        assert dataset.members.content_digests(rows) == want


@pytest.mark.slow
def test_an_object_added_later_computes_only_its_row_and_reads_only_it(
    photos, s3, tmp_path, rows_computed, fetched
):
    url, local = photos
    bucket = url.split("/")[2]
    _extract(str(local), tmp_path / "local.h5")  # grown the same way below: the same batches
    rows_computed.clear()
    _extract(url, tmp_path / "c.h5")
    assert len(rows_computed) == 10
    rows_computed.clear()
    fetched.clear()
    assert _extract(url, tmp_path / "c.h5").hit and fetched == [] and rows_computed == []
    make_images(tmp_path / "more" / "train", n_per_class=1, classes=("bee",), seed=7)
    new = tmp_path / "more" / "train" / "bee" / "00.png"
    s3.upload_file(str(new), bucket, "photos/train/bee/99.png")
    grown = _extract(url, tmp_path / "c.h5")
    assert grown.rows_computed == 1 and rows_computed == [10]
    assert set(fetched) == {f"{url}train/bee/99.png"}  # hashed, then decoded
    (local / "train" / "bee" / "99.png").write_bytes(new.read_bytes())
    assert _extract(str(local), tmp_path / "local.h5").rows_computed == 1
    assert _by_key(tmp_path / "c.h5", "embedding") == _by_key(tmp_path / "local.h5", "embedding")


@pytest.mark.slow
def test_an_object_rewritten_gets_a_new_row(photos, s3, tmp_path, rows_computed):
    url, local = photos
    bucket = url.split("/")[2]
    _extract(str(local), tmp_path / "local.h5")  # changed the same way below: the same batches
    _extract(url, tmp_path / "c.h5")
    rows_computed.clear()
    other = (local / "test" / "bee" / "01.png").read_bytes()
    s3.put_object(Bucket=bucket, Key="photos/train/ant/00.png", Body=other)
    result = _extract(url, tmp_path / "c.h5")
    assert result.changes == "1 changed content samples" and rows_computed == [10]
    (local / "train" / "ant" / "00.png").write_bytes(other)
    _extract(str(local), tmp_path / "local.h5")
    assert _by_key(tmp_path / "c.h5", "embedding") == _by_key(tmp_path / "local.h5", "embedding")


def test_an_object_changed_during_extraction_fails_its_row(photos, s3):
    url, _ = photos
    files = object_files([f"{url}train/ant/00.png"])
    files.content_digests([0])
    s3.put_object(Bucket=url.split("/")[2], Key="photos/train/ant/00.png", Body=b"other bytes")
    with pytest.raises(InvalidArgumentError, match=r"^the object changed during extraction; re-"):
        files.read(0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("s3://missing/photos/", "cannot read 's3://missing/photos/': the bucket 'missing' does "
         "not exist at this endpoint; check the URL and AWS_ENDPOINT_URL."),
        ("{url}nothing/", "DATA '{url}nothing/' lists no object; expected class sub-folders of "
         "images below the prefix (s3://bucket/photos/ant/1.jpg...): check the URL."),
        ("{url}missing.csv", "cannot read '{url}missing.csv': no such file or object."),
    ],
    ids=["bucket", "prefix", "manifest"],
)  # fmt: skip
def test_a_missing_bucket_prefix_or_manifest_fails_in_one_line(
    photos, tmp_path, capsys, data, message
):
    url, _ = photos
    code = main(["extract", data.format(url=url), "--cache", str(tmp_path / "c.h5")])
    assert code == 2
    assert capsys.readouterr().err == f"featurecache: error: {message.format(url=url)}\n"
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("data", ["", "manifest.csv"], ids=["folder", "manifest"])
def test_wrong_credentials_fail_in_one_line(photos, server, tmp_path, capsys, data):
    url, _ = photos
    _authenticate(server, b"0")  # from now on the server checks every request's keys
    try:
        code = main(["extract", url + data, "--cache", str(tmp_path / "c.h5")])
    finally:
        _authenticate(server, b"inf")
    assert code == 2
    assert capsys.readouterr().err == (
        f"featurecache: error: cannot read '{url + data}': access denied (The AWS Access Key Id "
        "you provided does not exist in our records.); check the credentials "
        "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE).\n"
    )
    assert not (tmp_path / "c.h5").exists()


def test_a_folder_and_a_manifest_over_https_read_the_local_samples(served):
    url, local = served
    here = load_dataset(local)
    for data in (url, f"{url}manifest.csv"):
        there = load_dataset(data)
        assert there.ids.tolist() == here.ids.tolist()
        assert there.labels.tolist() == here.labels.tolist()
        assert there.splits.tolist() == here.splits.tolist()
        digests = there.members.content_digests(range(len(there)))
        assert digests == [content_digest((local / i).read_bytes()) for i in there.ids]
    assert load_dataset(url).skipped == here.skipped
    # A directory page gives no size: hashed every run. A HEAD request gives size and time.
    assert (load_dataset(url).members.stats() == -1).all()
    stat = os.stat(local / here.ids[0])
    size, mtime, *_ = load_dataset(f"{url}manifest.csv").members.stats()[0].tolist()
    assert (size, mtime) == (stat.st_size, stat.st_mtime_ns // 10**9 * 10**9)


def test_the_folder_rules_on_a_listing_match_a_local_folder_scan(tmp_path):
    root = tmp_path / "data"
    make_images(root / "Train", n_per_class=2)
    make_images(root / "valid", n_per_class=1, classes=("ant", "bee", "cow"))
    (root / "Train" / "ant" / "deep" / ".cache").mkdir(parents=True)
    (root / "Train" / "ant" / "deep" / "x.jpg").write_bytes(b"")
    (root / "Train" / "bee" / ".hidden" / "y.png").parent.mkdir()
    (root / "Train" / "bee" / ".hidden" / "y.png").write_bytes(b"")
    (root / "Train" / "cow" / "readme.md").parent.mkdir()
    (root / "Train" / "cow" / "readme.md").write_text("no images here")
    (root / "Train" / "empty").mkdir()
    (root / "Train" / "loose.png").write_bytes(b"")
    (root / "top.jpg").write_bytes(b"")
    (root / ".git").mkdir()
    entries = [p.relative_to(root).as_posix() for p in root.rglob("*")]
    files = [e for e in entries if (root / e).is_file()]
    layout = read_layout(str(root), files, [e for e in entries if (root / e).is_dir()])
    local = load_dataset(root)
    assert [r[0] for r in layout.rows] == local.ids.tolist()
    assert [r[1] for r in layout.rows] == [local.class_names[y] for y in local.labels]
    assert [r[2] for r in layout.rows] == local.splits.tolist()
    assert layout.skipped == local.skipped
    assert layout.skipped["empty_class"] == ("Train/cow", "Train/empty")


def test_the_folder_rules_refuse_mixed_split_and_class_folders():
    with pytest.raises(InvalidArgumentError, match=(
        r"^DATA folder 's3://b/p/' mixes split folders \(train/\) with class folders \(ant/\) "
        r"at the same level; put every class folder inside a split folder"
    )):  # fmt: skip
        read_layout("s3://b/p/", ["train/ant/1.jpg", "ant/2.jpg"])


def test_manifest_paths_resolve_against_the_manifests_url():
    manifest = "s3://bucket/lists/v1/manifest.csv"
    assert resolve_url(manifest, "ant/1.jpg") == "s3://bucket/lists/v1/ant/1.jpg"
    assert resolve_url(manifest, "../../photos/ant/1.jpg") == "s3://bucket/photos/ant/1.jpg"
    assert resolve_url(manifest, "/photos/ant/1.jpg") == "s3://bucket/photos/ant/1.jpg"
    assert resolve_url(manifest, "gs://other/1.jpg") == "gs://other/1.jpg"
    assert resolve_url("https://127.0.0.1:9/d/m.csv", "a/1.jpg") == "https://127.0.0.1:9/d/a/1.jpg"


def test_the_stamp_uses_the_etag_else_the_time_else_nothing():
    etag = object_stamp({"size": 10, "ETag": '"abc"', "LastModified": 5})
    assert etag[:3] == (10, -1, -1) and etag[3] >= 0
    assert object_stamp({"size": 10, "ETag": "abc"}) == etag  # quotes are not part of the tag
    assert object_stamp({"size": 10, "mtime": 2.5}) == (10, 2_500_000_000, -1, -1)
    assert object_stamp({"size": 10}) == (-1, -1, -1, -1)  # hashed on every run
    assert object_stamp(None) == (-1, -1, -1, -1)


def test_an_object_rewritten_after_an_unchanged_scan_fails_its_row_then_is_computed(
    photos, s3, tmp_path, monkeypatch
):
    from featurecache.extraction import _extract as extract_module

    url, local = photos
    bucket = url.split("/")[2]
    both = dict(ARGS, layers=["layer2", "embedding"])
    with one_torch_thread():
        extract(str(local), tmp_path / "local.h5", **both, options=run_options())
    _extract(url, tmp_path / "c.h5")
    other = (local / "test" / "bee" / "01.png").read_bytes()
    aligned = extract_module._aligned

    def and_then_rewritten(dataset, store):
        found = aligned(dataset, store)  # the stamps matched: nothing was hashed
        s3.put_object(Bucket=bucket, Key="photos/train/ant/00.png", Body=other)
        return found

    monkeypatch.setattr(extract_module, "_aligned", and_then_rewritten)
    with one_torch_thread():  # a layer added to the cache: every row is decoded again
        result = extract(url, tmp_path / "c.h5", **both, options=run_options())
    # the new layer's row failed while the first layer's is stored: the row counts as failed
    assert (result.rows_computed, result.n_failed, result.n_ok) == (10, 1, 9)
    assert open_cache(tmp_path / "c.h5").failures("resnet18") == [
        (
            "train/ant/00.png",
            "InvalidArgumentError: the object changed during extraction; re-run extract",
        )
    ]
    want = _by_key(tmp_path / "local.h5", "layer2")
    del want["train/ant/00.png"]
    assert _by_key(tmp_path / "c.h5", "layer2") == want
    monkeypatch.setattr(extract_module, "_aligned", aligned)
    with one_torch_thread():
        again = extract(url, tmp_path / "c.h5", **both, options=run_options())
    assert (again.rows_computed, again.n_failed) == (1, 0)
    (local / "train" / "ant" / "00.png").write_bytes(other)
    with one_torch_thread():
        extract(str(local), tmp_path / "local.h5", **both, options=run_options())
    for layer in both["layers"]:
        assert _by_key(tmp_path / "c.h5", layer) == _by_key(tmp_path / "local.h5", layer)
