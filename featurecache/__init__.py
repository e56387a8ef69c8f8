"""featurecache: extract frozen-backbone features once, cache them in HDF5.

Heavy modules (torch, torchvision) load on first use of a name that needs them,
so ``import featurecache.exceptions`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "extract": "featurecache._extract",
    "ExtractResult": "featurecache._extract",
    "list_backbones": "featurecache._backbones",
    "get_backbone": "featurecache._backbones",
    "load_backbone": "featurecache._backbones",
    "Backbone": "featurecache._backbones",
    "LoadedBackbone": "featurecache._backbones",
    "list_layers": "featurecache._layers",
    "LayerInfo": "featurecache._layers",
    "Preprocess": "featurecache._preprocess",
    "load_dataset": "featurecache._data",
    "Dataset": "featurecache._data",
    "predict": "featurecache._predict",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featurecache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
