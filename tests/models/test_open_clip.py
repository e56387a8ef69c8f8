"""The OpenCLIP source: oracle tests against encode_image and open_clip's transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurecache.models._layers import capture
from featurecache.models._registry import get_backbone, list_backbones, load_backbone

open_clip = pytest.importorskip("open_clip")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_embedding_before_and_after_the_projection_equal_encode_image():
    backbone = load_backbone("open_clip:ViT-B-32", "none", image_size=64)
    names = [layer.name for layer in backbone.layers]
    assert "embedding.proj" in names and "trunk.transformer.resblocks.11" in names
    assert backbone.default_layers[-2:] == ("embedding", "embedding.proj")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = open_clip.create_model("ViT-B-32", force_image_size=64).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert "embedding.proj.l2" in names and "embedding.proj.l2" not in backbone.default_layers
    taps = ["embedding", "embedding.proj", "embedding.proj.l2"]
    with torch.inference_mode(), capture(backbone.module, taps) as out:
        backbone.module(x)
    with torch.inference_mode():
        normalized = reference.encode_image(x, normalize=True)
        projected = reference.encode_image(x)
        reference.visual.proj, proj = None, reference.visual.proj
        pooled = reference.visual(x)
    torch.testing.assert_close(out["embedding.proj"], projected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["embedding.proj.l2"], normalized, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["embedding"], pooled, rtol=1e-5, atol=1e-5)
    assert out["embedding"].shape == (2, 768) and proj.shape == (768, 512)


def test_preprocessing_equals_open_clips_own_transform():
    model_name = "ViT-B-32"
    _, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=None)
    preprocess = get_backbone(f"open_clip:{model_name}").preprocess(None, None)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 250, 3), dtype=np.uint8))
    expected = transform(image)
    got = preprocess(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_listing_names_architecture_and_pretrained_tag():
    names = list_backbones("open_clip", "ViT-B-32/")
    assert "open_clip:ViT-B-32/openai" in names
