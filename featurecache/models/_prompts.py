"""Prompt templates of zero-shot classifiers: the default set, a file of them, and the texts.

A class's text embedding is the mean of the normalised text embeddings of its prompts (then
normalised again), as OpenCLIP's ``build_zero_shot_classifier`` computes it. A template holds
``{}`` once, where the class name goes; ``_`` in a class name (a folder name) reads as a space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from featurecache.core._spec import DEFAULT_PROMPTS, check_prompts
from featurecache.exceptions import InvalidArgumentError

__all__ = ["DEFAULT_PROMPTS", "check_prompts", "prompt_texts", "read_prompts"]


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
