"""The OpenCLIP source: ``open_clip:ARCH/PRETRAINED`` image towers (the ``[clip]`` extra).

The image tower is wrapped so that its output, the ``embedding``, is the pooled token before
the projection, and ``embedding.proj`` is the projected (CLIP-space) embedding that
``encode_image`` returns. Layers are the trunk's residual blocks; preprocessing is the model's
own ``preprocess_cfg``. Pretrained weights download through the Hugging Face hub cache; a
weights file is mapped by :func:`_map_weights`. The activation follows the pretrained tag
(:func:`quick_gelu`). The text tower, of named weights or of a full weights file, gives the
zero-shot classifier of a dataset's class names (:func:`_build_text_tower`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from featurecache.exceptions import DownloadError, UnknownNameError, suggest
from featurecache.models._download import hf_hub_file
from featurecache.models._layers import LayerInfo, spread
from featurecache.models._preprocess import Preprocess
from featurecache.models._record import Backbone, Resolved, Source, first_line, require
from featurecache.models._weights import split_prefix
from featurecache.models._zeroshot import TextTower

__all__ = ["SOURCE", "ImageTower"]

PREFIX = "open_clip"
_RESIZE = {"shortest": "crop", "squash": "squash", "longest": "pad"}
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip() -> Any:
    return require("open_clip", "clip", "An open_clip: backbone")


def names(pattern: str | None = None) -> list[str]:
    """``ARCH/PRETRAINED`` for every pretrained pair of ``open_clip.list_pretrained()``."""
    import fnmatch

    pairs = [f"{arch}/{tag}" for arch, tag in _open_clip().list_pretrained()]
    if not pattern:
        return pairs
    pattern = pattern if "*" in pattern else f"*{pattern}*"
    return [name for name in pairs if fnmatch.fnmatch(name, pattern)]


def record(name: str) -> Backbone:
    """The record of ``open_clip:ARCH/PRETRAINED`` (``open_clip:ARCH`` has no named weights)."""
    open_clip = _open_clip()
    arch, _, tag = name.partition("/")
    if arch not in open_clip.list_models():
        raise UnknownNameError(
            f"Unknown OpenCLIP architecture {arch!r}.{suggest(arch, open_clip.list_models())} "
            "Hint: run `featurecache backbones --source open_clip` to list them."
        )
    cfg = open_clip.get_model_config(arch) or {}
    image_size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return Backbone(
        name=f"{PREFIX}:{name}",
        family="open_clip",
        builder=partial(_build, arch, tag),
        catalog=_Catalog(arch, tag),
        image_size=int(image_size if isinstance(image_size, int) else image_size[-1]),
        default_weights="DEFAULT" if tag else "none",
        default_layers=_defaults,
        source=PREFIX,
        library="open_clip_torch",
        preprocess=partial(_preprocess, arch, tag),
        classifier="",
        stages=_stages,
        prefix_tokens=_prefix_tokens,
        zeroshot=partial(_build_text_tower, arch, tag),
        map_weights=_map_weights,
        text_tower=_text_tower,
        architecture=_architecture(arch, tag),
    )


@dataclass(frozen=True)
class _Catalog:
    arch: str
    tag: str

    def names(self) -> tuple[str, ...]:
        return ("DEFAULT", self.tag) if self.tag else ()

    def resolve(self, key: str) -> Resolved | None:
        if not self.tag or key not in ("DEFAULT", self.tag):
            return None
        cfg = _open_clip().get_pretrained_cfg(self.arch, self.tag)
        if not cfg:
            raise UnknownNameError(
                f"OpenCLIP has no pretrained weights {self.tag!r} for {self.arch}. Hint: run "
                "`featurecache backbones --source open_clip` to list the pairs."
            )
        repo = (cfg.get("hf_hub") or "").strip("/")
        if not repo:
            raise UnknownNameError(
                f"The OpenCLIP weights {self.arch}/{self.tag} are not on the Hugging Face hub; "
                "give a local weights file."
            )
        path, revision = hf_hub_file(
            repo, _FILES, f"open_clip:{self.arch}/{self.tag}", "open_clip", "clip"
        )
        return Resolved(id=f"hf:{repo}", pretrained=path, revision=revision)

    def default_name(self) -> str:
        return self.tag or "none"


class ImageTower(nn.Module):
    """An OpenCLIP image tower: ``forward`` gives the pooled embedding before the projection.

    ``embedding.proj`` runs the projection on it (``encode_image``'s output), and
    ``embedding.proj.l2`` is that output L2-normalised (``encode_image(normalize=True)``, what
    CLIP compares with text embeddings); all are captured in one pass. Towers without a
    separable projection return ``encode_image``'s output as the embedding and have no
    ``embedding.proj``.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        proj = getattr(visual, "proj", None)
        self.trunk = visual
        self.embedding = nn.Module()
        if isinstance(proj, torch.nn.Parameter):
            visual.proj = None
            self.embedding.proj = _Projection(proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.trunk(x)
        if hasattr(self.embedding, "proj"):  # taps: captured when asked for, never fed forward
            self.embedding.proj.l2(self.embedding.proj(pooled))
        return pooled


class _Projection(nn.Module):
    def __init__(self, weight: torch.nn.Parameter) -> None:
        super().__init__()
        self.weight = weight
        self.l2 = _L2Normalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class _L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1)


def _build(arch: str, tag: str, image_size: int, resolved: Resolved) -> nn.Module:
    return ImageTower(_clip(arch, tag, image_size, resolved).visual)


def _clip(
    arch: str, tag: str, image_size: int, resolved: Resolved, load_file: bool = False
) -> nn.Module:
    """The CLIP model of ``arch``, its activation as the tag's weights were trained with.

    ``load_file`` loads a full (two-tower) weights file with OpenCLIP's ``load_checkpoint``
    (which resamples the position embeddings to ``image_size``); the registry loads the
    image tower itself otherwise.
    """
    open_clip = _open_clip()
    kwargs: dict[str, Any] = {"pretrained": resolved.pretrained} if resolved.pretrained else {}
    if quick_gelu(arch, tag):
        kwargs["force_quick_gelu"] = True
    model = open_clip.create_model(arch, force_image_size=image_size, **kwargs)
    if load_file and resolved.path is not None:
        open_clip.load_checkpoint(model, resolved.path)
    return model


def quick_gelu(arch: str, tag: str) -> bool:
    """Whether ``arch/tag`` computes with QuickGELU: the architecture's config says so, or
    OpenCLIP's pretrained config of the tag does (OpenAI's weights were trained with it).

    OpenCLIP builds a tag's weights into a GELU model with only a warning; featurecache
    follows the tag. An architecture that forces QuickGELU on weights trained without it
    is built as named, with a one-line warning.
    """
    open_clip = _open_clip()
    arch_quick = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    if not tag:
        return arch_quick
    tag_quick = bool((open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu", False))
    if arch_quick and not tag_quick:
        warnings.warn(
            f"open_clip:{arch}/{tag} computes with QuickGELU, but OpenCLIP says the {tag!r} "
            f"weights were trained with GELU; name the architecture without '-quickgelu'.",
            UserWarning,
            stacklevel=2,
        )
    return arch_quick or tag_quick


def _architecture(arch: str, tag: str) -> dict[str, Any]:
    """``{"quick_gelu": True}`` when the tag turns an architecture of GELU to QuickGELU."""
    open_clip = _open_clip()
    named = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    trained = bool((open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu", False))
    return {"quick_gelu": True} if tag and trained and not named else {}


def _map_weights(state_dict: dict, model: nn.Module) -> dict:
    """OpenCLIP's rule: a full CLIP ``state_dict`` (``visual.*`` and the text tower), the
    image tower's alone (``model.visual.state_dict()``), or featurecache's layout
    (``trunk.*``, ``embedding.proj.weight``).

    The tower's ``proj`` becomes ``embedding.proj.weight`` and every other key goes under
    ``trunk.``; the text tower is left to the zero-shot classifier. Position embeddings are
    resampled to the model's grid by OpenCLIP's ``resize_pos_embed``.
    """
    if any(key.startswith(("trunk.", "embedding.")) for key in state_dict):
        mapped = dict(state_dict)
    else:
        visual, _ = split_prefix(state_dict, "visual.")
        tower = visual or state_dict
        mapped = {
            "embedding.proj.weight" if key == "proj" else f"trunk.{key}": value
            for key, value in tower.items()
        }
    key = "trunk.positional_embedding"
    if key in mapped:
        shim = {"visual.positional_embedding": mapped[key]}
        _open_clip().model.resize_pos_embed(shim, SimpleNamespace(visual=model.trunk))
        mapped[key] = shim["visual.positional_embedding"]
    return mapped


def _text_tower(state_dict: dict) -> bool:
    """A full CLIP checkpoint: the image tower under ``visual.`` and a ``logit_scale``."""
    return "logit_scale" in state_dict and any(k.startswith("visual.") for k in state_dict)


def _build_text_tower(arch: str, tag: str, resolved: Resolved, image_size: int) -> TextTower:
    """The CLIP model's text tower (``encode_text``, OpenCLIP's tokenizer), built as
    :func:`load_backbone` built its image tower: its classifier reads ``embedding.proj``."""
    open_clip = _open_clip()
    model = _clip(arch, tag, image_size, resolved, load_file=True).eval()
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:
        raise DownloadError(
            f"Could not load the tokenizer of open_clip:{arch} ({first_line(exc)}). To work "
            "offline, download it once into the Hugging Face hub cache (HF_HOME)."
        ) from exc
    return TextTower(
        model, lambda texts: model.encode_text(tokenizer(texts)), layer="embedding.proj",
        source=f"open_clip:{arch} text tower, weights {resolved.id}",
    )  # fmt: skip


def _preprocess(arch: str, tag: str, resolved: Resolved, image_size: int | None) -> Preprocess:
    """The model's preprocess_cfg, overridden by its pretrained weights' (as open_clip does)."""
    open_clip = _open_clip()
    model_cfg = open_clip.get_model_config(arch) or {}
    native = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    size = image_size or int(native if isinstance(native, int) else native[-1])
    pre = dict(model_cfg.get("preprocess_cfg", {}))
    if tag:
        pretrained = open_clip.get_pretrained_cfg(arch, tag) or {}
        pre.update({k: v for k, v in pretrained.items() if k in _PREPROCESS_KEYS})
    mean = pre.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = pre.get("std", open_clip.OPENAI_DATASET_STD)
    return Preprocess(
        resize_size=size,
        crop_size=size,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=pre.get("interpolation", "bicubic"),
        resize=_RESIZE.get(pre.get("resize_mode", "shortest"), "crop"),
        backend="pil",
    )


def _stages(model: nn.Module) -> list[str]:
    blocks = getattr(getattr(model.trunk, "transformer", None), "resblocks", None)
    if blocks is None:
        return []
    return [f"trunk.transformer.resblocks.{i}" for i in range(len(blocks))]


def _prefix_tokens(model: nn.Module) -> int:
    return 1 if getattr(model.trunk, "class_embedding", None) is not None else 0


def _defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    found = {info.name: info for info in infos}
    stages = [found[name] for name in _stages(modules[""]) if name in found]
    extra = ["embedding.proj"] if "embedding.proj" in found else []
    return spread(stages or infos) + extra


SOURCE = Source(
    prefix=PREFIX, extra="clip", record=record, names=names, syntax="open_clip:ARCH/PRETRAINED"
)
