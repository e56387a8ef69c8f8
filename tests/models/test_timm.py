"""The timm source: oracle tests against timm's own forward and transform, random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from featurecache.exceptions import DownloadError, MissingExtraError, UnknownNameError
from featurecache.models._layers import capture, pool
from featurecache.models._registry import get_backbone, list_backbones, load_backbone

timm = pytest.importorskip("timm")

DINO = "timm:vit_small_patch14_reg4_dinov2"


def _image(seed: int = 0, size: tuple[int, int] = (90, 70)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8), mode="RGB")


def _reference(name: str, image_size: int | None, classifier: bool = False) -> torch.nn.Module:
    """timm's own model with the same random initialisation as load_backbone(seed=0): built
    with its classifier, which ``reset_classifier(0)`` takes off unless ``classifier``."""
    kwargs = {} if image_size is None else {"img_size": image_size}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(name, **kwargs).eval()
    if not classifier:
        model.reset_classifier(0)
    return model


def _run(backbone, x, layers):
    with torch.inference_mode(), capture(backbone.module, layers) as outputs:
        backbone.module(x)
    return dict(outputs)


def test_cnn_stages_equal_forward_intermediates_and_embedding_equals_pre_logits():
    backbone = load_backbone("timm:resnet18", "none", image_size=64)
    stages = [layer.name for layer in backbone.layers if layer.stage]
    assert stages == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert backbone.default_layers == ("layer1", "layer2", "layer3", "layer4", "embedding")
    reference = _reference("resnet18", None)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    outputs = _run(backbone, x, [*stages, "embedding"])
    with torch.inference_mode():
        intermediates = reference.forward_intermediates(x, intermediates_only=True)
        embedding = reference.forward_head(reference.forward_features(x), pre_logits=True)
    for name, expected in zip(stages, intermediates, strict=True):
        torch.testing.assert_close(outputs[name], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["embedding"], embedding, rtol=1e-5, atol=1e-5)


def test_vit_blocks_pool_patch_tokens_only_never_the_register_tokens():
    backbone = load_backbone(DINO, "none", image_size=42)
    blocks = [layer for layer in backbone.layers if layer.stage]
    assert len(blocks) == 12 and all(layer.prefix_tokens == 5 for layer in blocks)
    assert backbone.default_layers == ("blocks.2", "blocks.5", "blocks.8", "embedding")
    reference = _reference("vit_small_patch14_reg4_dinov2", 42)
    x = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(2))
    outputs = _run(backbone, x, ["blocks.5", "embedding"])
    with torch.inference_mode():
        patches, prefix = reference.forward_intermediates(
            x, indices=[5], return_prefix_tokens=True, intermediates_only=True
        )[0]
        embedding = reference.forward_head(reference.forward_features(x), pre_logits=True)
    info = next(layer for layer in blocks if layer.name == "blocks.5")
    cls = pool(outputs["blocks.5"], "cls", "tokens", info.prefix_tokens)
    mean = pool(outputs["blocks.5"], "mean", "tokens", info.prefix_tokens)
    both = pool(outputs["blocks.5"], "cls+mean", "tokens", info.prefix_tokens)
    torch.testing.assert_close(cls, prefix[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, patches.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both, torch.cat([cls, mean], dim=1))
    torch.testing.assert_close(outputs["embedding"], embedding, rtol=1e-5, atol=1e-5)


def test_class_token_pooling_is_refused_without_a_class_token():
    tokens = torch.zeros(1, 4, 8)
    with pytest.raises(ValueError, match=r"needs a class token, and this model has none"):
        pool(tokens, "cls", "tokens", prefix_tokens=0)


@pytest.mark.parametrize(
    ("name", "image_size"),
    [("resnet18", None), ("resnet18", 80), ("vit_small_patch14_dinov2", 98), ("convnext_atto", 64)],
)
def test_preprocessing_equals_timms_own_transform_on_a_pil_image(name, image_size):
    backbone = get_backbone(f"timm:{name}")
    preprocess = backbone.preprocess(None, image_size)
    cfg = timm.data.resolve_data_config(
        pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict()
    )
    if image_size is not None:
        cfg["input_size"] = (3, image_size, image_size)
    transform = timm.data.create_transform(**cfg)
    image = _image()
    expected = transform(image)
    got = preprocess(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_image_size_keeps_the_crop_ratio():
    default = load_backbone("timm:resnet18", "none").preprocess
    assert (default.crop_size, default.resize_size) == (224, 235)  # crop_pct 0.95
    small = get_backbone("timm:resnet18").preprocess(None, 64)
    assert (small.crop_size, small.resize_size, small.interpolation) == (64, 67, "bicubic")


def test_listing_and_unknown_names():
    names = list_backbones("timm", "dinov2")
    assert "timm:vit_small_patch14_dinov2" in names and all("dinov2" in n for n in names)
    with pytest.raises(UnknownNameError, match=r"Unknown timm model 'resnet1888'\. Did you mean"):
        get_backbone("timm:resnet1888")


def test_pretrained_weights_offline_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    message = (
        r"^The weights of timm:resnet18 \(timm/resnet18\.a1_in1k\) are not in the Hugging Face "
        r"hub cache and downloads are off \(--offline, FEATURECACHE_OFFLINE or HF_HUB_OFFLINE\)\. "
        r"To work offline, download timm/resnet18\.a1_in1k once into the Hugging Face hub cache "
        r"\(HF_HOME\) or give a local weights file\.$"
    )
    with pytest.raises(DownloadError, match=message):
        load_backbone("timm:resnet18")


def test_a_missing_library_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'featurecache\[timm\]'`\.$"):
        get_backbone("timm:some_model_not_cached")


def test_cli_lists_timm_names_and_shows_stages_with_the_default_set(capsys):
    from featurecache.app.cli import main

    assert main(["backbones", "--source", "timm", "--filter", "dinov2"]) == 0
    names = capsys.readouterr().out.split()
    assert "timm:vit_small_patch14_dinov2" in names and all("dinov2" in n for n in names)
    assert main(["layers", "timm:resnet18", "--image-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:] if line.strip()}
    assert rows["act1"] == ["64x32x32", "0.03", "stage"]
    assert rows["layer4"] == ["512x2x2", "0.96", "*", "stage"]
    assert rows["embedding"] == ["512", "1.00", "*"]


def test_timm_weights_from_a_state_dict_file(tmp_path):
    reference = _reference("resnet18", None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    loaded = load_backbone("timm:resnet18", tmp_path / "r18.pth", seed=5, image_size=64)
    random = load_backbone("timm:resnet18", "none", seed=0, image_size=64)
    assert loaded.weights == f"file:{tmp_path / 'r18.pth'}"
    assert loaded.weights_sha256 == random.weights_sha256  # the same tensors as seed 0


@pytest.mark.slow
def test_extract_fit_report_end_to_end_with_a_random_dinov2(tmp_path, capsys):
    """`extract --model timm:vit_small_patch14_dinov2 --weights none --image-size 98`, then fit and report."""
    from featurecache.app.cli import main
    from featurecache.cache import open_cache

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, colour in (("red", 0), ("blue", 2)):
            folder = data / split / label
            folder.mkdir(parents=True)
            for i in range(6 if split == "train" else 3):
                pixels = rng.integers(0, 80, (20, 24, 3), dtype=np.uint8)
                pixels[..., colour] += 170
                Image.fromarray(pixels).save(folder / f"{i}.png")
    cache = tmp_path / "c.h5"
    argv = ["extract", str(data), "--cache", str(cache), "--model", "timm:vit_small_patch14_dinov2",
            "--weights", "none", "--image-size", "98", "--layers", "blocks.5,embedding",
            "--pool", "cls+mean", "--device", "cpu", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    opened = open_cache(cache)
    assert opened.models == ["timm:vit_small_patch14_dinov2"]
    features, _, _ = opened.load("timm:vit_small_patch14_dinov2", "blocks.5")
    assert features.shape == (18, 768)  # cls (384) + mean of the 49 patch tokens (384)
    provenance = opened.entry("timm:vit_small_patch14_dinov2", "blocks.5").provenance
    assert provenance["source"] == "timm"
    assert provenance["library"] == f"timm {timm.__version__}"
    assert json.loads(provenance["preprocessing"])["backend"] == "pil"
    assert main(["ls", str(cache)]) == 0
    assert f"source timm (timm {timm.__version__})" in capsys.readouterr().out
    out = tmp_path / "results"
    assert (
        main(
            ["fit", str(cache), "--out", str(out), "--heads", "logreg", "--cv", "2", "--jobs", "1"]
        )
        == 0
    )
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
    assert "timm:vit_small_patch14_dinov2" in (tmp_path / "report" / "report.md").read_text()
