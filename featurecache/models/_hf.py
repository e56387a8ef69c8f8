"""The Hugging Face source: ``hf:REPO_ID`` vision models (the ``[hf]`` extra).

``AutoModel`` (the vision tower of two-tower models such as SigLIP) with the repository's
image processor. Every hidden state is a layer (``hidden_states.K``), all captured in one
pass through ``output_hidden_states``; the ``embedding`` is the model's pooled output.
Models with a ``visual_projection`` (CLIP) also give ``embedding.proj``, the projected
embedding that ``get_image_features`` returns. ``REPO_ID`` may also be a local folder saved
with ``save_pretrained`` (config, processor, tokenizer).

A weights file is mapped by :func:`_map_weights` (``save_pretrained``'s own keys, or a folder
saved with it). Two-tower models whose zero-shot convention is known (:data:`_TEXT_INPUTS`: SigLIP, CLIP)
store a zero-shot classifier built by their text tower (:func:`_build_text_tower`).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from featurecache.exceptions import DownloadError, InvalidArgumentError, UnknownNameError
from featurecache.models._layers import LayerInfo, Tap, spread
from featurecache.models._preprocess import Preprocess
from featurecache.models._record import Backbone, Resolved, Source, first_line, offline, require
from featurecache.models._weights import drop_transient, read_weights, split_prefix
from featurecache.models._zeroshot import TextTower

__all__ = ["SOURCE", "HiddenStates"]

PREFIX = "hf"
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

#: Two-tower model types with a known zero-shot convention: how their tokenizer is called, as
#: transformers' zero-shot-image-classification pipeline calls it. SigLIP was trained on texts
#: padded to the text tower's full length (``padding="max_length"``, 64 tokens); CLIP pads to
#: the longest text. Both compare L2-normalised ``get_image_features`` and
#: ``get_text_features`` scaled by ``logit_scale.exp()`` (plus ``logit_bias``, SigLIP).
_TEXT_INPUTS = {
    "clip": {"padding": True, "truncation": True},
    "siglip": {"padding": "max_length", "truncation": True},
}


def _transformers() -> Any:
    return require("transformers", "hf", "An hf: backbone")


def names(pattern: str | None = None) -> list[str]:
    """Hub repositories are not listed offline: any vision model's repository id works."""
    return []


def record(repo: str) -> Backbone:
    """The record of ``hf:REPO_ID``: its config and image processor (hub cache or a folder)."""
    transformers = _transformers()
    local = {"local_files_only": offline()}
    try:
        config = transformers.AutoConfig.from_pretrained(repo, **local)
        processor = transformers.AutoImageProcessor.from_pretrained(repo, **local)
    except OSError as exc:
        raise (DownloadError if not os.path.isdir(repo) else UnknownNameError)(
            f"Could not read the config and image processor of hf:{repo} through transformers "
            f"({first_line(exc)}). To work offline, download the repository once into the "
            "Hugging Face hub cache (HF_HOME), or name a local folder saved with save_pretrained."
        ) from exc
    return Backbone(
        name=f"{PREFIX}:{repo}",
        family=f"hf.{config.model_type}",
        builder=partial(_build, repo, config),
        catalog=_Catalog(repo),
        image_size=_crop(processor),
        default_layers=_defaults,
        source=PREFIX,
        library="transformers",
        preprocess=partial(_preprocess, processor),
        classifier="",
        stages=_stages,
        prefix_tokens=partial(_prefix_tokens, config),
        zeroshot=partial(_build_text_tower, repo, config)
        if config.model_type in _TEXT_INPUTS
        else None,
        map_weights=_map_weights,
        text_tower=_text_tower,
    )


@dataclass(frozen=True)
class _Catalog:
    repo: str

    def names(self) -> tuple[str, ...]:
        return ("DEFAULT",)

    def resolve(self, key: str) -> Resolved | None:
        if key.upper() != "DEFAULT":
            return None
        return Resolved(id=f"hf:{self.repo}", pretrained=self.repo)

    def default_name(self) -> str:
        return "DEFAULT"


class HiddenStates(nn.Module):
    """A Hugging Face vision model whose hidden states pass through taps ``hidden_states.K``.

    ``forward`` returns the pooled output (flattened), the ``embedding``. With a
    ``projection`` (CLIP's ``visual_projection``), ``embedding.proj`` runs it on the pooled
    output in the same pass: ``get_image_features``' output, which zero-shot compares with text.
    """

    def __init__(
        self,
        model: nn.Module,
        n_states: int,
        projection: nn.Module | None = None,
        *,
        tower: str = "",
        base_prefix: str = "",
    ):
        super().__init__()
        self.model = model
        self.tower = tower  # the image tower's attribute in the AutoModel (vision_model)
        self.base_prefix = base_prefix  # the AutoModel's base_model_prefix (task checkpoints)
        self.hidden_states = nn.ModuleList(Tap() for _ in range(n_states))
        # resample the position embeddings to any input size, transformers' own way (a
        # no-op at the native size); DINOv2 always does
        forward = inspect.signature(model.forward).parameters
        self.resample = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in forward else {}
        )
        if projection is not None:
            self.embedding = nn.Module()
            self.embedding.proj = projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x, output_hidden_states=True, **self.resample)
        for tap, state in zip(self.hidden_states, out.hidden_states, strict=False):
            tap(state)
        pooled = out.pooler_output
        pooled = pooled.flatten(1) if pooled.ndim > 2 else pooled
        if hasattr(self, "embedding"):
            self.embedding.proj(pooled)  # a tap: captured when asked for, never fed forward
        return pooled


