"""Early exit: the forward pass ends after the deepest requested layer, and every layer it
returns equals the full pass's bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from featurecache.data._datasets import Dataset
from featurecache.engines._runner import Plan, ShardRunner
from featurecache.models._layers import StopForward, capture, deepest, stop_after
from featurecache.models._rebuild import feature_config
from featurecache.models._registry import load_backbone


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3)
        self.second = nn.Conv2d(4, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.second(self.first(x)).mean((2, 3)))


def test_stop_after_ends_the_pass_after_the_captured_layer_and_removes_its_hook():
    toy = _Toy().eval()
    ran = []
    toy.second.register_forward_hook(lambda *args: ran.append("second"))
    with torch.inference_mode(), capture(toy, ["first"]) as outputs, stop_after(toy, "first"):
        with pytest.raises(StopForward):
            toy(torch.zeros(1, 3, 8, 8))
        assert outputs["first"].shape == (1, 4, 6, 6) and ran == []
    assert toy(torch.zeros(1, 3, 8, 8)).shape == (1, 2) and ran == ["second"]  # hook removed
    with stop_after(toy, "embedding"), torch.inference_mode():
        toy(torch.zeros(1, 3, 8, 8))  # the model's own output stops nothing


def _images(n=6, side=40) -> Dataset:
    pixels = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return Dataset.from_arrays(pixels, np.arange(n) % 2, ["train"] * n, ["a", "b"])


def _runners(model: str):
    backbone = load_backbone(model, "none", image_size=32)
    infos = {info.name: info for info in backbone.layers}
    config = feature_config(backbone, "avg", "float32", "float32")
    device = torch.device("cpu")
    early, full = (
        ShardRunner(backbone, infos, "avg", config, device, early_exit=flag)
        for flag in (True, False)
    )
    return early, full, infos


def _features(runner: ShardRunner, layers: tuple[str, ...], dataset: Dataset):
    plan = Plan(len(dataset), len(dataset), ((0, layers),))
    (result,) = runner.run(dataset, plan, 4, 0)
    return result.features


@pytest.mark.parametrize("model", ["resnet18", "efficientnet_lite0"])
def test_early_exit_equals_the_full_pass_bit_for_bit(model):
    early, full, infos = _runners(model)
    dataset = _images()
    names = [name for name in infos if name != "embedding"]
    # Single early, middle and late layers, and sets whose deepest layer ends the pass.
    requests = [(name,) for name in names[:: max(1, len(names) // 8)]]
    requests += [tuple(names[:3]), (names[1], names[len(names) // 2]), (names[2], "embedding")]
    for layers in requests:
        got, expected = _features(early, layers, dataset), _features(full, layers, dataset)
        assert set(got) == set(layers)
        for layer in layers:
            assert np.array_equal(got[layer], expected[layer]), (model, layers, layer)


def test_early_exit_skips_the_layers_after_the_deepest_requested():
    early, full, infos = _runners("resnet18")
    assert deepest(infos[name] for name in ("layer2", "layer1.0")) == "layer2"
    calls = []
    for runner in (early, full):
        module = runner.model_for(("layer1",))
        handle = module.layer4.register_forward_hook(
            lambda *args, r=runner: calls.append(r) and None
        )
        try:
            _features(runner, ("layer1",), _images())
        finally:
            handle.remove()
    assert full in calls and early not in calls


def test_the_fold_check_runs_only_as_far_as_the_pass():
    from featurecache.models._fuse import fuse_conv_bn

    backbone = load_backbone("resnet18", "none", image_size=32)
    ran = []
    handle = backbone.module.layer4.register_forward_hook(lambda *args: ran.append(1) and None)
    try:
        probe = torch.randn(1, 3, 32, 32)
        fused = fuse_conv_bn(backbone.module.eval(), ["layer1"], probe, stop="layer1")
        assert fused is not backbone.module and ran == []  # folded, checked up to layer1 only
        fuse_conv_bn(backbone.module, ["layer1"], probe)
        assert ran  # without a stop the check compares the model's output too
    finally:
        handle.remove()
