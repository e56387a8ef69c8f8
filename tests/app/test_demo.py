"""The demo end to end on a reduced setting: real Lite0 weights, one layer, one head."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pandas as pd
import pytest

from featurecache.app._demo import DEMO_DEFAULTS
from featurecache.app.cli import main
from featurecache.cache._builtins import FASHION_MNIST_HINT


@pytest.mark.slow
def test_reduced_demo_writes_a_report_and_prints_the_summary(tmp_path, capsys):
    cache, out = tmp_path / "demo.h5", tmp_path / "report"
    argv = [
        "demo", "--limit", "100", "--layers", "blocks.4,embedding", "--heads", "logreg",
        "--image-size", "64", "--cache", str(cache), "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(
        r"best: backbone efficientnet_lite0, layer (blocks\.4|embedding), head logreg -> test accuracy 0\.\d{4}",
        printed,
    )
    assert re.search(r"earlier layer beat the penultimate one: (yes|no|tie|not reliably)", printed)
    assert f"report: {out / 'report.html'}" in printed
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "efficientnet_lite0" in (out / "report.md").read_text()
    # a second run is a cache hit: no forward pass, and the finished fits are reused
    assert main(argv) == 0
    assert "cache hit, no forward pass" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_with_views_fits_plain_and_views_and_compares_them(tmp_path, capsys):
    cache, out = tmp_path / "demo.h5", tmp_path / "report"
    argv = [
        "demo", "--limit", "100", "--layers", "embedding", "--heads", "logreg", "--image-size",
        "64", "--cache", str(cache), "--out", str(out), "--views", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(
        r"\nviews ×2: best efficientnet_lite0 / embedding / logreg, CV 0\.\d{4} ± 0\.\d{4}, test "
        r"0\.\d{4}; [+-]\d\.\d{3} CV \([+-]\d\.\d{3} test\) over plain",
        printed,
    )
    table = pd.read_csv(tmp_path / "demo-results" / "results.csv")
    assert list(zip(table["views"], table["n_views"], strict=True)) == [("none", 1), ("train", 2)]
    assert "## Augmented views and test-time augmentation" in (out / "report.md").read_text()
    # The default augmentation of digits has no flip: a mirrored digit is another digit.
    assert "flip" not in DEMO_DEFAULTS["builtin:digits"].augment
    assert main([*argv[:-1], "3"]) == 2  # another K under the same cache is refused
    assert "views.k: cached 2, requested 3" in capsys.readouterr().err


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def _tiny_fashion_mnist(folder, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in per_class.items():
        labels = np.repeat(np.arange(10), n)
        images = rng.integers(0, 60, size=(len(labels), 28, 28))
        for k, label in enumerate(labels):  # a class-dependent bright band, so heads can learn
            images[k, 2 * label : 2 * label + 6] += 180
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.mark.slow
def test_fashion_demo_runs_at_96_px_with_its_own_defaults(tmp_path, monkeypatch, capsys):
    import pipelines

    _tiny_fashion_mnist(tmp_path, {"train": 6, "t10k": 2})
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    cache, out = tmp_path / "demo.h5", tmp_path / "report"
    argv = ["demo", "--dataset", "builtin:fashion-mnist", "--layers", "embedding"]
    assert main([*argv, "--cache", str(cache), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "featurecache demo on builtin:fashion-mnist: 80 images, efficientnet_lite0" in printed
    (entry,) = pipelines.open_cache(cache).entries
    assert entry.provenance["image_size"] == DEMO_DEFAULTS["builtin:fashion-mnist"].image_size == 96
    table = pd.read_csv(tmp_path / "demo-results" / "results.csv")
    assert sorted(table["head"]) == sorted(DEMO_DEFAULTS["builtin:fashion-mnist"].heads)


def test_fashion_demo_without_the_files_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    import featurecache.cache._builtins as builtins

    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(builtins, "FASHION_MNIST_DIRS", ())
    argv = ["demo", "--dataset", "builtin:fashion-mnist", "--cache", str(tmp_path / "c.h5")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error == f"featurecache: error: {FASHION_MNIST_HINT}\n"
    assert not (tmp_path / "c.h5").exists()
