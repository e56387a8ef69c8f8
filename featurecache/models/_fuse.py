"""Fold inference-mode BatchNorm into the convolution before it.

A frozen backbone in eval mode computes ``bn(conv(x))`` with fixed statistics, which
is one convolution with rescaled weights: the same features (to float rounding) at a
fraction of the memory traffic. Module registration order is not data flow, so every
fused model is checked against the original on a probe batch, and the original is
kept when any requested layer differs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from featurecache.models._layers import EMBEDDING, StopForward, capture, stop_after

__all__ = ["fuse_conv_bn"]

logger = logging.getLogger(__name__)


def fuse_conv_bn(
    module: nn.Module,
    layers: Sequence[str],
    probe: torch.Tensor,
    rtol: float = 1e-4,
    stop: str | None = None,
) -> nn.Module:
    """Return a copy of ``module`` with Conv2d→BatchNorm2d pairs fused, or ``module`` itself.

    Parameters
    ----------
    module : torch.nn.Module
        A backbone in eval mode.
    layers : sequence of str
        Layers that will be captured; a convolution captured by name is never fused.
    probe : torch.Tensor
        A batch ``(n, 3, S, S)`` on the module's device, to check the fused copy.
    rtol : float
        Largest allowed difference, relative to each layer's largest magnitude.
    stop : str, optional
        The layer after which the caller ends its forward passes (:func:`stop_after`): the
        check then runs as far and compares the requested layers only. Without it, the
        model's output is compared too.

    Returns
    -------
    torch.nn.Module
        The fused copy when every layer agrees with the original, else ``module``.
    """
    pairs = _conv_bn_pairs(module, set(layers))
    if not pairs:
        return module
    fused = copy.deepcopy(module)
    for conv_name, bn_name in pairs:
        conv, bn = fused.get_submodule(conv_name), fused.get_submodule(bn_name)
        fused.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        fused.set_submodule(bn_name, nn.Identity())
    if _agrees(module, fused, layers, probe, rtol, stop):
        logger.info("fused %d BatchNorm layers into their convolutions", len(pairs))
        return fused
    logger.info("kept BatchNorm layers unfused: the fused model differs on a probe batch")
    return module


def _conv_bn_pairs(module: nn.Module, protected: set[str]) -> list[tuple[str, str]]:
    """Conv2d and BatchNorm2d registered one after the other, with matching channels."""
    pairs = []
    previous: tuple[str, nn.Module] | None = None
    for name, child in module.named_modules():
        if isinstance(child, nn.BatchNorm2d) and previous is not None:
            conv_name, conv = previous
            if (
                conv.out_channels == child.num_features
                and child.track_running_stats
                and conv_name not in protected
                and name not in protected
            ):
                pairs.append((conv_name, name))
        if isinstance(child, nn.Conv2d):
            previous = (name, child)
        elif (
            not isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
            and len(list(child.children())) == 0
        ):
            previous = None  # any other leaf between the two breaks the pair
    return pairs


def _agrees(
    original: nn.Module,
    fused: nn.Module,
    layers: Sequence[str],
    probe: torch.Tensor,
    rtol: float,
    stop: str | None,
) -> bool:
    names = list(dict.fromkeys([*layers, *([EMBEDDING] if stop is None else [])]))
    results = []
    with torch.inference_mode():
        for model in (original, fused):
            with capture(model, names) as outputs, stop_after(model, stop):
                try:
                    model(probe)
                except StopForward:
                    pass
                results.append({k: v.float() for k, v in outputs.items()})
    for name in names:
        expected, actual = results[0][name], results[1][name]
        scale = expected.abs().max().clamp_min(1e-30)
        if not torch.allclose(actual, expected, rtol=rtol, atol=float(rtol * scale)):
            return False
    return True
