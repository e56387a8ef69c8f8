"""featurecache: extract frozen-backbone features once, cache them in HDF5.

Heavy modules (torch, torchvision) load on first use of a name that needs them,
so ``import featurecache.exceptions`` stays light.
"""

from __future__ import annotations

from featurecache.core._lazy import attach

__version__ = "0.1.0"

_LAZY = {
    "extract": "featurecache.extraction._extract",
    "extract_spec": "featurecache.extraction._extract",
    "ExtractResult": "featurecache.extraction._extract",
    "FeatureSpec": "featurecache.core._spec",
    "RunOptions": "featurecache.engines._options",
    "LocalEngine": "featurecache.engines._local",
    "RayEngine": "featurecache.engines._ray",
    "list_backbones": "featurecache.models._registry",
    "get_backbone": "featurecache.models._registry",
    "load_backbone": "featurecache.models._registry",
    "Backbone": "featurecache.models._registry",
    "LoadedBackbone": "featurecache.models._registry",
    "list_layers": "featurecache.models._registry",
    "LayerInfo": "featurecache.models._layers",
    "Preprocess": "featurecache.models._preprocess",
    "load_dataset": "featurecache.data._datasets",
    "Dataset": "featurecache.data._datasets",
    "predict": "featurecache.app._predict",
    "FeatureConfig": "featurecache.cache._config",
    "open_cache": "featurecache.cache._reader",
    "StoredClassifier": "featurecache.cache._classifiers",
    "DEFAULT_PROMPTS": "featurecache.models._prompts",
}

__all__ = sorted([*_LAZY, "__version__"])
__getattr__, __dir__ = attach(__name__, _LAZY)
