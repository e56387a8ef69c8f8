"""DATA on object storage: the same shards served by a real S3 server on 127.0.0.1.

The server is moto's (``moto[server]``), started in the test process; featurecache
reaches it through fsspec and s3fs, configured from the standard environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from _shards import write_parquet, write_shards
from _workers import make_images, one_torch_thread, run_options

from featurecache import extract, load_dataset, open_cache
from featurecache.app.cli import main

boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")

ARGS = dict(model="resnet18", weights="none", layers=["embedding"], image_size=32, dtype="float32")
KEYS = {"AWS_ACCESS_KEY_ID": "featurecache", "AWS_SECRET_ACCESS_KEY": "featurecache-secret"}


@pytest.fixture(scope="module")
def server():
    """A moto S3 server on 127.0.0.1 (a free port), for the module's tests."""
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    yield f"http://{host}:{port}"
    moto.stop()


@pytest.fixture
def s3(server, monkeypatch):
    """A client of the server, with the environment pointing at it."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server)
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # credentials are read when an instance is made
    return boto3.client("s3", endpoint_url=server)


@pytest.fixture
def bucket(s3, tmp_path_factory) -> tuple[str, Path]:
    """The bucket ``data`` holding tar shards and a parquet file of one local folder;
    the environment pointing at the server. Returns ``(s3://data, local copies)``."""
    local = tmp_path_factory.mktemp("local")
    make_images(local / "data" / "train", n_per_class=4)
    files = [
        *write_shards(local / "data", local / "shards"),
        *write_parquet(local / "data", local / "pq"),
    ]
    if "data" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="data")
        for path in files:
            s3.upload_file(str(path), "data", f"{path.parent.name}/{path.name}")
    return "s3://data", local


def _features(cache):
    X, y, ids = open_cache(cache).load("resnet18", "embedding")
    return {
        i: (x.tobytes(), label) for x, label, i in zip(X, y.tolist(), ids.tolist(), strict=True)
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_through_s3_give_the_local_shards_features(bucket, tmp_path, workers):
    url, local = bucket
    with one_torch_thread():
        extract(
            str(local / "shards" / "*.tar"), tmp_path / "local.h5", **ARGS, options=run_options()
        )
        extract(f"{url}/shards/train-{{0..1}}.tar", tmp_path / "s3.h5", **ARGS,
                options=run_options(workers=workers))  # fmt: skip
    assert len(_features(tmp_path / "local.h5")) == 8
    assert _features(tmp_path / "s3.h5") == _features(tmp_path / "local.h5")


def test_parquet_through_s3_reads_the_same_samples(bucket):
    url, local = bucket
    remote, here = (
        load_dataset(f"{url}/pq/*.parquet"),
        load_dataset(str(local / "pq" / "*.parquet")),
    )
    assert (
        remote.ids.tolist() == here.ids.tolist() and remote.labels.tolist() == here.labels.tolist()
    )
    assert list(remote.members.digests) == list(here.members.digests)
    assert all((remote.load_image(i) == here.load_image(i)).all() for i in (0, len(here) - 1))


def test_a_missing_bucket_fails_in_one_line(bucket, tmp_path, capsys):
    code = main(["extract", "s3://missing/shards/*.tar", "--cache", str(tmp_path / "c.h5")])
    assert code == 2
    assert capsys.readouterr().err == (
        "featurecache: error: cannot read 's3://missing/shards/*.tar': the bucket 'missing' does "
        "not exist at this endpoint; check the URL and AWS_ENDPOINT_URL.\n"
    )
    assert not (tmp_path / "c.h5").exists()


def test_wrong_credentials_fail_in_one_line(bucket, server, tmp_path, capsys):
    url, _ = bucket
    _authenticate(server, b"0")  # from now on the server checks every request's keys
    try:
        code = main(["extract", f"{url}/shards/*.tar", "--cache", str(tmp_path / "c.h5")])
    finally:
        _authenticate(server, b"inf")
    assert code == 2
    assert capsys.readouterr().err == (
        "featurecache: error: cannot read 's3://data/shards/*.tar': access denied (The AWS Access "
        "Key Id you provided does not exist in our records.); check the credentials "
        "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE).\n"
    )
    assert not (tmp_path / "c.h5").exists()


def _authenticate(server: str, after: bytes) -> None:
    """Make moto check credentials after ``after`` more requests (``inf``: never)."""
    request = urllib.request.Request(
        f"{server}/moto-api/reset-auth", data=after, method="POST",
        headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_a_shard_index_keeps_scans_of_objects_by_their_etag(bucket, tmp_path, monkeypatch):
    import tarfile

    from featurecache.data import WebDataset

    url, _ = bucket
    source = WebDataset(f"{url}/shards/*.tar", index_dir=tmp_path / "index")
    first = load_dataset(source)
    opened = []
    original = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(1) or original(*a, **k))
    assert load_dataset(source).ids.tolist() == first.ids.tolist() and opened == []
