"""Layer depths follow the forward order: Hugging Face hidden states, OpenCLIP heads."""

from __future__ import annotations

import pytest
import torch

from featurecache.models import load_backbone, upgraded_depths

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

_TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)


def _hf_folders(tmp_path):
    """Tiny DINOv2 with registers, ViT, CLIP and SigLIP, each in a save_pretrained folder."""
    vision = dict(**_TINY, image_size=28, patch_size=14)
    text = dict(**_TINY, vocab_size=50)
    configs = {
        "dinov2": transformers.Dinov2WithRegistersConfig(**vision, num_register_tokens=2),
        "vit": transformers.ViTConfig(**vision),
        "clip": transformers.CLIPConfig(text_config=text, vision_config=vision),
        "siglip": transformers.SiglipVisionConfig(**vision),
    }
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=True
    )
    for name, config in configs.items():
        config.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        yield name, tmp_path / name


def _check_rising(layers, first: str) -> dict[str, float]:
    depths = [layer.depth for layer in layers]
    assert all(a < b for a, b in zip(depths, depths[1:], strict=False)), depths
    assert [layer.depth_index for layer in layers] == list(range(len(layers)))
    by_name = {layer.name: layer.depth for layer in layers}
    assert by_name[first] <= 0.25 and by_name["embedding"] == 1.0
    return by_name


def test_hugging_face_hidden_states_sit_after_the_block_that_makes_them(tmp_path):
    for name, folder in _hf_folders(tmp_path):
        layers = load_backbone(f"hf:{folder}", "none").layers
        depth = _check_rising(layers, "hidden_states.0")
        states = [depth[f"hidden_states.{k}"] for k in range(4)]
        assert states == sorted(states) and states[-1] < 1.0, name
        for k in range(1, 4):  # hidden_states.K is block K-1's output: right after it
            block = next(
                n for n in depth if n.endswith(f"layer.{k - 1}") or n.endswith(f"layers.{k - 1}")
            )
            names = list(depth)
            assert names.index(f"hidden_states.{k}") == names.index(block) + 1, (name, k)
        if name == "clip":
            assert 1.0 < depth["embedding.proj"]


def test_open_clip_blocks_rise_and_the_projections_follow_the_embedding():
    layers = load_backbone("open_clip:ViT-B-32", "none", image_size=64).layers
    depth = _check_rising(layers, "trunk.ln_pre")
    blocks = [depth[f"trunk.transformer.resblocks.{i}"] for i in range(12)]
    assert blocks == sorted(blocks) and blocks[-1] < 1.0
    assert 1.0 < depth["embedding.proj"] < depth["embedding.proj.l2"]


def test_upgraded_depths_recompute_hf_and_open_clip_only(tmp_path):
    assert upgraded_depths("timm:resnet18", 64) == {}
    depths = upgraded_depths("open_clip:ViT-B-32", 64)
    assert depths["embedding"] == (1.0, depths["embedding"][1])
    assert depths["embedding.proj.l2"][1] == depths["embedding.proj"][1] + 1


def test_a_pass_ends_after_the_last_forward_to_complete_so_taps_are_captured(tmp_path):
    from featurecache.models._layers import StopForward, capture, deepest, stop_after

    folder = next(folder for name, folder in _hf_folders(tmp_path) if name == "dinov2")
    backbone = load_backbone(f"hf:{folder}", "none")
    infos = {layer.name: layer for layer in backbone.layers}
    asked = ["hidden_states.1", "model.layernorm"]  # the tap's tensor is made first
    assert infos["hidden_states.1"].depth_index < infos["model.layernorm"].depth_index
    stop = deepest(infos[name] for name in asked)
    assert stop == "hidden_states.1"  # taps are called once the model has run
    x = torch.zeros(1, 3, 28, 28)
    with torch.inference_mode(), capture(backbone.module, asked) as out:
        with stop_after(backbone.module, stop), pytest.raises(StopForward):
            backbone.module(x)
        assert set(out) == set(asked)
