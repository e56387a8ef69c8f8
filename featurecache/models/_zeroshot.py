"""Zero-shot classifiers from a text tower, shared by the OpenCLIP and Hugging Face sources.

Each class's weight row is the text embedding of its name under every prompt template,
each normalised, averaged and normalised again (OpenCLIP's ``build_zero_shot_classifier``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from featurecache.cache import StoredClassifier
from featurecache.models._prompts import prompt_texts

__all__ = ["TextTower", "build_zeroshot", "zeroshot_classifier"]

_CLASSES_PER_BATCH = 32


@dataclass(frozen=True)
class TextTower:
    """A model's text tower, as a source builds it for its zero-shot classifier.

    ``embed_texts`` maps texts to their embeddings ``(n_texts, dim)``; ``model`` gives the
    logit scale and bias; ``layer`` is the cached image layer the classifier reads;
    ``source`` says where the tower comes from.
    """

    model: nn.Module
    embed_texts: Callable[[list[str]], torch.Tensor]
    layer: str
    source: str


def build_zeroshot(
    text_tower: Callable[[Any, int], TextTower],
    resolved: Any,
    image_size: int,
    seed: int,
    class_names: Sequence[str],
    prompts: Sequence[str],
) -> StoredClassifier:
    """The zero-shot classifier of ``class_names`` from the tower ``text_tower(resolved,
    image_size)`` builds, seeded by ``seed`` as :func:`load_backbone` seeded its image tower
    (the same weights, a full weights file, or the same seed), so the classifier and the
    cached image layer agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = text_tower(resolved, image_size)
    return zeroshot_classifier(
        tower.model, tower.embed_texts, class_names, prompts, layer=tower.layer,
        source=tower.source,
    )  # fmt: skip


def zeroshot_classifier(
    model: nn.Module,
    embed_texts: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    prompts: Sequence[str],
    *,
    layer: str,
    source: str,
) -> StoredClassifier:
    """The zero-shot classifier of ``class_names`` over the image ``layer``.

    ``embed_texts`` maps texts to their embeddings ``(n_texts, dim)``; ``model`` gives the
    logit scale (``logit_scale``, stored exponentiated) and bias (``logit_bias``, SigLIP).
    """
    rows = []
    with torch.inference_mode():
        for start in range(0, len(class_names), _CLASSES_PER_BATCH):
            batch = class_names[start : start + _CLASSES_PER_BATCH]
            texts = [text for name in batch for text in prompt_texts(name, prompts)]
            embedded = nn.functional.normalize(embed_texts(texts), dim=-1)
            mean = embedded.reshape(len(batch), len(prompts), -1).mean(dim=1)
            rows.append(nn.functional.normalize(mean, dim=-1))
        scale = float(model.logit_scale.exp())
        bias = getattr(model, "logit_bias", None)
        bias = float(bias) if bias is not None else 0.0
    return StoredClassifier(
        kind="zeroshot",
        layer=layer,
        weight=torch.cat(rows).float().numpy(),
        bias=np.full(len(class_names), bias, dtype=np.float32),
        class_names=tuple(class_names),
        normalize=True,
        scale=scale,
        prompts=tuple(prompts),
        source=source,
    )
