"""The torchvision source: every classifier of ``torchvision.models``, under its bare name.

Named weights download through ``torch.hub`` into ``$TORCH_HOME/hub/checkpoints`` with
torch.hub's hash check (a progress bar on a terminal), unless downloads are forbidden
(``FEATURECACHE_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, ``--offline``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torchvision
from torch import nn

from featurecache.models._download import download_checkpoint, terminal
from featurecache.models._layers import default_rule_for
from featurecache.models._record import Backbone, Resolved

__all__ = ["TorchvisionCatalog", "backbones"]


@dataclass(frozen=True)
class TorchvisionCatalog:
    """Named weights of a torchvision model (``DEFAULT``, ``IMAGENET1K_V2``…)."""

    model: str

    def names(self) -> tuple[str, ...]:
        return ("DEFAULT", *(m.name for m in torchvision.models.get_model_weights(self.model)))

    def resolve(self, key: str) -> Resolved | None:
        enum = torchvision.models.get_model_weights(self.model)
        member_name = key.upper().removeprefix(enum.__name__.upper() + ".")
        if member_name not in enum.__members__:
            return None
        member = enum[member_name]  # DEFAULT is an alias of a real member
        download_checkpoint(member.url, f"{enum.__name__}.{member.name} of {self.model}")
        return Resolved(id=member.name, enum=member)

    def default_name(self) -> str:
        return torchvision.models.get_model_weights(self.model).DEFAULT.name


# ---------------------------------------------------------------- builder arguments

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


def _build(name: str, family: str, image_size: int, resolved: Resolved) -> nn.Module:
    weights: Any = resolved.enum
    rule = _BUILD_KWARGS.get(family)
    kwargs = rule(image_size, weights is not None) if rule else {}
    return torchvision.models.get_model(name, weights=weights, progress=terminal(), **kwargs)


def backbones() -> Iterator[Backbone]:
    """One record per classifier of ``torchvision.models``."""
    for name in torchvision.models.list_models(module=torchvision.models):
        family = torchvision.models.get_model_builder(name).__module__.rpartition(".")[2]
        yield Backbone(
            name=name,
            family=family,
            builder=partial(_build, name, family),
            catalog=TorchvisionCatalog(name),
            default_layers=default_rule_for(family),
        )
