"""Which layers of a backbone can be captured, capturing them with hooks, and pooling.

A layer is a module path of the backbone (``layer3``, ``features.4``, ``blocks.10``) whose
forward runs exactly once per forward pass and returns one tensor; ``embedding`` is the
model's own output once its classifier is replaced by ``Identity``.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from featurecache.core._spec import POOL_METHODS, check_image_size
from featurecache.exceptions import InvalidArgumentError, UnknownNameError, suggest

__all__ = [
    "EMBEDDING",
    "POOL_METHODS",
    "LayerInfo",
    "capture",
    "check_layers",
    "deepest",
    "stop_after",
    "StopForward",
    "Tap",
    "default_pool",
    "discover_layers",
    "DefaultRule",
    "default_rule_for",
    "pool",
    "pooled_size",
    "last_per_resolution",
    "spatial_key",
    "spread",
]

EMBEDDING = "embedding"


_KIND_BY_NDIM = {2: "vector", 3: "tokens", 4: "map"}  # ndim including the batch dimension
_FLATTEN_WARN = 100_000
_HEAD_TYPES = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    nn.Linear,
)


@dataclass(frozen=True)
class LayerInfo:
    """One capturable layer of a backbone.

    Attributes
    ----------
    name : str
        Module path (``layer3``) or ``embedding``.
    shape : tuple of int
        Output shape of one sample before pooling, as the module returns it.
    kind : {'map', 'tokens', 'vector'}
        ``map`` for ``(C, H, W)`` (or channels-last ``(H, W, C)``, as Swin returns),
        ``tokens`` for ``(T, D)``, ``vector`` for ``(D,)``.
    depth : float
        Position in forward execution order divided by the number of capturable layers up
        to the embedding, which is 1.0 (0 = input side). Heads computed from the embedding
        (OpenCLIP's and CLIP's ``embedding.proj``) come after it, above 1.0.
    depth_index : int
        Position in forward execution order (0-based).
    default : bool
        Whether the layer is in the backbone's default set.
    stage : bool
        Whether the library itself exposes the layer as a stage or block (timm's
        ``feature_info``, what ``forward_intermediates`` returns).
    prefix_tokens : int, optional
        For ``tokens`` layers of models that declare it: the class and register tokens
        before the patch tokens. ``mean`` then averages patch tokens only. ``None`` (unknown,
        torchvision's ViT) averages every token, as featurecache always has.
    exit_index : int, optional
        Position in the order the modules' forward calls complete, where
        :func:`stop_after` can end a pass (a :class:`Tap` completes where it is called, not
        where its tensor is made); ``None`` means ``depth_index``.
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    depth: float
    depth_index: int
    default: bool = False
    stage: bool = False
    prefix_tokens: int | None = None
    exit_index: int | None = field(default=None, compare=False)


# ---------------------------------------------------------------- discovery


def discover_layers(
    module: nn.Module,
    image_size: int,
    default_rule: DefaultRule | None = None,
    stages: Sequence[str] = (),
    prefix_tokens: int | None = None,
) -> list[LayerInfo]:
    """Run one dummy forward pass (batch 1, zeros) with hooks on every submodule.

    Modules that run more than once per forward pass, never run, or return something other
    than one tensor of 1 to 3 dimensions per sample are not capturable and are left out.
    ``default_rule`` (a backbone record's) marks the default layers besides the embedding;
    without one, the generic rule does. ``stages`` are marked as the library's own stages;
    ``prefix_tokens`` is recorded on every ``tokens`` layer.
    """
    check_image_size(image_size, "discover_layers", optional=False)
    modules = dict(module.named_modules())
    calls: Counter[str] = Counter()
    outputs: dict[str, Any] = {}  # insertion order = order in which forwards complete
    inputs: dict[str, Any] = {}

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, args: Any, output: Any) -> None:
            calls[name] += 1
            outputs.setdefault(name, output)
            inputs.setdefault(name, args[0] if args else None)

        return hook

    param = next(module.parameters(), None)
    x = torch.zeros(
        1,
        3,
        image_size,
        image_size,
        device=param.device if param is not None else "cpu",
        dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32,
    )
    flags = {m: m.training for m in module.modules()}
    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items() if n]
    try:
        module.eval()
        with torch.inference_mode():
            result = module(x)
    except Exception as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidArgumentError(
            f"The backbone failed on a dummy input of shape (1, 3, {image_size}, {image_size}): "
            f"{message}. Choose an image size the model accepts."
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in flags.items():
            m.training = flag

    if not isinstance(result, torch.Tensor) or result.ndim not in _KIND_BY_NDIM:
        raise InvalidArgumentError(
            "The backbone's output must be one tensor of shape (N, D), (N, T, D) or "
            f"(N, C, H, W). Got {_describe(result)} instead."
        )
    found = []
    for name, output in outputs.items():
        if calls[name] != 1 or not isinstance(output, torch.Tensor):
            continue
        if output.ndim not in _KIND_BY_NDIM:
            continue
        if output is result and _is_noop(modules[name]):
            continue  # the replaced classifier and friends: that is the embedding
        found.append((name, tuple(output.shape[1:]), _KIND_BY_NDIM[output.ndim]))
    body, heads = _forward_order(found, modules, outputs, inputs, result)
    n = len(body) + 1
    ordered = [*body, (EMBEDDING, tuple(result.shape[1:]), _KIND_BY_NDIM[result.ndim]), *heads]
    completed = {name: i for i, name in enumerate(outputs)}
    completed[EMBEDDING] = len(outputs)  # the model's own output: its forward ends last
    infos = [
        LayerInfo(
            name=name,
            shape=shape,
            kind=kind,
            depth=(i + 1) / n,
            depth_index=i,
            exit_index=completed[name],
        )  # fmt: skip
        for i, (name, shape, kind) in enumerate(ordered)
    ]
    rule = default_rule or _generic_defaults
    defaults = set(rule([i for i in infos if i.name != EMBEDDING], modules)) | {EMBEDDING}
    staged = set(stages)
    return [
        LayerInfo(
            i.name,
            i.shape,
            i.kind,
            i.depth,
            i.depth_index,
            default=i.name in defaults,
            stage=i.name in staged,
            prefix_tokens=prefix_tokens if i.kind == "tokens" else None,
            exit_index=i.exit_index,
        )
        for i in infos
    ]


class Tap(nn.Module):
    """Returns its input: a capturable name for a tensor the model makes elsewhere.

    :func:`discover_layers` places a tap right after the module that made its tensor
    (a Hugging Face ``hidden_states.K`` after block ``K``), not where the tap is called.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _forward_order(
    found: list[tuple],
    modules: dict[str, nn.Module],
    outputs: dict[str, Any],
    inputs: dict[str, Any],
    result: torch.Tensor,
) -> tuple[list[tuple], list[tuple]]:
    """The capturable layers in forward order: the body (before the embedding), the heads.

    Both in order of completion (what :func:`stop_after` relies on), each :class:`Tap`
    moved to just after the module that made its tensor. Heads are the modules fed the
    model's output (a projection of the embedding) and their submodules: they run on the
    embedding, so they come after it.
    """
    heads = {name for name, x in inputs.items() if x is result and name in outputs}
    heads |= {name for name in outputs if any(name.startswith(h + ".") for h in heads)}
    completed = list(outputs)
    position = {name: float(i) for i, name in enumerate(completed)}
    made_by: dict[int, str] = {}
    for name in completed:
        tensor = _first_tensor(outputs[name])
        if tensor is not None and not isinstance(modules[name], Tap):
            made_by.setdefault(id(tensor), name)
    for name in completed:
        maker = made_by.get(id(outputs[name])) if isinstance(modules[name], Tap) else None
        if maker is not None:
            position[name] = position[maker] + 0.5
    body = sorted((f for f in found if f[0] not in heads), key=lambda f: position[f[0]])
    after = sorted((f for f in found if f[0] in heads), key=lambda f: position[f[0]])
    return body, after


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module returns, or the first of its tuple (a transformers layer's)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _is_noop(module: nn.Module) -> bool:
    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    return all(isinstance(m, (nn.Identity, nn.Dropout)) for m in leaves)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def check_layers(
    layers: Iterable[LayerInfo | str],
    requested: str | Iterable[str],
    model: str = "MODEL",
) -> list[str]:
    """Validate requested layer names before any work is done.

    Parameters
    ----------
    layers : iterable of LayerInfo or str
        The capturable layers (from :func:`list_layers`) or their names.
    requested : str or iterable of str
        Layer names asked for.
    model : str
        Backbone name, for the hint in the error message.

    Returns
    -------
    list of str
        The requested names, duplicates removed, in the order given.

    Raises
    ------
    UnknownNameError
        A requested name is not a capturable layer; the message suggests close names.
    """
    valid = [layer.name if isinstance(layer, LayerInfo) else str(layer) for layer in layers]
    names = [requested] if isinstance(requested, str) else list(requested)
    if not names:
        raise InvalidArgumentError(
            f"At least one layer must be requested. Got none. "
            f"Hint: run `featurecache layers {model}` to list them."
        )
    known = set(valid)
    for name in names:
        if name not in known:
            raise UnknownNameError(
                f"Unknown layer {name!r} for {model}.{suggest(name, valid)} "
                f"Hint: run `featurecache layers {model}` to list the layers it can capture."
            )
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- default layers

#: ``rule(layers, modules) -> names``: a family's default layers, besides the embedding.
DefaultRule = Callable[[list[LayerInfo], dict[str, nn.Module]], list[str]]
_Rule = DefaultRule
_DEFAULT_RULES: dict[str, _Rule] = {}


def default_rule_for(family: str) -> DefaultRule:
    """The default-layer rule of an architecture family (the generic one for unknown families)."""
    return _DEFAULT_RULES.get(family, _generic_defaults)


def _default_rule(*families: str) -> Callable[[_Rule], _Rule]:
    """Register the rule choosing default layers (besides the embedding) for model families."""

    def register(rule: _Rule) -> _Rule:
        for family in families:
            _DEFAULT_RULES[family] = rule
        return rule

    return register


def _children(infos: list[LayerInfo], parent: str) -> list[LayerInfo]:
    """The direct children of ``parent`` (``""`` = top level), in execution order."""
    return [i for i in infos if _parent(i.name) == parent]


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def spatial_key(info: LayerInfo) -> tuple[int, ...]:
    if info.kind == "map":
        return _spatial(info.shape)
    return info.shape[:1]  # tokens: the sequence length


def last_per_resolution(infos: list[LayerInfo], k: int = 4) -> list[str]:
    """The last layer at each resolution, for the ``k`` deepest resolutions.

    This is the end of each stage (ResNet's layer1..layer4, the feature-pyramid levels).
    """
    ends: list[LayerInfo] = []
    for info in infos:
        if ends and spatial_key(ends[-1]) == spatial_key(info):
            ends[-1] = info
        else:
            ends.append(info)
    return [i.name for i in ends[-k:]]


def spread(infos: list[LayerInfo], k: int = 3) -> list[str]:
    """``k`` layers at 1/(k+1), 2/(k+1)… of the sequence (its last layer is left to the embedding)."""
    n = len(infos)
    picks = sorted({max(0, round(n * (j + 1) / (k + 1)) - 1) for j in range(k)})
    return [infos[p].name for p in picks]


@_default_rule("resnet")
def _resnet_defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    return ["layer1", "layer2", "layer3", "layer4"]


@_default_rule("densenet")
def _densenet_defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    return [i.name for i in _children(infos, "features") if "denseblock" in i.name]


@_default_rule("vgg")
def _vgg_defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    pools = [i for i in _children(infos, "features") if isinstance(modules[i.name], nn.MaxPool2d)]
    return [i.name for i in pools[-4:]]


@_default_rule("efficientnet", "mobilenetv2", "mobilenetv3")
def _features_stages_defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    # features.0 is the stem and features[-1] the 1x1 head convolution.
    return last_per_resolution(_children(infos, "features")[1:-1])


@_default_rule("convnext", "swin_transformer")
def _features_defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    return last_per_resolution(_children(infos, "features"))


@_default_rule("efficientnet_lite")
def _lite_defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    return last_per_resolution(_children(infos, "blocks"))


@_default_rule("vision_transformer")
def _vit_defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    return spread(_children(infos, "encoder.layers"))


def _generic_defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    """Any other model: the ends of the stages of its trunk.

    The trunk is the container whose capturable children span the most resolutions
    (``features``, ``trunk_output``, the model itself); head modules (global pooling, flatten, dropout, linear) are skipped.
    """
    by_parent: dict[str, list[LayerInfo]] = defaultdict(list)
    for info in infos:
        if info.kind in ("map", "tokens") and not isinstance(modules[info.name], _HEAD_TYPES):
            by_parent[_parent(info.name)].append(info)
    if not by_parent:
        return []
    # The trunk spans the most resolutions (its children are stages, not blocks of one stage).
    trunk = max(by_parent.values(), key=lambda c: (len({spatial_key(i) for i in c}), len(c)))
    if len({spatial_key(i) for i in trunk}) > 1:
        return last_per_resolution(trunk)
    return spread(trunk)


# ---------------------------------------------------------------- capture


@contextmanager
def capture(module: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the outputs of some layers during the forward passes run inside the block.

    Sets the module to eval mode; on exit removes every hook and restores each submodule's
    ``training`` flag, also when the forward pass raised.

    Parameters
    ----------
    module : torch.nn.Module
        The backbone.
    names : iterable of str
        Module paths and/or ``embedding`` (the module's own output).

    Yields
    ------
    dict of str to torch.Tensor
        Filled by each forward pass: ``name -> (N, ...)`` output (a copy, so later in-place
        operations of the model cannot change it). A later forward pass overwrites it.
    """
    names = list(dict.fromkeys(names))
    modules = dict(module.named_modules())
    valid = [n for n in modules if n] + [EMBEDDING]
    for name in names:
        if name == EMBEDDING or (name and name in modules):
            continue
        raise UnknownNameError(
            f"Unknown layer {name!r}: the model has no module at this path.{suggest(name, valid)} "
            "Hint: run `featurecache layers MODEL` to list the layers it can capture."
        )
    captured: dict[str, torch.Tensor] = {}
    flags = {m: m.training for m in module.modules()}
    handles = []
    try:
        for name in names:
            target = module if name == EMBEDDING else modules[name]
            handles.append(target.register_forward_hook(_store(captured, name, name != EMBEDDING)))
        module.eval()
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in flags.items():
            m.training = flag


class StopForward(Exception):
    """Raised by :func:`stop_after`'s hook to end a forward pass; caught by its caller."""


@contextmanager
def stop_after(module: nn.Module, name: str | None) -> Iterator[None]:
    """End every forward pass run inside the block once layer ``name`` has run.

    The deepest requested layer's forward hook raises :class:`StopForward` after the hooks
    registered before it (:func:`capture`'s) have stored its output, so the layers after it
    are never computed. Everything computed is computed as in the full pass, bit for bit.
    ``None`` or ``embedding`` (the model's own output) stops nothing.

    Raises
    ------
    StopForward
        From ``module(x)`` inside the block, when ``name`` has run.
    """
    if name is None or name == EMBEDDING:
        yield
        return

    def stop(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        raise StopForward(name)

    handle = module.get_submodule(name).register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


def deepest(infos: Iterable[LayerInfo]) -> str | None:
    """The requested layer whose forward completes last (:attr:`LayerInfo.exit_index`, else
    :attr:`LayerInfo.depth_index`): a pass may end there with every one captured."""
    infos = list(infos)
    if not infos:
        return None
    return max(infos, key=lambda i: i.depth_index if i.exit_index is None else i.exit_index).name


def _store(captured: dict[str, torch.Tensor], name: str, copy: bool) -> Callable:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise InvalidArgumentError(
                f"Layer {name!r} returned {_describe(output)}, not a tensor, so it cannot be "
                "captured. Hint: run `featurecache layers MODEL` to list the layers it can capture."
            )
        # A later in-place op (ReLU(inplace=True) after a BatchNorm) would change the output.
        captured[name] = output.detach().clone() if copy else output.detach()

    return hook


# ---------------------------------------------------------------- pooling


def default_pool(kind: str) -> str:
    """The default pooling of a layer kind: ``avg`` for maps, ``cls`` for tokens, ``none`` for vectors."""
    return _methods(kind)[0]


def _methods(kind: str) -> tuple[str, ...]:
    if kind not in POOL_METHODS:
        raise InvalidArgumentError(
            f"The 'kind' parameter must be one of {tuple(POOL_METHODS)}. Got {kind!r} instead."
        )
    return POOL_METHODS[kind]


def _check_method(method: str, kind: str) -> None:
    methods = _methods(kind)
    if method not in methods:
        raise InvalidArgumentError(
            f"The pooling method {method!r} does not apply to {kind!r} layers; {kind} layers "
            f"accept {', '.join(repr(m) for m in methods)}.{suggest(str(method), methods)}"
        )


def pool(
    tensor: torch.Tensor, method: str, kind: str, prefix_tokens: int | None = None
) -> torch.Tensor:
    """Pool a batch of layer outputs into one row per sample.

    Parameters
    ----------
    tensor : torch.Tensor
        ``(N, C, H, W)`` for ``map`` (channels-last ``(N, H, W, C)`` is recognised by its two
        equal spatial dimensions, inputs being square), ``(N, T, D)`` for ``tokens``,
        ``(N, D)`` for ``vector``.
    method : str
        ``map``: ``avg``, ``max``, ``avgmax`` (``[avg, max]`` concatenated), ``flatten``;
        ``tokens``: ``cls`` (token 0), ``mean`` (over the patch tokens), ``cls+mean`` (both
        concatenated); ``vector``: ``none``.
    kind : {'map', 'tokens', 'vector'}
    prefix_tokens : int, optional
        Class and register tokens before the patch tokens (:attr:`LayerInfo.prefix_tokens`);
        ``None`` averages every token.

    Returns
    -------
    torch.Tensor
        ``float32`` of shape ``(N, n_features)``.

    Raises
    ------
    InvalidArgumentError
        The method does not apply to this kind, or the tensor has the wrong number of dimensions.
    """
    _check_method(method, kind)
    ndim = {"map": 4, "tokens": 3, "vector": 2}[kind]
    if tensor.ndim != ndim:
        raise InvalidArgumentError(
            f"A {kind!r} layer output must have {ndim} dimensions (batch first). "
            f"Got shape {tuple(tensor.shape)} instead."
        )
    x = tensor.float()
    if kind == "vector":
        out = x
    elif kind == "tokens":
        out = _pool_tokens(x, method, prefix_tokens)
    elif method == "flatten":
        out = x.flatten(1)
        if out.shape[1] > _FLATTEN_WARN:
            warnings.warn(
                f"Flattening a map of shape {tuple(tensor.shape[1:])} gives {out.shape[1]} floats "
                f"per sample (over {_FLATTEN_WARN}); the cache will be large. "
                "Use 'avg', 'max' or 'avgmax' pooling to keep one value per channel.",
                stacklevel=2,
            )
    else:
        if _channels_last(tuple(x.shape[1:])):
            x = x.permute(0, 3, 1, 2)
        parts = []
        if method in ("avg", "avgmax"):
            parts.append(x.mean(dim=(2, 3)))
        if method in ("max", "avgmax"):
            parts.append(x.amax(dim=(2, 3)))
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return out.contiguous()


def _pool_tokens(x: torch.Tensor, method: str, prefix_tokens: int | None) -> torch.Tensor:
    if prefix_tokens == 0 and method != "mean":
        raise InvalidArgumentError(
            f"The pooling method {method!r} needs a class token, and this model has none; "
            "use 'mean'."
        )
    parts = []
    if method in ("cls", "cls+mean"):
        parts.append(x[:, 0])
    if method in ("mean", "cls+mean"):
        parts.append(x[:, prefix_tokens or 0 :].mean(dim=1))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _channels_last(shape: Sequence[int]) -> bool:
    """``(H, W, C)`` rather than ``(C, H, W)``: inputs are square, so H == W."""
    d1, d2, d3 = shape
    return d2 != d3 and d1 == d2


def _spatial(shape: Sequence[int]) -> tuple[int, int]:
    return tuple(shape[:2]) if _channels_last(shape) else tuple(shape[1:])


def pooled_size(info: LayerInfo, method: str) -> int:
    """Number of features a layer gives with a pooling method (without running the model)."""
    _check_method(method, info.kind)
    if info.kind == "vector" or method == "flatten":
        return math.prod(info.shape)
    if info.kind == "tokens":
        return info.shape[-1] * (2 if method == "cls+mean" else 1)
    channels = info.shape[-1] if _channels_last(info.shape) else info.shape[0]
    return 2 * channels if method == "avgmax" else channels
