"""Decode modes: ``fast`` within its tolerance of ``exact``, the mode in the cache key, and
the GPU path's per-image fall-backs (run on the CPU with torchvision's CPU decoder)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from featurecache import RunOptions, extract
from featurecache.cache import FeatureConfig
from featurecache.engines._runner import Plan, ShardRunner
from featurecache.exceptions import ConfigMismatchError, InvalidArgumentError
from featurecache.models._decode import decode_jpegs, read_image
from featurecache.models._jpeg import plain_jpeg
from featurecache.models._layers import default_pool
from featurecache.models._preprocess import Preprocess, load_image
from featurecache.models._rebuild import feature_config
from featurecache.models._registry import load_backbone

#: ``fast`` against ``exact`` on a smooth photo-sized JPEG, in normalised units (one unit is
#: about 57 grey levels): mean absolute difference and largest difference. Detailed photos
#: differ more at sharp edges (see benchmarks/README.md).
FAST_MEAN_TOLERANCE = 0.02
FAST_MAX_TOLERANCE = 0.1


def _photo(path, width=1600, height=1200, **save):
    """A smooth synthetic photo with fine noise, saved as JPEG (quality 90)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack(
        [128 + 100 * np.sin(9 * x + 3 * y), 128 + 100 * np.cos(7 * y - 2 * x), 255 * x * y], -1
    )
    image += np.random.default_rng(0).normal(0, 8, image.shape)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, **{"quality": 90, **save})
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of two classes of photo-sized JPEGs and one small one."""
    root = tmp_path_factory.mktemp("photos")
    for label, size in (("a", (640, 480)), ("b", (480, 640))):
        (root / label).mkdir()
        for i in range(3):
            _photo(root / label / f"{i}.jpg", size[0] + 8 * i, size[1])
    _photo(root / "a" / "small.jpg", 60, 50)
    return root


def test_fast_decode_of_a_large_jpeg_is_within_tolerance_of_exact(tmp_path):
    path = _photo(tmp_path / "big.jpg")
    preprocess = Preprocess.imagenet(224)
    reduced = read_image(path, preprocess, "fast")
    assert reduced.shape == (3, 300, 400)  # 1200 // 256 = 4: decoded at 1/4 scale
    exact, fast = preprocess(load_image(path)), preprocess(reduced)
    difference = (exact - fast).abs()
    assert float(difference.mean()) <= FAST_MEAN_TOLERANCE
    assert float(difference.max()) <= FAST_MAX_TOLERANCE


def test_fast_equals_exact_below_twice_the_target_and_for_other_formats(tmp_path):
    preprocess = Preprocess.imagenet(224)
    small = _photo(tmp_path / "small.jpg", 500, 400)  # 400 < 2 x 256: no reduction
    png = tmp_path / "big.png"
    Image.open(_photo(tmp_path / "big.jpg")).save(png)
    for path in (small, png):
        assert torch.equal(read_image(path, preprocess, "fast"), load_image(path))


def test_exact_decoding_keeps_the_pixels_of_a_plain_pil_decode(tmp_path):
    path = _photo(tmp_path / "p.jpg", 300, 200)
    expected = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(load_image(path), expected)


# ---------------------------------------------------------------- the cache key


def _extract(photos, cache, **kw):
    features = dict(model="resnet18", weights="none", image_size=32, dtype="float32")
    options = RunOptions(workers=0, device="cpu")
    kw.setdefault("split", "none")
    return extract(photos, cache, layers=["layer1"], **features, **kw, options=options)


def test_decode_mode_is_in_the_config_key_and_a_change_is_refused(photos, tmp_path):
    cache = tmp_path / "c.h5"
    exact = _extract(photos, cache, decode="exact")
    with pytest.raises(ConfigMismatchError, match=r"\(decode: cached exact, requested fast\)"):
        _extract(photos, cache, decode="fast")
    assert _extract(photos, cache).hit  # auto keeps the cached model's mode
    fast = _extract(photos, cache, decode="fast", name="resnet18-fast")
    assert not fast.hit and fast.n_ok == exact.n_ok == 7
    from featurecache import open_cache

    opened = open_cache(cache)
    X_exact, X_fast = (opened.load(m, "layer1")[0] for m in ("resnet18", "resnet18-fast"))
    small = list(opened.ids).index("a/small.jpg")  # 50 px < 2 x 37: decoded alike
    assert np.array_equal(X_exact[small], X_fast[small])
    assert not np.array_equal(X_exact, X_fast)
    np.testing.assert_allclose(X_fast, X_exact, rtol=0.05, atol=0.05 * np.abs(X_exact).max())


def test_exact_is_left_out_of_the_key_so_older_caches_keep_their_digest():
    base = dict(
        backbone="resnet18", weights_sha256="0" * 64, preprocessing={"crop_size": 8},
        pooling="avg", dtype="float32", compute_dtype="float32",
    )  # fmt: skip
    exact = FeatureConfig(**base)
    assert "decode" not in exact.key() and exact.decode == "exact"
    older = FeatureConfig.from_dict({k: v for k, v in exact.to_dict().items() if k != "decode"})
    assert older.digest() == exact.digest()
    fast = FeatureConfig(**base, decode="fast")
    assert fast.key()["decode"] == "fast" and fast.digest() != exact.digest()
    assert exact.differences(fast) == ["decode: cached exact, requested fast"]


def test_gpu_decoding_is_refused_on_a_cpu_run(photos, tmp_path):
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The 'decode' parameter of extract must be 'exact' or 'fast' here. "
        r"Got 'gpu' instead. 'gpu' decodes on a CUDA device; this run computes on cpu.$",
    ):
        _extract(photos, tmp_path / "c.h5", decode="gpu")
    assert not (tmp_path / "c.h5").exists()


def test_arrays_are_never_decoded_so_auto_records_exact(tmp_path):
    from featurecache.data._datasets import Dataset

    images = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    data = Dataset.from_arrays(images, [0, 1, 0, 1], ["train"] * 4, ["a", "b"])
    result = _extract(data, tmp_path / "c.h5", split=None)  # its own splits
    from featurecache import open_cache

    assert open_cache(result.cache).entry(result.model, "layer1").provenance["decode"] == "exact"


# ---------------------------------------------------------------- the GPU path's fall-backs


def _variants(folder):
    """Files the GPU path takes (True) or leaves to the CPU (False)."""
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    files = {}
    rgb.save(folder / "baseline.jpg", quality=90)
    files["baseline.jpg"] = True
    rgb.save(folder / "progressive.jpg", quality=90, progressive=True)
    files["progressive.jpg"] = True
    rgb.convert("L").save(folder / "grey.jpg", quality=90)
    files["grey.jpg"] = True
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    files["cmyk.jpg"] = False
    data = (folder / "baseline.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    files["truncated.jpg"] = False
    rgb.save(folder / "image.png")
    files["image.png"] = False
    (folder / "text.jpg").write_text("not an image")
    files["text.jpg"] = False
    return files


def test_plain_jpeg_reads_the_jpeg_markers(tmp_path):
    for name, expected in _variants(tmp_path).items():
        assert plain_jpeg((tmp_path / name).read_bytes()) is expected, name


def test_decode_jpegs_isolates_a_bad_image_of_the_batch(tmp_path):
    _variants(tmp_path)
    good = torch.frombuffer(bytearray((tmp_path / "baseline.jpg").read_bytes()), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8\xff\xd9"), dtype=torch.uint8)
    first, second, third = decode_jpegs([good, bad, good], torch.device("cpu"))
    assert isinstance(second, Exception)
    assert first.shape == third.shape == (3, 48, 64) and torch.equal(first, third)


def _gpu_runner(folder, monkeypatch, fail: str | None = None) -> tuple[ShardRunner, object]:
    """A runner that takes the GPU path on the CPU (torchvision's CPU decoder stands in)."""
    from featurecache import load_dataset
    from featurecache.engines import _runner

    dataset = load_dataset(folder, split="none")
    backbone = load_backbone("resnet18", "none", image_size=32)
    infos = {info.name: info for info in backbone.layers}
    config = dataclasses.replace(
        feature_config(backbone, default_pool("map"), "float32", "float32"), decode="gpu"
    )
    runner = ShardRunner(backbone, infos, config.pooling, config, torch.device("cpu"))
    runner.gpu_decode, runner.decode = True, "gpu"
    if fail is not None:  # this file's bytes fail on the device
        original = _runner.decode_jpegs

        def decode(encoded, device):
            results = original(encoded, device)
            return [
                RuntimeError("nvjpeg refused it")
                if bytes(data.numpy()) == (folder / fail).read_bytes()
                else image
                for data, image in zip(encoded, results, strict=True)
            ]

        monkeypatch.setattr(_runner, "decode_jpegs", decode)
    return runner, dataset


def _run(runner, dataset, workers=0):
    plan = Plan(len(dataset), len(dataset), ((0, ("layer1",)),))
    (result,) = runner.run(dataset, plan, 4, workers)
    return result


def test_gpu_path_falls_back_per_image_and_records_why(tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    files = _variants(tmp_path / "x")
    Image.open(tmp_path / "x" / "baseline.jpg").save(tmp_path / "y" / "another.jpg", quality=80)
    runner, dataset = _gpu_runner(tmp_path, monkeypatch, fail="x/progressive.jpg")
    result = _run(runner, dataset)
    reasons = dict(zip(dataset.ids, result.reasons, strict=True))
    status = dict(zip(dataset.ids, result.status.tolist(), strict=True))

    # Failures read as on the CPU path today.
    assert reasons["x/truncated.jpg"] == "InvalidArgumentError: image file is truncated"
    assert reasons["x/text.jpg"] == "InvalidArgumentError: cannot identify image file"
    assert {i for i, s in status.items() if s != 1} == {"x/truncated.jpg", "x/text.jpg"}
    # Every fall-back is counted by its reason.
    not_for_gpu = sum(not files[name] for name in files)
    assert runner.fallbacks == {
        "not a JPEG the GPU decodes": not_for_gpu,
        "GPU decode failed: RuntimeError: nvjpeg refused it": 1,
    }
    # Images decoded on the "device" and on the CPU give close features.
    runner_exact, _ = _gpu_runner(tmp_path, monkeypatch)
    runner_exact.gpu_decode, runner_exact.decode = False, "exact"
    exact = _run(runner_exact, dataset)
    ok = result.status == 1
    np.testing.assert_allclose(
        result.features["layer1"][ok], exact.features["layer1"][ok], rtol=0.05, atol=0.05
    )


def test_gpu_path_reads_bytes_in_loader_processes(tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    _variants(tmp_path / "x")
    Image.open(tmp_path / "x" / "baseline.jpg").save(tmp_path / "y" / "another.jpg")
    runner, dataset = _gpu_runner(tmp_path, monkeypatch)
    in_process = _run(runner, dataset)
    with_workers = _run(runner, dataset, workers=2)
    assert in_process.reasons == with_workers.reasons
    assert np.array_equal(
        in_process.features["layer1"], with_workers.features["layer1"], equal_nan=True
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_gpu_decode_on_cuda_is_close_to_exact(photos, tmp_path):
    features = dict(model="resnet18", weights="none", image_size=64, dtype="float32")
    options = RunOptions(workers=2, device="cuda")
    results = {
        mode: extract(
            photos,
            tmp_path / "c.h5",
            layers=["layer2"],
            split="none",
            decode=mode,
            name=mode,
            **features,
            options=options,
        )  # fmt: skip
        for mode in ("exact", "gpu")
    }
    from featurecache import open_cache

    opened = open_cache(tmp_path / "c.h5")
    assert opened.entry("gpu", "layer2").provenance["decode"] == "gpu"
    assert results["gpu"].n_ok == 7
    X_exact, X_gpu = (opened.load(mode, "layer2")[0] for mode in results)
    np.testing.assert_allclose(X_gpu, X_exact, rtol=0.05, atol=0.05 * np.abs(X_exact).max())


# ---------------------------------------------------------------- simplejpeg gives PIL's pixels


def _pil_pixels(path, reduce_to=None) -> torch.Tensor:
    with Image.open(path) as image:
        if reduce_to is not None:
            image.draft(None, reduce_to(*image.size))
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize(
    "save",
    [{"subsampling": 2}, {"subsampling": 1}, {"subsampling": 0}, {"progressive": True},
     {"quality": 50, "restart_marker_blocks": 3}, {"grey": True}],
    ids=["420", "422", "444", "progressive", "restarts", "grey"],
)  # fmt: skip
def test_plain_jpegs_decode_to_the_pixels_pil_gives(tmp_path, save):
    pytest.importorskip("simplejpeg")
    from featurecache.models import _jpeg

    save = dict(save)
    path = _photo(tmp_path / "p.jpg", 801, 603, **{k: v for k, v in save.items() if k != "grey"})
    if save.pop("grey", False):
        Image.open(path).convert("L").save(path, quality=90)
    assert _jpeg.jpeg_decoder_available() and plain_jpeg(path.read_bytes())
    preprocess = Preprocess.imagenet(112)
    for target in (None, (700, 500), (300, 200), (150, 100), (60, 40)):  # scales 1, 1, 2, 4, 8
        reduce_to = None if target is None else (lambda w, h, t=target: t)
        assert torch.equal(load_image(path, reduce_to), _pil_pixels(path, reduce_to)), target
    assert torch.equal(read_image(path, preprocess, "fast"), _pil_pixels(path, _draft(preprocess)))


def _draft(preprocess):
    def reduce_to(width, height):
        new_height, new_width = preprocess.resized_size(height, width)
        return new_width, new_height

    return reduce_to


def test_other_files_and_refusals_go_through_pil(tmp_path, monkeypatch):
    from featurecache.models import _jpeg

    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 0, 0, 0)).save(cmyk)
    calls = []
    monkeypatch.setattr(_jpeg, "decode_plain_jpeg", lambda *a: calls.append(a) or None)
    assert torch.equal(load_image(cmyk), _pil_pixels(cmyk))
    path = _photo(tmp_path / "p.jpg", 90, 60)
    assert torch.equal(load_image(path), _pil_pixels(path))  # simplejpeg "refused": PIL decodes
    monkeypatch.undo()
    monkeypatch.setattr(_jpeg, "_checked", False)  # as where simplejpeg gives other pixels
    assert torch.equal(load_image(path), _pil_pixels(path))


def test_a_large_jpeg_still_meets_the_decompression_bomb_limit(tmp_path, monkeypatch):
    path = _photo(tmp_path / "bomb.jpg", 64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InvalidArgumentError, match=r"^decompression bomb: Image size \(4096"):
        load_image(path)


def test_cli_passes_decode_and_refuses_unknown_modes(tmp_path, capsys, monkeypatch):
    import featurecache.extraction._extract
    from featurecache.app.cli import main

    seen = []

    def extract_spec(data, cache, spec, **kwargs):
        seen.append(spec.decode)
        raise SystemExit(0)

    monkeypatch.setattr(featurecache.extraction._extract, "extract_spec", extract_spec)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        _photo(tmp_path / label / "0.jpg", 40, 30)
    base = ["extract", str(tmp_path), "--cache", str(tmp_path / "c.h5"), "--no-progress"]
    for flags, expected in (([], "auto"), (["--decode", "fast"], "fast")):
        with pytest.raises(SystemExit):
            main([*base, *flags])
        assert seen[-1] == expected
    assert main([*base, "--decode", "quick"]) == 2
    assert "invalid choice: 'quick'" in capsys.readouterr().err
