"""Layer discovery, capture hooks, default layers and pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featurecache.exceptions import InvalidArgumentError, UnknownNameError
from featurecache.models._layers import (
    LayerInfo,
    capture,
    check_layers,
    default_pool,
    pool,
    pooled_size,
)
from featurecache.models._registry import list_layers


class Pair(nn.Module):
    def forward(self, x):
        return x, x


class Toy(nn.Module):
    """Known layer names: stem, act, block.0, block.1, block, pool, head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)  # overwrites the stem's output in place
        self.pair = Pair()  # returns a tuple: not capturable
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8))
        self.shared = nn.ReLU()  # runs twice: not capturable
        self.unused = nn.Linear(2, 2)  # never runs: not capturable
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x, _ = self.pair(self.act(self.stem(x)))
        x = self.shared(x)
        x = self.shared(self.block(x))
        return self.head(self.pool(x).flatten(1))


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return Toy().eval()


def test_list_layers_of_a_toy_model(toy):
    layers = list_layers(toy, image_size=16)
    assert [layer.name for layer in layers] == [
        "stem",
        "act",
        "block.0",
        "block.1",
        "block",
        "pool",
        "head",
        "embedding",
    ]
    by_name = {layer.name: layer for layer in layers}
    assert by_name["stem"].shape == (4, 16, 16) and by_name["stem"].kind == "map"
    assert by_name["block"].shape == (8, 8, 8)
    assert by_name["embedding"] == LayerInfo("embedding", (5,), "vector", 1.0, 7, True)
    assert [layer.depth_index for layer in layers] == list(range(8))
    assert [layer.depth for layer in layers] == [(i + 1) / 8 for i in range(8)]
    assert toy.stem._forward_hooks == {} and not toy.training


def test_list_layers_leaves_training_mode_and_hooks_as_found(toy):
    toy.train()
    toy.block[1].eval()
    list_layers(toy, image_size=16)
    assert toy.training and toy.stem.training and not toy.block[1].training
    assert all(not m._forward_hooks for m in toy.modules())


def test_resnet18_defaults_are_the_four_stages_and_the_embedding():
    layers = list_layers("resnet18", image_size=32)
    assert [layer.name for layer in layers if layer.default] == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "embedding",
    ]
    by_name = {layer.name: layer for layer in layers}
    assert by_name["layer1"].shape == (64, 8, 8)
    assert by_name["layer4"].shape == (512, 1, 1)
    assert by_name["embedding"].shape == (512,) and by_name["embedding"].depth == 1.0
    assert "fc" not in by_name  # the Identity classifier is the embedding
    assert "layer1.0.relu" not in by_name  # runs twice per block


def test_efficientnet_lite0_defaults_are_blocks_spread_by_depth():
    layers = list_layers("efficientnet_lite0", image_size=64)
    defaults = [layer.name for layer in layers if layer.default]
    assert defaults == ["blocks.2", "blocks.4", "blocks.10", "blocks.15", "embedding"]


@pytest.mark.slow
def test_vit_layers_are_tokens_with_cls_pooling():
    layers = list_layers("vit_b_32", image_size=64)
    by_name = {layer.name: layer for layer in layers}
    defaults = [layer.name for layer in layers if layer.default]
    assert defaults == [
        "encoder.layers.encoder_layer_2",
        "encoder.layers.encoder_layer_5",
        "encoder.layers.encoder_layer_8",
        "embedding",
    ]
    assert by_name["encoder.layers.encoder_layer_2"].shape == (5, 768)
    assert by_name["encoder.layers.encoder_layer_2"].kind == "tokens"
    assert default_pool("tokens") == "cls"


# ---------------------------------------------------------------- capture


def test_capture_equals_a_plain_forward(toy):
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode(), capture(toy, ["stem", "block", "embedding"]) as out:
        y = toy(x)
    with torch.inference_mode():
        stem = toy.stem(x)
        block = toy.block(torch.relu(stem))
    torch.testing.assert_close(out["embedding"], y)
    torch.testing.assert_close(out["stem"], stem)  # before the in-place ReLU
    assert (out["stem"] < 0).any()
    torch.testing.assert_close(out["block"], block)
    assert all(not m._forward_hooks for m in toy.modules())


def test_capture_removes_hooks_and_restores_training_when_forward_raises(toy):
    toy.train()
    toy.block[1].eval()
    bad = torch.randn(1, 5, 16, 16)  # 5 channels: the stem raises
    with pytest.raises(RuntimeError), capture(toy, ["stem", "block.1", "embedding"]):
        assert not toy.training  # capture runs the model in eval mode
        toy(bad)
    assert all(not m._forward_hooks for m in toy.modules())
    assert toy.training and toy.block[0].training and not toy.block[1].training


