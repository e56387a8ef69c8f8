"""Packages whose public names load on first use (PEP 562), so importing them stays light."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["attach"]


def attach(package: str, names: Mapping[str, str]) -> tuple[Callable, Callable]:
    """Return the ``__getattr__`` and ``__dir__`` of ``package``.

    ``names`` maps each public name to the module that defines it; the module is
    imported the first time the name is read, and the value is cached on the package.
    ``dir(package)`` lists the package's ``__all__``.
    """

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return list(sys.modules[package].__all__)

    return __getattr__, __dir__
