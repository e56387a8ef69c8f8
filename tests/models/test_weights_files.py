"""Weights files as each library writes them: timm, OpenCLIP and Hugging Face native
checkpoints, tiny configs with random weights, compared with the library's own forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from featurecache import RunOptions, extract, open_cache
from featurecache.cache import FeatureConfig
from featurecache.exceptions import InvalidArgumentError
from featurecache.models._layers import capture
from featurecache.models._rebuild import feature_config
from featurecache.models._registry import load_backbone

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

OPTIONS = RunOptions(workers=0, batch_size=4)
#: A two-layer OpenCLIP ViT registered from a config file, as open_clip.add_model_config reads it.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _outputs(backbone, x, layers):
    with torch.inference_mode(), capture(backbone.module, layers) as out:
        backbone.module(x)
    return dict(out)


def _x(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _images(root, classes, n=2, size=(36, 40)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


# ---------------------------------------------------------------- timm


def test_timm_state_dict_and_safetensors_files_equal_timms_forward(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = timm.create_model("test_resnet").eval()
    torch.save(model.state_dict(), tmp_path / "r.pth")
    safetensors_torch.save_file(model.state_dict(), tmp_path / "r.safetensors")
    x = _x(64)
    with torch.inference_mode():
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
    for name in ("r.pth", "r.safetensors"):
        backbone = load_backbone("timm:test_resnet", str(tmp_path / name), image_size=64)
        out = _outputs(backbone, x, ["embedding"])
        torch.testing.assert_close(out["embedding"], embedding, rtol=1e-5, atol=1e-5)
        head = model.get_classifier().weight.detach().numpy()
        np.testing.assert_array_equal(backbone.imagenet.weight, head)


def test_a_vit_at_160_px_with_a_weights_file_equals_timms_resampled_model(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        other_grid = timm.create_model("test_vit", img_size=224)  # 14 x 14 position embeddings
    path = tmp_path / "vit.pth"
    torch.save(other_grid.state_dict(), path)
    reference = timm.create_model(
        "test_vit", img_size=160, pretrained=True, pretrained_cfg_overlay={"file": str(path)}
    ).eval()
    reference.reset_classifier(0)
    backbone = load_backbone("timm:test_vit", str(path), image_size=160)
    assert backbone.module.pos_embed.shape == (1, 101, 64)  # 10 x 10 patches and the class
    torch.testing.assert_close(backbone.module.pos_embed, reference.pos_embed, rtol=0, atol=0)
    x = _x(160)
    with torch.inference_mode():
        expected = reference(x)
    torch.testing.assert_close(_outputs(backbone, x, ["embedding"])["embedding"], expected)


# ---------------------------------------------------------------- OpenCLIP


@pytest.fixture
def tiny_clip(tmp_path):
    """``open_clip:fc-tiny``: its full state dict and its image tower's, random weights."""
    (tmp_path / "fc-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "fc-tiny.json")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = open_clip.create_model("fc-tiny").eval()
    torch.save(model.state_dict(), tmp_path / "clip.pth")
    torch.save(model.visual.state_dict(), tmp_path / "visual.pth")
    return model, tmp_path


def test_open_clip_files_in_featurecaches_own_layout_load_as_they_were_saved(tiny_clip):
    _, folder = tiny_clip
    first = load_backbone("open_clip:fc-tiny", str(folder / "visual.pth"))
    torch.save(first.module.state_dict(), folder / "own.pth")  # trunk.*, embedding.proj.weight
    again = load_backbone("open_clip:fc-tiny", str(folder / "own.pth"))
    assert again.weights_sha256 == first.weights_sha256 and again.zeroshot is None


def test_open_clip_full_and_image_tower_files_equal_encode_image(tiny_clip):
    model, folder = tiny_clip
    x = _x(32)
    with torch.inference_mode():
        expected = model.encode_image(x)
    for name, text_tower in (("clip.pth", True), ("visual.pth", False)):
        backbone = load_backbone("open_clip:fc-tiny", str(folder / name))
        out = _outputs(backbone, x, ["embedding.proj"])
        torch.testing.assert_close(out["embedding.proj"], expected, rtol=1e-5, atol=1e-5)
        assert (backbone.zeroshot is not None) is text_tower  # the tower alone: no text side
    resized = open_clip.create_model("fc-tiny", force_image_size=48).eval()
    open_clip.load_checkpoint(resized, str(folder / "clip.pth"))  # open_clip's own resampling
    backbone = load_backbone("open_clip:fc-tiny", str(folder / "clip.pth"), image_size=48)
    x = _x(48)
    with torch.inference_mode():
        expected = resized.encode_image(x)
    out = _outputs(backbone, x, ["embedding.proj"])
    torch.testing.assert_close(out["embedding.proj"], expected, rtol=1e-5, atol=1e-5)


def test_a_full_open_clip_file_stores_the_zeroshot_classifier_of_its_text_tower(tiny_clip):
    model, folder = tiny_clip
    data = _images(folder / "data", ["cat", "hot_dog"])
    result = extract(
        data, folder / "c.h5", model="open_clip:fc-tiny", weights=str(folder / "clip.pth"),
        layers=["embedding.proj"], split="none", dtype="float32", options=OPTIONS,
    )  # fmt: skip
    cache = open_cache(folder / "c.h5")
    stored = cache.classifiers(result.model)["zeroshot"]
    tokenizer = open_clip.get_tokenizer("fc-tiny")
    with torch.inference_mode():
        rows = []
        for name in ("cat", "hot dog"):
            texts = [prompt.replace("{}", name) for prompt in stored.prompts]
            embedded = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
            rows.append(torch.nn.functional.normalize(embedded.mean(dim=0), dim=-1))
        text = torch.stack(rows)
        X, _, _ = cache.load(result.model, "embedding.proj")
        image = torch.nn.functional.normalize(torch.from_numpy(X), dim=-1)
        logits = model.logit_scale.exp() * image @ text.T
    np.testing.assert_allclose(stored.logits(X), logits.numpy(), rtol=1e-5, atol=1e-4)


def test_the_openai_tag_computes_with_quickgelu_as_open_clips_tag_table_says():
    from featurecache.models._open_clip import quick_gelu

    for arch, tag in open_clip.list_pretrained():
        trained = open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False)
        named = (open_clip.get_model_config(arch) or {}).get("quick_gelu", False)
        if named and not trained:  # the architecture forces it on weights trained without
            with pytest.warns(UserWarning, match=rf"^open_clip:{arch}/{tag} computes with Quick"):
                assert quick_gelu(arch, tag) is True
        else:
            assert quick_gelu(arch, tag) is trained or named, (arch, tag)
    assert quick_gelu("ViT-B-32", "openai") and not quick_gelu("ViT-B-32", "laion2b_s34b_b79k")
    backbone = load_backbone("open_clip:ViT-B-32/openai", "none", image_size=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        quick = open_clip.create_model("ViT-B-32-quickgelu", force_image_size=64).eval()
    x = _x(64)
    with torch.inference_mode():
        expected = quick.encode_image(x)
    out = _outputs(backbone, x, ["embedding.proj"])
    torch.testing.assert_close(out["embedding.proj"], expected, rtol=1e-5, atol=1e-5)
    # QuickGELU changes the numbers and no weight: it is part of the cache key
    assert backbone.architecture == {"quick_gelu": True}
    config = feature_config(backbone, "none", "float32", "float32")
    assert config.key()["architecture"] == {"quick_gelu": True}
    assert FeatureConfig.from_dict(config.attrs()) == config  # the index attributes round-trip
    gelu = FeatureConfig.from_dict({**config.to_dict(), "architecture": {}})
    assert "architecture" not in gelu.key()  # caches written before keep their digest
    assert gelu.differences(config) == ["architecture.quick_gelu: cached (unset), requested True"]


# ---------------------------------------------------------------- Hugging Face


def _tiny_hf_clip(folder):
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, vocab_size=50, bos_token_id=0, eos_token_id=2,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=28, patch_size=14),
        projection_dim=24,
    )  # fmt: skip
    config.save_pretrained(folder)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    ).save_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(8)
        return transformers.CLIPModel(config).eval()


