"""Reading weights files: ``torch.save``'s state dicts, safetensors files, ``save_pretrained``
folders. Each source maps the keys it reads to its model's with one rule
(:attr:`featurecache.models._record.Backbone.map_weights`, ``docs/weights.md``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch

from featurecache.exceptions import InvalidArgumentError, WeightsNotFoundError
from featurecache.models._record import first_line, require

__all__ = ["drop_transient", "read_weights", "split_prefix"]

#: The weights files of a folder saved with ``save_pretrained``, in transformers' order.
_FOLDER_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a weights file: ``torch.save``'s, a safetensors file, or a folder.

    A folder is one saved with ``save_pretrained`` (``model.safetensors``,
    ``pytorch_model.bin`` or their sharded index). A checkpoint wrapping its state dict
    under ``state_dict`` or ``model`` is unwrapped, and ``module.`` (DataParallel) dropped.

    Raises
    ------
    WeightsNotFoundError
        No such file, or a folder without weights.
    InvalidArgumentError
        A file that is not a state dict.
    """
    if os.path.isdir(path):
        return _read_folder(path)
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(f"The weights file {path} does not exist.") from exc
    except Exception as exc:
        if _is_safetensors(path):
            return _read_safetensors(path)
        raise InvalidArgumentError(
            f"The weights file {path} is not a loadable state dict ({first_line(exc)[:200]}). "
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


def _is_safetensors(path: str) -> bool:
    """A safetensors file starts with its header's length, then ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    safetensors = require("safetensors.torch", "timm", "A .safetensors weights file")
    try:
        return dict(safetensors.load_file(path, device="cpu"))
    except Exception as exc:
        raise InvalidArgumentError(
            f"The weights file {path} is not a loadable safetensors file ({first_line(exc)})."
        ) from exc


def _read_folder(path: str) -> dict[str, torch.Tensor]:
    for name in _SHARD_INDEXES:
        index = os.path.join(path, name)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state_dict: dict[str, torch.Tensor] = {}
            for shard in shards:
                state_dict.update(read_weights(os.path.join(path, shard)))
            return state_dict
    for name in _FOLDER_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return read_weights(os.path.join(path, name))
    raise WeightsNotFoundError(
        f"The weights folder {path} holds none of {', '.join(_FOLDER_FILES)}. Pass a folder "
        "saved with save_pretrained, or a weights file."
    )


def split_prefix(
    state_dict: Mapping[str, torch.Tensor], prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The keys under ``prefix`` (``prefix`` removed), and all the others."""
    inside = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    outside = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    return inside, outside


def drop_transient(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """``state_dict`` without the model's non-persistent buffers (``position_ids``), which
    older library versions saved and the model rebuilds itself."""
    persistent = set(model.state_dict())
    transient = {name for name, _ in model.named_buffers()} - persistent
    return {k: v for k, v in state_dict.items() if k not in transient}
