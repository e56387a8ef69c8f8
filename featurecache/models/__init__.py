"""Stage 1, what a backbone is: the registry, its layers, preprocessing and BatchNorm folding."""

from featurecache.models._layers import LayerInfo, capture, discover_layers
from featurecache.models._preprocess import Preprocess
from featurecache.models._prompts import DEFAULT_PROMPTS
from featurecache.models._registry import (
    Backbone,
    LoadedBackbone,
    get_backbone,
    list_backbones,
    list_layers,
    load_backbone,
    read_weights,
    register_backbone,
    upgraded_depths,
)

__all__ = [
    "DEFAULT_PROMPTS",
    "Backbone",
    "LayerInfo",
    "LoadedBackbone",
    "Preprocess",
    "capture",
    "discover_layers",
    "get_backbone",
    "list_backbones",
    "list_layers",
    "load_backbone",
    "read_weights",
    "register_backbone",
    "upgraded_depths",
]
