"""Conv-BN folding: the same features, and never a wrong fold."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from featurecache.models._fuse import fuse_conv_bn
from featurecache.models._layers import capture


def _randomize_bn(model):
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def test_resnet18_fused_layers_equal_the_original():
    torch.manual_seed(0)
    model = _randomize_bn(torchvision.models.resnet18(weights=None))
    model.fc = nn.Identity()
    probe = torch.randn(2, 3, 32, 32)
    layers = ["layer1", "layer3", "embedding"]
    fused = fuse_conv_bn(model, layers, probe)
    assert fused is not model
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == 0
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        with capture(model, layers) as expected:
            model(x)
            expected = dict(expected)
        with capture(fused, layers) as actual:
            fused(x)
    for layer in layers:
        torch.testing.assert_close(
            actual[layer],
            expected[layer],
            rtol=1e-4,
            atol=1e-4 * expected[layer].abs().max().item(),
        )
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


class _Trap(nn.Module):
    """conv is registered right before bn, but bn normalises the input, not conv's output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x)).mean((2, 3))


def test_a_fold_that_changes_the_output_is_refused():
    model = _randomize_bn(_Trap())
    assert fuse_conv_bn(model, ["embedding"], torch.randn(2, 3, 8, 8)) is model


def test_a_captured_convolution_is_never_fused():
    torch.manual_seed(0)
    model = _randomize_bn(torchvision.models.resnet18(weights=None))
    fused = fuse_conv_bn(model, ["layer1.0.conv1", "embedding"], torch.randn(2, 3, 32, 32))
    assert isinstance(fused.get_submodule("layer1.0.bn1"), nn.BatchNorm2d)
    assert isinstance(fused.get_submodule("layer1.0.bn2"), nn.Identity)