def test_capture_rejects_unknown_module_paths(toy):
    with pytest.raises(
        UnknownNameError,
        match=r"^Unknown layer 'stemm': the model has no module at this path\. Did you mean "
        r"'stem'.*Hint: run `featurecache layers MODEL`",
    ):
        with capture(toy, ["stemm"]):
            pass
    assert all(not m._forward_hooks for m in toy.modules())


def test_capture_rejects_tuple_outputs(toy):
    with pytest.raises(InvalidArgumentError, match=r"Layer 'pair' returned a tuple, not a tensor"):
        with torch.inference_mode(), capture(toy, ["pair"]):
            toy(torch.randn(1, 3, 16, 16))
    assert all(not m._forward_hooks for m in toy.modules())


# ---------------------------------------------------------------- check_layers


def test_check_layers_suggests_close_names(toy):
    layers = list_layers(toy, image_size=16)
    assert check_layers(layers, ["block", "embedding", "block"]) == ["block", "embedding"]
    assert check_layers(["a", "b"], "b") == ["b"]
    with pytest.raises(
        UnknownNameError,
        match=r"^Unknown layer 'blok' for toy\. Did you mean 'block', 'block\.1', 'block\.0'\? "
        r"Hint: run `featurecache layers toy` to list the layers it can capture\.$",
    ):
        check_layers(layers, ["stem", "blok"], model="toy")


def test_check_layers_rejects_an_empty_request():
    with pytest.raises(InvalidArgumentError, match="At least one layer must be requested"):
        check_layers(["a"], [])


# ---------------------------------------------------------------- pooling


def test_pool_maps_against_manual_ops():
    x = torch.randn(3, 5, 4, 4)
    torch.testing.assert_close(pool(x, "avg", "map"), x.mean(dim=(2, 3)))
    torch.testing.assert_close(pool(x, "max", "map"), x.flatten(2).max(dim=2).values)
    torch.testing.assert_close(
        pool(x, "avgmax", "map"),
        torch.cat([x.mean(dim=(2, 3)), x.flatten(2).max(dim=2).values], dim=1),
    )
    torch.testing.assert_close(pool(x, "flatten", "map"), x.reshape(3, -1))
    assert default_pool("map") == "avg"


def test_pool_recognises_channels_last_maps():
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(
        pool(x.permute(0, 2, 3, 1), "avgmax", "map"), pool(x, "avgmax", "map")
    )


def test_pool_tokens_and_vectors():
    x = torch.randn(2, 5, 7)
    torch.testing.assert_close(pool(x, "cls", "tokens"), x[:, 0])
    torch.testing.assert_close(pool(x, "mean", "tokens"), x.mean(dim=1))
    v = torch.randn(2, 7, dtype=torch.float16)
    out = pool(v, "none", "vector")
    assert out.dtype == torch.float32 and default_pool("vector") == "none"
    torch.testing.assert_close(out, v.float())


def test_pool_rejects_a_method_of_another_kind():
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The pooling method 'cls' does not apply to 'map' layers; map layers accept "
        r"'avg', 'max', 'avgmax', 'flatten'\.$",
    ):
        pool(torch.zeros(1, 2, 3, 3), "cls", "map")
    with pytest.raises(InvalidArgumentError, match=r"tokens layers accept 'cls', 'mean'"):
        pool(torch.zeros(1, 2, 3), "avg", "tokens")
    with pytest.raises(InvalidArgumentError, match=r"must have 4 dimensions"):
        pool(torch.zeros(1, 2, 3), "avg", "map")


def test_flatten_warns_on_huge_rows():
    with pytest.warns(UserWarning, match=r"gives 160000 floats per sample \(over 100000\)"):
        out = pool(torch.zeros(1, 100, 40, 40), "flatten", "map")
    assert out.shape == (1, 160000)


def test_pooled_size():
    layer = LayerInfo("x", (6, 4, 4), "map", 0.5, 0)
    assert [pooled_size(layer, m) for m in ("avg", "max", "avgmax", "flatten")] == [6, 6, 12, 96]
    assert pooled_size(LayerInfo("t", (5, 7), "tokens", 0.5, 0), "cls") == 7
    assert pooled_size(LayerInfo("s", (4, 4, 6), "map", 0.5, 0), "avg") == 6
