"""The timm source: ``timm:NAME`` for any name of ``timm.list_models()`` (tags allowed).

The model is built with its classifier, which is kept as the stored ImageNet classifier and
taken off with ``reset_classifier(0)`` (the model ``num_classes=0`` builds), so its output is
``forward_head(x, pre_logits=True)`` (the ``embedding``). Preprocessing is the model's ``pretrained_cfg`` through timm's data config;
the stages are the modules of its ``feature_info`` (what ``forward_intermediates`` returns).
Pretrained weights download through the Hugging Face hub cache; a weights file is mapped by
timm's own ``checkpoint_filter_fn`` (:func:`_map_weights`). timm is imported only when a
``timm:`` name is used (the ``[timm]`` extra).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from featurecache.exceptions import UnknownNameError, suggest
from featurecache.models._download import hf_hub_file
from featurecache.models._layers import LayerInfo, last_per_resolution, spatial_key, spread
from featurecache.models._preprocess import Preprocess
from featurecache.models._record import Backbone, Resolved, Source, require

__all__ = ["SOURCE"]

PREFIX = "timm"
_RESIZE = {"center": "crop", "squash": "squash", "border": "pad"}
_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm() -> Any:
    return require("timm", "timm", "A timm: backbone")


def names(pattern: str | None = None) -> list[str]:
    """Architectures of ``timm.list_models()``; a pattern without ``*`` matches anywhere."""
    if pattern and "*" not in pattern:
        pattern = f"*{pattern}*"
    return list(_timm().list_models(pattern or ""))


def record(name: str) -> Backbone:
    """The record of ``timm:NAME`` (``NAME`` may carry a pretrained tag, ``resnet18.a1_in1k``)."""
    timm = _timm()
    arch = name.partition(".")[0]
    if not timm.is_model(arch):
        raise UnknownNameError(
            f"Unknown timm model {name!r}.{suggest(name, timm.list_models())} "
            "Hint: run `featurecache backbones --source timm --filter WORD` to list them."
        )
    cfg = timm.models.get_pretrained_cfg(name)
    module = timm.models.model_entrypoint(arch).__module__.rpartition(".")[2]
    return Backbone(
        name=f"{PREFIX}:{name}",
        family=f"timm.{module}",
        builder=partial(_build, name, bool(cfg is not None and cfg.fixed_input_size)),
        catalog=_Catalog(name, cfg),
        image_size=_native_size(cfg),
        default_layers=_defaults,
        source=PREFIX,
        library="timm",
        preprocess=partial(_preprocess, cfg),
        classifier=(cfg.classifier if cfg is not None else None) or "head",
        stages=_stages,
        prefix_tokens=_prefix_tokens,
        remove_classifier=_remove_classifier,
        class_names=partial(_class_names, cfg),
        map_weights=partial(_map_weights, arch),
    )


def _map_weights(arch: str, state_dict: dict, model: nn.Module) -> dict:
    """timm's rule: the ``checkpoint_filter_fn`` of the architecture's module, as timm's
    ``pretrained=True`` applies it to a file (key conversions of original checkpoints, and
    position embeddings resampled to the model's grid with ``resample_abs_pos_embed``).

    A ``torch.save(model.state_dict())`` or ``save_file`` of a timm model is already in
    the model's layout, which featurecache's own is.
    """
    module = importlib.import_module(_timm().models.model_entrypoint(arch).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    return dict(filter_fn(state_dict, model)) if filter_fn is not None else state_dict


def _remove_classifier(model: nn.Module) -> nn.Module | None:
    head = model.get_classifier()
    model.reset_classifier(0)
    return head


def _class_names(cfg: Any, resolved: Resolved, n_outputs: int) -> tuple[str, ...] | None:
    """The ImageNet subset timm infers from the pretrained config (1k, 22k…), if it has ``n_outputs``."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(cfg) if cfg is not None else None
    if subset is None and n_outputs == 1000:
        subset = "imagenet-1k"
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != n_outputs:
        return None
    return tuple(info.label_descriptions())


@dataclass(frozen=True)
class _Catalog:
    """``DEFAULT``: the pretrained weights of the name's (default) tag, from the HF hub."""

    name: str
    cfg: Any

    def names(self) -> tuple[str, ...]:
        return ("DEFAULT",)

    def resolve(self, key: str) -> Resolved | None:
        if key.upper() != "DEFAULT":
            return None
        repo = getattr(self.cfg, "hf_hub_id", None) if self.cfg is not None else None
        label = f"timm:{self.name}"
        if not repo:
            raise UnknownNameError(
                f"timm has no pretrained weights on the Hugging Face hub for {self.name!r}. "
                "Pass a local state-dict file, or 'none' for random weights."
            )
        files = (
            (self.cfg.hf_hub_filename,) if getattr(self.cfg, "hf_hub_filename", None) else _FILES
        )
        path, revision = hf_hub_file(repo, files, label, "timm", "timm")
        return Resolved(id=f"hf:{repo}", pretrained=path, revision=revision)

    def default_name(self) -> str:
        return "DEFAULT"


def _native_size(cfg: Any) -> int:
    size = getattr(cfg, "test_input_size", None) or getattr(cfg, "input_size", None)
    return int(size[-1]) if size else 224


def _build(name: str, fixed_size: bool, image_size: int, resolved: Resolved) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if fixed_size:
        kwargs["img_size"] = image_size  # position embeddings: resampled from the weights
    if resolved.pretrained:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": resolved.pretrained})
    return _timm().create_model(name, **kwargs)


def _preprocess(cfg: Any, resolved: Resolved, image_size: int | None) -> Preprocess:
    """timm's eval transform: ``resize = floor(S / crop_pct)``, the crop mode, PIL resizing."""
    from timm.data import resolve_data_config

    data = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    size = image_size or int(data["input_size"][-1])
    crop_pct = float(data.get("crop_pct") or 1.0)
    mode = _RESIZE.get(data.get("crop_mode") or "center", "crop")
    return Preprocess(
        resize_size=math.floor(size / crop_pct),
        crop_size=size,
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        interpolation=data.get("interpolation") or "bicubic",
        resize=mode,
        backend="pil",
    )


def _stages(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None) or []
    return [entry["module"] for entry in info if isinstance(entry, dict) and "module" in entry]


def _prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 0) or 0)


def _defaults(infos: list[LayerInfo], modules: dict[str, nn.Module]) -> list[str]:
    """Three blocks spread over a transformer's depth, else the last four stages."""
    found = {info.name: info for info in infos}
    stages = [found[name] for name in _stages(modules[""]) if name in found]
    if not stages:
        return spread(infos)
    if len({spatial_key(info) for info in stages}) == 1:  # every block at one resolution
        return spread(stages)
    return [info.name for info in stages][-4:] or last_per_resolution(stages)


SOURCE = Source(prefix=PREFIX, extra="timm", record=record, names=names, syntax="timm:NAME")
