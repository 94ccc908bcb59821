"""How a state dict fits a network, and whether its weights are finite: the checks behind every checkpoint load."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

__all__ = ["non_finite_tensors", "state_dict_mismatches"]

#: How many keys of each kind of mismatch an error message lists.
_SHOWN = 5


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def state_dict_mismatches(network: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """
    How ``state`` fails to fit ``network`` for a strict load: one line each for missing keys, unexpected
    keys and shape mismatches (at most a few keys listed per line); empty when it fits.

    Args:
        network: the network the state dict should load into.
        state: a state dict (parameter and buffer tensors by name).
    """
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(v.shape)} vs network {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape
    ]
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if shapes:
        lines.append(f"{len(shapes)} shape mismatch(es): {_listed(shapes)}")
    return lines


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """How ``state`` holds NaN or Inf weights: one line naming the tensors (at most a few), or empty when all
    floating-point tensors are finite. A network with such weights gives NaN everywhere: an empty label map,
    0 mL, with no error, unless the load refuses it."""
    bad = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    return [f"{len(bad)} tensor(s) with NaN or Inf values: {_listed(bad)}"] if bad else []