def test_hf_save_pretrained_folder_and_model_safetensors_equal_get_image_features(tmp_path):
    model = _tiny_hf_clip(tmp_path / "repo")
    model.save_pretrained(tmp_path / "tuned")
    x = _x(28)
    with torch.inference_mode():
        projected = model.get_image_features(pixel_values=x)
        states = model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
    projected = getattr(projected, "pooler_output", projected)  # transformers 5: an output
    for weights in (tmp_path / "tuned", tmp_path / "tuned" / "model.safetensors"):
        backbone = load_backbone(f"hf:{tmp_path / 'repo'}", str(weights))
        out = _outputs(backbone, x, ["embedding.proj", "hidden_states.1"])
        torch.testing.assert_close(out["embedding.proj"], projected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["hidden_states.1"], states[1], rtol=1e-5, atol=1e-5)
        assert backbone.zeroshot is not None  # a whole CLIPModel holds its text tower
    backbone = load_backbone(f"hf:{tmp_path / 'repo'}", str(tmp_path / "tuned"), image_size=42)
    x = _x(42)
    with torch.inference_mode():  # transformers' own resampling of the position embeddings
        expected = model.get_image_features(pixel_values=x, interpolate_pos_encoding=True)
    expected = getattr(expected, "pooler_output", expected)
    out = _outputs(backbone, x, ["embedding.proj"])
    torch.testing.assert_close(out["embedding.proj"], expected, rtol=1e-5, atol=1e-5)


