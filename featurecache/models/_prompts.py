"""Prompt templates of zero-shot classifiers: the default set, a file of them, and the texts.

A class's text embedding is the mean of the normalised text embeddings of its prompts (then
normalised again), as OpenCLIP's ``build_zero_shot_classifier`` computes it. A template holds
``{}`` once, where the class name goes; ``_`` in a class name (a folder name) reads as a space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from featurecache._validation import ParameterError
from featurecache.exceptions import InvalidArgumentError

__all__ = ["DEFAULT_PROMPTS", "check_prompts", "prompt_texts", "read_prompts"]

#: OpenCLIP's ``SIMPLE_IMAGENET_TEMPLATES``: the seven prompts CLIP's authors found to do
#: about as well as their full set of eighty on ImageNet.
DEFAULT_PROMPTS = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def check_prompts(prompts: Sequence[str] | None, owner: str) -> tuple[str, ...]:
    """``DEFAULT_PROMPTS`` for ``None``; else a non-empty list of str holding ``{}`` once each."""
    if prompts is None:
        return DEFAULT_PROMPTS
    ok = (
        isinstance(prompts, Sequence)
        and not isinstance(prompts, (str, bytes))
        and len(prompts) > 0
        and all(isinstance(p, str) and p.count("{}") == 1 for p in prompts)
    )
    if not ok:
        hint = "Write ['a photo of a {}.'] for one." if isinstance(prompts, str) else ""
        raise ParameterError(
            "prompts", owner, "a non-empty list of templates, each holding {} once", prompts, hint
        )
    return tuple(prompts)


def prompt_texts(class_name: str, prompts: Sequence[str]) -> list[str]:
    """The texts of one class: each template with the class name in place of ``{}``."""
    name = class_name.replace("_", " ").strip()
    return [template.replace("{}", name) for template in prompts]


def read_prompts(path: str | os.PathLike) -> tuple[str, ...]:
    """One template per line of a text file; blank lines and lines starting with ``#`` skipped.

    Raises
    ------
    InvalidArgumentError
        The file cannot be read, or a line lacks ``{}``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot read the prompts file {str(path)!r} ({error.strerror or error})."
        ) from error
    lines = [line.strip() for line in text.splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    bad = [line for line in prompts if line.count("{}") != 1]
    if not prompts or bad:
        shown = f"line {bad[0]!r} holds {{}} {bad[0].count('{}')} times" if bad else "no templates"
        raise InvalidArgumentError(
            f"the prompts file {str(path)!r} must hold one template per line, each with {{}} "
            f"once where the class name goes; {shown}."
        )
    return tuple(prompts)
