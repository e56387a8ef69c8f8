"""The OpenCLIP source: ``open_clip:ARCH/PRETRAINED`` image towers (the ``[clip]`` extra)."""

from __future__ import annotations

from featurecache.models._record import Backbone, Source, require

__all__ = ["SOURCE"]

PREFIX = "open_clip"


def _open_clip():
    return require("open_clip", "clip", "An open_clip: backbone")


def names(pattern: str | None = None) -> list[str]:
    raise NotImplementedError


def record(name: str) -> Backbone:
    raise NotImplementedError


SOURCE = Source(
    prefix=PREFIX, extra="clip", record=record, names=names, syntax="open_clip:ARCH/PRETRAINED"
)