def test_hf_dinov2_pytorch_model_bin_equals_the_model(tmp_path):
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=28, patch_size=14,
    )  # fmt: skip
    config.save_pretrained(tmp_path)
    transformers.BitImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=True
    ).save_pretrained(tmp_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        model = transformers.Dinov2Model(config).eval()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    backbone = load_backbone(f"hf:{tmp_path}", str(tmp_path / "pytorch_model.bin"))
    x = _x(28)
    with torch.inference_mode():
        expected = model(pixel_values=x).pooler_output
    torch.testing.assert_close(_outputs(backbone, x, ["embedding"])["embedding"], expected)


def test_a_file_that_fits_no_rule_names_the_first_missing_and_unexpected_keys(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 4), "stem.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The weights file .*x\.pth does not fit timm:test_resnet: \d+ missing keys "
        r"\['conv1\.0\.weight', 'conv1\.1\.weight', 'conv1\.1\.bias'\], 1 unexpected keys \['stem\.weight'\]\. "
        r"Pass a state dict of the same architecture \(docs/weights\.md lists the layouts each "
        r"source reads\)\.$",
    ):
        load_backbone("timm:test_resnet", str(tmp_path / "x.pth"), image_size=64)


def test_hf_weights_that_leave_tensors_random_are_an_error_not_a_log_line(tmp_path):
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=28, patch_size=14,
    )  # fmt: skip
    transformers.Dinov2Model(config).save_pretrained(tmp_path)
    transformers.BitImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=True
    ).save_pretrained(tmp_path)
    tensors = safetensors_torch.load_file(tmp_path / "model.safetensors")
    del tensors["layernorm.weight"]
    safetensors_torch.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        InvalidArgumentError,
        match=rf"^The weights of hf:{tmp_path} leave 1 tensor of Dinov2Model random "
        r"\(layernorm\.weight\); name the repository of a model with all its weights, or give "
        r"a weights file\.$",
    ):
        load_backbone(f"hf:{tmp_path}", "DEFAULT")
