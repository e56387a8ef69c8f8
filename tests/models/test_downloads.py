"""Named torchvision weights download once through torch.hub, from a loopback server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading

import pytest
import torch
import torchvision
from PIL import Image

from featurecache.app.cli import main
from featurecache.exceptions import DownloadError
from featurecache.models._registry import load_backbone, state_dict_sha256


class _Server:
    """A loopback HTTP server over a folder, counting the requests it answers."""

    def __init__(self, folder) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_weights(tmp_path, monkeypatch):
    """resnet18 random weights served as ``resnet18-<sha256 prefix>.pth``; downloads on."""
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    folder = tmp_path / "www"
    folder.mkdir()
    staging = folder / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    filename = f"resnet18-{digest[:8]}.pth"
    staging.rename(folder / filename)
    server = _Server(folder)
    member = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(member.value, "url", f"{server.url}/{filename}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("FEATURECACHE_OFFLINE")
    yield server, filename, tmp_path / "torch-home" / "hub" / "checkpoints" / filename
    server.close()


def test_named_weights_download_once_with_the_hash_checked(served_weights):
    server, filename, cached = served_weights
    first = load_backbone("resnet18", "IMAGENET1K_V1", image_size=32)
    assert cached.is_file() and server.requests == [f"/{filename}"]
    second = load_backbone("resnet18", "IMAGENET1K_V1", image_size=32)
    assert server.requests == [f"/{filename}"]  # the second run reads the torch hub cache
    assert first.weights_sha256 == second.weights_sha256 == state_dict_sha256(second.module)


def test_a_bad_hash_is_one_line_and_leaves_nothing(served_weights, tmp_path):
    server, filename, cached = served_weights
    (tmp_path / "www" / filename).write_bytes(b"not the weights")
    with pytest.raises(
        DownloadError,
        match=r"^Could not download weights .* with torch\.hub \(RuntimeError: invalid hash value",
    ):
        load_backbone("resnet18", "IMAGENET1K_V1", image_size=32)
    assert not cached.exists()


def test_server_down_or_offline_exit_2_with_one_line(served_weights, tmp_path, capsys):
    server, filename, cached = served_weights
    server.close()
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(data / label / f"{i}.png")
    argv = ["extract", str(data), "--cache", str(tmp_path / "c.h5"), "--model", "resnet18",
            "--weights", "IMAGENET1K_V1", "--image-size", "32", "--split", "none"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.match(
        r"featurecache: error: Could not download weights ResNet18_Weights\.IMAGENET1K_V1 of "
        r"resnet18 from http://127\.0\.0\.1:\d+/resnet18-\w+\.pth with torch\.hub \(URLError: ",
        err,
    )
    assert main([*argv, "--offline"]) == 2
    err = capsys.readouterr().err.strip()
    assert "are not in the torch hub cache and downloads are off" in err
    assert len(err.splitlines()) == 1