def _build(repo: str, config: Any, image_size: int, resolved: Resolved) -> nn.Module:
    full = _model(repo, config, resolved)
    projection = getattr(full, "visual_projection", None)  # CLIP: get_image_features projects
    tower = "vision_model" if hasattr(full, "vision_model") else ""
    model = getattr(full, "vision_model", full)  # two-tower models: the image tower
    n_states = _n_states(getattr(config, "vision_config", config))
    base_prefix = str(getattr(full, "base_model_prefix", "") or "")
    return HiddenStates(model, n_states, projection, tower=tower, base_prefix=base_prefix)


def _model(repo: str, config: Any, resolved: Resolved, load_file: bool = False) -> nn.Module:
    """The whole ``AutoModel``: the repository's weights, or random ones (the caller seeds).

    ``load_file`` loads a whole-model weights file (both towers: the zero-shot classifier's
    text side); the registry loads the image tower itself otherwise. Weights the repository
    lacks would stay random: an error, not transformers' logged warning.
    """
    transformers = _transformers()
    if not resolved.pretrained:
        model = transformers.AutoModel.from_config(config)
        if load_file and resolved.path is not None:
            _load_whole(model, read_weights(resolved.path), resolved.path)
        return model
    try:
        model, info = transformers.AutoModel.from_pretrained(
            repo, local_files_only=offline(), output_loading_info=True
        )
    except OSError as exc:
        raise DownloadError(
            f"Could not load the weights of hf:{repo} through transformers "
            f"({first_line(exc)}). To work offline, download the repository once into the "
            "Hugging Face hub cache (HF_HOME), or give a local weights file."
        ) from exc
    missing = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
    if missing:
        raise InvalidArgumentError(
            f"The weights of hf:{repo} leave {len(missing)} tensor{'s' * (len(missing) > 1)} "
            f"of {type(model).__name__} "
            f"random ({', '.join(map(str, list(missing)[:3]))}); name the repository of a "
            "model with all its weights, or give a weights file."
        )
    return model


def _load_whole(model: nn.Module, state_dict: dict, path: str) -> None:
    """Load a whole-model checkpoint (``save_pretrained``'s keys) strictly."""
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    if prefix:
        state_dict = {k.removeprefix(prefix + "."): v for k, v in state_dict.items()}
    state_dict = drop_transient(state_dict, model)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InvalidArgumentError(
            f"The weights file {path} does not fit {type(model).__name__}: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}."
        )


def _map_weights(state_dict: dict, model: nn.Module) -> dict:
    """Hugging Face's rule: the keys of ``save_pretrained`` (``model.safetensors`` or
    ``pytorch_model.bin`` of the ``AutoModel``, or of a task model whose keys carry its
    ``base_model_prefix``), or featurecache's layout (``model.*``, ``embedding.proj.*``).

    Two-tower models: ``vision_model.*`` is the image tower, ``visual_projection`` becomes
    ``embedding.proj``, and the text tower is left to the zero-shot classifier. Other
    models: every key goes under ``model.``.
    """
    if all(key.startswith(("model.", "embedding.")) for key in state_dict):
        return dict(state_dict)
    if model.base_prefix:
        state_dict = {k.removeprefix(model.base_prefix + "."): v for k, v in state_dict.items()}
    if not model.tower:
        return {f"model.{key}": value for key, value in state_dict.items()}
    image, rest = split_prefix(state_dict, model.tower + ".")
    mapped = {f"model.{key}": value for key, value in image.items()}
    for key, value in rest.items():
        if key.startswith("visual_projection."):
            mapped["embedding.proj." + key.removeprefix("visual_projection.")] = value
        elif not key.startswith(_TEXT_SIDE) and key not in ("logit_scale", "logit_bias"):
            mapped[key] = value  # neither tower: named as unexpected
    return mapped


_TEXT_SIDE = ("text_model.", "text_projection.")


def _text_tower(state_dict: dict) -> bool:
    """A whole two-tower checkpoint: it holds ``text_model.*`` (a task prefix allowed)."""
    return any(key.startswith("text_model.") or ".text_model." in key for key in state_dict)


#: What ``get_text_features`` takes from a tokenizer's output (a generic fast tokenizer adds
#: ``token_type_ids``, which CLIP and SigLIP text towers do not accept).
_TEXT_KEYS = ("input_ids", "attention_mask")


