"""The Hugging Face source: ``hf:REPO_ID`` vision models (the ``[hf]`` extra)."""

from __future__ import annotations

from featurecache.models._record import Backbone, Source, require

__all__ = ["SOURCE"]

PREFIX = "hf"


def _transformers():
    return require("transformers", "hf", "An hf: backbone")


def names(pattern: str | None = None) -> list[str]:
    raise NotImplementedError


def record(name: str) -> Backbone:
    raise NotImplementedError


SOURCE = Source(prefix=PREFIX, extra="hf", record=record, names=names, syntax="hf:REPO_ID")
