"""The Hugging Face source: a tiny config-built DINOv2 in a local folder, no network."""

from __future__ import annotations

import pytest
import torch

from featurecache.models._layers import capture, pool
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
