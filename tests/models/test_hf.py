"""The Hugging Face source: a tiny config-built DINOv2 in a local folder, no network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurecache import open_cache
from featurecache.models import _hf
from featurecache.models._layers import capture, pool
from featurecache.models._record import Resolved
from featurecache.models._registry import load_backbone

transformers = pytest.importorskip("transformers")


@pytest.fixture
def tiny_dinov2(tmp_path):
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        image_size=28, patch_size=14,
    )  # fmt: skip
    config.save_pretrained(tmp_path)
    transformers.BitImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(tmp_path)  # fmt: skip
    return tmp_path, config


def test_every_hidden_state_and_the_pooled_output_equal_the_model(tiny_dinov2):
    folder, config = tiny_dinov2
    backbone = load_backbone(f"hf:{folder}", "none")
    states = [layer for layer in backbone.layers if layer.stage]
    assert [layer.name for layer in states] == [f"hidden_states.{i}" for i in range(4)]
    assert all(layer.shape == (5, 32) and layer.prefix_tokens == 1 for layer in states)
    assert backbone.image_size == 28 and backbone.preprocess.resize_size == 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = transformers.AutoModel.from_config(config).eval()
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    names = [layer.name for layer in states] + ["embedding"]
    with torch.inference_mode(), capture(backbone.module, names) as out:
        backbone.module(x)
    with torch.inference_mode():
        expected = reference(pixel_values=x, output_hidden_states=True)
    for i, state in enumerate(expected.hidden_states):
        torch.testing.assert_close(out[f"hidden_states.{i}"], state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["embedding"], expected.pooler_output, rtol=1e-5, atol=1e-5)
    mean = pool(out["hidden_states.3"], "mean", "tokens", 1)
    torch.testing.assert_close(mean, expected.hidden_states[3][:, 1:].mean(dim=1))


def _processors():
    """Both transformers backends and the three resize conventions of hub processors."""
    crop = {"size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28}}
    yield transformers.BitImageProcessor(**crop, do_center_crop=True)
    yield transformers.BitImageProcessorPil(**crop, do_center_crop=True)
    yield transformers.ConvNextImageProcessor(size={"shortest_edge": 28})
    yield transformers.SiglipImageProcessor(size={"height": 28, "width": 28})


@pytest.mark.parametrize("processor", list(_processors()), ids=lambda p: type(p).__name__)
def test_preprocessing_equals_the_image_processor(processor):
    preprocess = _hf._preprocess(processor, Resolved(id="none"), None)
    rng = np.random.default_rng(0)
    for height, width in ((45, 61), (70, 37)):  # odd crop margins, both orientations
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        got = preprocess(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_record_uses_the_repositorys_processor(tiny_dinov2):
    folder, _ = tiny_dinov2
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    expected = _hf._preprocess(processor, Resolved(id="none"), None)
    assert load_backbone(f"hf:{folder}", "none").preprocess == expected
    assert expected.crop_offset == "floor" and expected.resize_size == 32


def test_a_model_without_class_token_pools_mean_and_refuses_cls(tmp_path):
    from featurecache import RunOptions, extract
    from featurecache.exceptions import InvalidArgumentError

    folder = tmp_path / "siglip"
    transformers.SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=28, patch_size=14,
    ).save_pretrained(folder)  # fmt: skip
    transformers.SiglipImageProcessor(size={"height": 28, "width": 28}).save_pretrained(folder)
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / label / f"{i}.png")
    common = dict(model=f"hf:{folder}", weights="none", layers=["hidden_states.2"], split="none")
    options = RunOptions(workers=0)
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The 'pool' parameter of extract must be 'mean' for the token outputs of a model "
        r"without a class token. Got 'cls' instead.$",
    ):
        extract(images, tmp_path / "c.h5", pool="cls", options=options, **common)
    result = extract(images, tmp_path / "c.h5", options=options, **common)
    assert result.n_ok == 4 and result.model == f"hf:{str(folder).replace('/', '--')}"
    assert (
        open_cache(tmp_path / "c.h5").entry(result.model, "hidden_states.2").provenance["pooling"]
        == "mean"
    )
    assert open_cache(tmp_path / "c.h5").classifiers(result.model) == {}  # no text tower


def test_a_clip_models_projected_embedding_equals_get_image_features(tmp_path):
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, vocab_size=50),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=28, patch_size=14),
        projection_dim=24,
    )  # fmt: skip
    config.save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    ).save_pretrained(tmp_path)
    backbone = load_backbone(f"hf:{tmp_path}", "none")
    assert backbone.default_layers[-2:] == ("embedding", "embedding.proj")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = transformers.AutoModel.from_config(config).eval()
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), capture(backbone.module, ["embedding", "embedding.proj"]) as out:
        backbone.module(x)
    with torch.inference_mode():
        projected = reference.get_image_features(pixel_values=x)
        pooled = reference.vision_model(pixel_values=x).pooler_output
    projected = getattr(projected, "pooler_output", projected)  # transformers 5: an output
    assert out["embedding.proj"].shape == (2, 24)
    torch.testing.assert_close(out["embedding.proj"], projected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["embedding"], pooled, rtol=1e-5, atol=1e-5)