def _build_text_tower(repo: str, config: Any, resolved: Resolved, image_size: int) -> TextTower:
    """The model's text tower (``get_text_features``), texts tokenized by the repository's own
    tokenizer as :data:`_TEXT_INPUTS` says (``image_size`` is the config's own here).

    Its classifier reads the layer equal to ``get_image_features``: ``embedding.proj`` when
    the model projects (CLIP), else ``embedding`` (SigLIP's pooled output is its image
    embedding).
    """
    tokenizer = _tokenizer(repo)
    model = _model(repo, config, resolved, load_file=True).eval()
    inputs = dict(_TEXT_INPUTS[config.model_type])
    if inputs["padding"] == "max_length":
        inputs["max_length"] = int(config.text_config.max_position_embeddings)

    def embed_texts(texts: list[str]) -> torch.Tensor:
        encoded = tokenizer(texts, **inputs)
        encoded = {key: encoded[key] for key in _TEXT_KEYS if key in encoded}
        return _features(model.get_text_features(**encoded))

    return TextTower(
        model, embed_texts,
        layer="embedding.proj" if hasattr(model, "visual_projection") else "embedding",
        source=f"hf:{repo} text tower ({type(model).__name__}), weights {resolved.id}",
    )  # fmt: skip


def _tokenizer(repo: str) -> Any:
    """The repository's own tokenizer (``AutoTokenizer``); a one-line error when it has none."""
    transformers = _transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(repo, local_files_only=offline())
    except (OSError, ValueError, ImportError) as exc:
        raise (UnknownNameError if os.path.isdir(repo) else DownloadError)(
            f"hf:{repo} has a text tower but transformers could not load its tokenizer, which "
            f"the zero-shot classifier needs ({first_line(exc)}). Save the model's tokenizer "
            "beside its config (tokenizer.save_pretrained(FOLDER): tokenizer.json and "
            "tokenizer_config.json; SigLIP's spiece.model also needs the sentencepiece "
            "package), or download the whole repository into the Hugging Face hub cache."
        ) from exc
    return partial(tokenizer, return_tensors="pt")


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor (transformers 4) or an output with the pooled one (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _n_states(config: Any) -> int:
    layers = getattr(config, "num_hidden_layers", None)
    if layers is not None:
        return int(layers) + 1  # the embeddings, then every layer
    return len(getattr(config, "depths", ())) + 1


def _crop(processor: Any) -> int:
    return _geometry(processor)[1]


def _geometry(processor: Any) -> tuple[int, int, str]:
    """``(resize_size, crop_size, mode)`` of the processor's resize and centre crop.

    Three conventions: resize the short side then crop (``do_center_crop`` with
    ``shortest_edge``); ConvNeXT's ``crop_pct`` (short side to ``shortest_edge / crop_pct``,
    then a crop of ``shortest_edge``, below 384 px); or resize to ``height`` x ``width``
    (then crop, when ``do_center_crop``).
    """
    size = dict(processor.size or {})
    crop = dict(getattr(processor, "crop_size", None) or {})
    center = bool(getattr(processor, "do_center_crop", False)) and bool(crop.get("height"))
    edge = size.get("shortest_edge")
    if edge and center:
        return int(edge), int(crop["height"]), "crop"
    if edge and getattr(processor, "crop_pct", None) and edge < 384:
        return int(edge / processor.crop_pct), int(edge), "crop"
    side = int(size.get("height") or edge or 224)
    return side, int(crop["height"]) if center else side, "squash"


def _preprocess(processor: Any, resolved: Resolved, image_size: int | None) -> Preprocess:
    """The processor's resize, centre crop and normalisation; ``image_size`` keeps the ratio.

    Processors on transformers' torchvision backend resize uint8 tensors (antialiased);
    the others resize with PIL. Both start an odd centre-crop margin at ``(H - S) // 2``.
    """
    resize, crop, mode = _geometry(processor)
    if image_size is not None and image_size != crop:
        resize, crop = round(image_size * resize / crop), image_size
    resample = getattr(processor, "resample", 2)
    return Preprocess(
        resize_size=resize,
        crop_size=crop,
        mean=tuple(processor.image_mean),
        std=tuple(processor.image_std),
        interpolation=_RESAMPLE.get(int(resample), "bilinear"),
        resize=mode,
        backend="tensor" if _torchvision_backend(processor) else "pil",
        crop_offset="floor",
    )


def _torchvision_backend(processor: Any) -> bool:
    """transformers 5 names its backend; in 4.x the torchvision processors are ``...Fast``."""
    backend = getattr(processor, "backend", None)
    if isinstance(backend, str):
        return backend == "torchvision"
    return type(processor).__name__.endswith("Fast")


def _stages(model: nn.Module) -> list[str]:
    return [f"hidden_states.{i}" for i in range(len(model.hidden_states))]


def _prefix_tokens(config: Any, model: nn.Module) -> int:
    vision = getattr(config, "vision_config", config)
    if config.model_type.startswith("siglip"):
        return 0  # SigLIP has no class token; its pooled output is an attention pool
    return 1 + int(getattr(vision, "num_register_tokens", 0) or 0)


def _defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    found = {info.name: info for info in infos}
    stages = [found[name] for name in _stages(modules[""]) if name in found]
    extra = ["embedding.proj"] if "embedding.proj" in found else []
    return spread(stages[1:] or infos) + extra


SOURCE = Source(prefix=PREFIX, extra="hf", record=record, names=names, syntax="hf:REPO_ID")
