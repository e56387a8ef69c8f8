"""The Hugging Face source: ``hf:REPO_ID`` vision models (the ``[hf]`` extra).

``AutoModel`` (the vision tower of two-tower models such as SigLIP) with the repository's
image processor. Every hidden state is a layer (``hidden_states.K``), all captured in one
pass through ``output_hidden_states``; the ``embedding`` is the model's pooled output.
``REPO_ID`` may also be a local folder saved with ``save_pretrained`` (config, processor).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from featurecache.exceptions import DownloadError, UnknownNameError
from featurecache.models._layers import LayerInfo, spread
from featurecache.models._preprocess import Preprocess
from featurecache.models._record import Backbone, Resolved, Source, first_line, offline, require

__all__ = ["SOURCE", "HiddenStates"]

PREFIX = "hf"
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


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

    ``forward`` returns the pooled output (flattened), the ``embedding``.
    """

    def __init__(self, model: nn.Module, n_states: int) -> None:
        super().__init__()
        self.model = model
        self.hidden_states = nn.ModuleList(_Tap() for _ in range(n_states))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x, output_hidden_states=True)
        for tap, state in zip(self.hidden_states, out.hidden_states, strict=False):
            tap(state)
        pooled = out.pooler_output
        return pooled.flatten(1) if pooled.ndim > 2 else pooled


class _Tap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _build(repo: str, config: Any, image_size: int, resolved: Resolved) -> nn.Module:
    transformers = _transformers()
    if resolved.pretrained:
        try:
            model = transformers.AutoModel.from_pretrained(repo, local_files_only=offline())
        except OSError as exc:
            raise DownloadError(
                f"Could not load the weights of hf:{repo} through transformers "
                f"({first_line(exc)}). To work offline, download the repository once into the "
                "Hugging Face hub cache (HF_HOME), or give a local weights file."
            ) from exc
    else:
        model = transformers.AutoModel.from_config(config)
    model = getattr(model, "vision_model", model)  # two-tower models: the image tower
    n_states = _n_states(getattr(config, "vision_config", config))
    return HiddenStates(model, n_states)


def _n_states(config: Any) -> int:
    layers = getattr(config, "num_hidden_layers", None)
    if layers is not None:
        return int(layers) + 1  # the embeddings, then every layer
    return len(getattr(config, "depths", ())) + 1


def _crop(processor: Any) -> int:
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop and crop.get("height"):
        return int(crop["height"])
    size = processor.size
    return int(size.get("height") or size.get("shortest_edge") or 224)


def _preprocess(processor: Any, resolved: Resolved, image_size: int | None) -> Preprocess:
    """The processor's resize, centre crop and normalisation; ``image_size`` keeps the ratio."""
    crop = _crop(processor)
    size = processor.size
    if getattr(processor, "do_center_crop", False) and size.get("shortest_edge"):
        resize, mode = int(size["shortest_edge"]), "crop"
    else:  # resized to height x width, no crop
        resize, mode = crop, "squash"
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
        backend="pil",
    )


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
    return spread(stages[1:] or infos)


SOURCE = Source(prefix=PREFIX, extra="hf", record=record, names=names, syntax="hf:REPO_ID")
