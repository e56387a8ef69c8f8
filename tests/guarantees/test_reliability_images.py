"""Item 5: every bad image becomes a failed row with its reason; nothing else is lost.

Each kind of image is generated here with PIL. Images PIL can convert (CMYK, 16-bit,
palette, RGBA, animated GIF) must be ok; broken ones (empty, truncated JPEG and PNG, text
named .jpg, a decompression bomb, a missing file, a broken symlink, an unreadable file)
must be failed rows with a reason. Then ok + failed = all inputs, ``featurecache ls``
lists every failure with its reason, the heads skip failed rows and the report counts them.

Unreadable permissions cannot be produced with ``chmod 000`` because the tests run as
root, which reads any file; ``PIL.Image.open`` and ``open`` (the loader reads a file's bytes
once, checks their content digest and decodes them from memory) are therefore patched to raise
``PermissionError`` for that one file, exactly what a non-root reader gets.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from _workers import SETTINGS, one_torch_thread, read_layers, run_options
from PIL import Image

from featurecache import extract
from featurecache.app.cli import main
from pipelines import fit, open_cache, report

pytestmark = pytest.mark.slow

# id -> (split, expected reason or None for ok)
EXPECTED = {
    "ant/cmyk.jpg": ("train", None),
    "ant/grey16.png": ("train", None),
    "bee/palette.png": ("train", None),
    "bee/rgba.png": ("test", None),
    "ant/animated.gif": ("test", None),
    "ant/empty.jpg": ("train", "file is empty (0 bytes)"),
    "bee/truncated.jpg": ("train", "image file is truncated"),
    "ant/truncated.png": ("test", "image file is truncated"),
    "bee/text.jpg": ("train", "cannot identify image file"),
    "ant/bomb.png": ("train", "decompression bomb: Image size (900000000 pixels) exceeds limit"),
    "bee/missing.png": ("test", "no such file"),
    "ant/broken-link.png": ("train", "no such file"),
    "bee/unreadable.png": ("train", "permission denied"),
}


def _rgb(rng, size=40) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _bomb_png() -> bytes:
    """A 1x1 PNG whose header claims 30000x30000 pixels, over PIL's bomb limit."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    chunk = b"IHDR" + struct.pack(">II", 30000, 30000) + bytes(png[24:29])
    png[12:29] = chunk
    png[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(png)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A CSV manifest of 12 good images and every kind of odd or broken one."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        (root / name).mkdir()
    rows = []
    for name in ("ant", "bee"):
        for i in range(6):
            sample = f"{name}/good{i}.{'png' if name == 'ant' else 'jpg'}"
            _rgb(rng).save(root / sample)
            rows.append((sample, name, "train" if i < 4 else "test"))
    _rgb(rng).convert("CMYK").save(root / "ant/cmyk.jpg")
    grey = rng.integers(0, 65536, (40, 40)).astype(np.uint16)
    Image.fromarray(grey).save(root / "ant/grey16.png")
    with Image.open(root / "ant/grey16.png") as image:
        assert image.mode == "I;16"
    _rgb(rng).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "bee/palette.png")
    alpha = rng.integers(0, 256, (40, 40, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([np.asarray(_rgb(rng)), alpha], axis=2)).save(
        root / "bee/rgba.png"
    )
    frames = [_rgb(rng).convert("P") for _ in range(3)]
    frames[0].save(root / "ant/animated.gif", save_all=True, append_images=frames[1:])
    (root / "ant/empty.jpg").write_bytes(b"")
    _rgb(rng).save(root / "bee/full.jpg")
    data = (root / "bee/full.jpg").read_bytes()
    (root / "bee/truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "bee/full.jpg").unlink()
    data = (root / "ant/good0.png").read_bytes()
    (root / "ant/truncated.png").write_bytes(data[: len(data) // 2])
    (root / "bee/text.jpg").write_text("this is not an image\n")
    (root / "ant/bomb.png").write_bytes(_bomb_png())
    (root / "ant/broken-link.png").symlink_to(root / "nowhere.png")
    _rgb(rng).save(root / "bee/unreadable.png")
    (root / "bee/unreadable.png").chmod(0)  # root reads it anyway: see the module docstring
    rows += [(sample, sample.split("/")[0], split) for sample, (split, _) in EXPECTED.items()]
    path = root / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def cache(manifest, tmp_path_factory):
    import builtins

    def refusing(original):
        def opener(path, *args, **kwargs):
            if str(path).endswith("unreadable.png"):
                raise PermissionError(13, "Permission denied", str(path))
            return original(path, *args, **kwargs)

        return opener

    with one_torch_thread(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "open", refusing(Image.open))
        patch.setattr(builtins, "open", refusing(builtins.open))
        cache = tmp_path_factory.mktemp("cache") / "c.h5"
        result = extract(
            manifest,
            cache,
            layers=["embedding"],
            **{**SETTINGS, "options": run_options(shard_size=8)},
        )
    failed = sum(reason is not None for _, reason in EXPECTED.values())
    assert (result.n_ok, result.n_failed, result.n_samples) == (12 + 13 - failed, failed, 25)
    return cache


def test_every_input_is_ok_or_failed_with_its_reason(cache):
    cached = open_cache(cache)
    ((X, status),) = read_layers(cache, "resnet18", ["embedding"]).values()
    state = dict(zip(cached.ids.tolist(), status.tolist(), strict=True))
    assert sorted(state) == sorted([*EXPECTED, *(f"ant/good{i}.png" for i in range(6)),
                                    *(f"bee/good{i}.jpg" for i in range(6))])  # fmt: skip
    failures = dict(cached.failures("resnet18"))
    for sample, (_, reason) in EXPECTED.items():
        if reason is None:
            assert state[sample] == 1 and sample not in failures, sample
        else:
            assert state[sample] == 2, sample
            assert failures[sample].startswith("InvalidArgumentError: " + reason), failures[sample]
    assert sum(v == 1 for v in state.values()) + len(failures) == len(state)
    assert np.isfinite(X[status == 1]).all() and np.isnan(X[status == 2]).all()


def test_ls_lists_every_failure_with_its_reason(cache, capsys):
    assert main(["ls", str(cache)]) == 0
    out = capsys.readouterr().out
    failed = {s: r for s, (_, r) in EXPECTED.items() if r is not None}
    assert f"  failed samples ({len(failed)}):" in out
    for sample, reason in failed.items():
        assert f"    {sample}: InvalidArgumentError: {reason}" in out, sample


@pytest.fixture(scope="module")
def results(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "results"
    return out, fit(cache, out, heads=["logreg"], cv=2, n_jobs=1)


def test_heads_skip_failed_rows(results):
    out, table = results
    ok = {s: split for s, (split, reason) in EXPECTED.items() if reason is None}
    n_train = 8 + sum(split == "train" for split in ok.values())
    n_test = 4 + sum(split == "test" for split in ok.values())
    assert table[["n_train", "n_test"]].values.tolist() == [[n_train, n_test]]
    predictions = pd.read_csv(out / table["predictions_file"].iloc[0])
    assert len(predictions) == n_test
    assert not set(predictions["id"]) & {s for s, (_, r) in EXPECTED.items() if r is not None}


def test_report_counts_failed_rows(results, tmp_path):
    out, _ = results
    text = (report(out, tmp_path / "report") / "report.md").read_text()
    failed = sum(r is not None for _, r in EXPECTED.values())
    lines = [line for line in text.splitlines() if re.search(r"fail|unreadable|excluded", line)]
    assert any(re.search(rf"\b{failed}\b", line) for line in lines), lines
