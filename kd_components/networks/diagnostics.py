"""What each branch of a :class:`~kd_components.networks.HybridTeacher` contributes: branch ablation at inference,
and the fusion's gates and scale weights.

- :func:`zero_branch`: within the block the teacher's forward sees zeros in place of one encoder's features
  (``"vit"``: every ViT hidden state; ``"cnn"``: every VGG stage, the full-resolution skip included). The
  network is not changed: forward hooks replace the encoder's outputs and are removed on exit.
- :class:`GateRecorder`: forward hooks on ``fusion.fuse.i.gate`` that keep, per scale, the CNN's share
  ``g = sigmoid(gate logits)`` of each fused voxel and channel (``fused = g * cnn + (1 - g) * vit``) as a
  histogram, from which :meth:`GateRecorder.summary` gives its mean and percentiles.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from kd_components.networks.utils import unwrap_module

__all__ = ["ABLATIONS", "GateRecorder", "zero_branch"]

#: The branches :func:`zero_branch` can remove, by the name of the encoder attribute that computes them.
ABLATIONS: dict[str, str] = {"vit": "vit", "cnn": "vgg"}
#: Bins of the gate histograms over [0, 1].
_GATE_BINS = 100


def _zeros_like_output(_module: nn.Module, _inputs: Any, output: Any) -> Any:
    """A forward hook's replacement output: zeros shaped like ``output`` (a tensor or a list of tensors)."""
    if isinstance(output, torch.Tensor):
        return torch.zeros_like(output)
    return [torch.zeros_like(t) for t in output]


@contextmanager
def zero_branch(network: nn.Module, branch: str | None) -> Iterator[None]:
    """
    Within the ``with`` block, ``network`` computes as if the ``branch`` encoder's features were all zero.

    Args:
        network: a :class:`~kd_components.networks.HybridTeacher` (a parallel wrapper is looked through).
        branch: ``"vit"`` (the ViT hidden states), ``"cnn"`` (the VGG stages) or ``None`` (nothing removed).

    Raises:
        ValueError: for an unknown branch, or one the network does not have (a single-branch ablation).
    """
    if branch is None:
        yield
        return
    if branch not in ABLATIONS:
        raise ValueError(f"branch must be one of {sorted(ABLATIONS)} or None, got {branch!r}")
    encoder = getattr(unwrap_module(network), ABLATIONS[branch], None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(unwrap_module(network)).__name__} has no {branch} branch to remove")
    handle = encoder.register_forward_hook(_zeros_like_output)
    try:
        yield
    finally:
        handle.remove()


class GateRecorder:
    """
    Records the fusion gates of a :class:`~kd_components.networks.HybridTeacher` while it runs.

    Use as a context manager around forwards (``with GateRecorder(teacher) as gates: teacher(x)``); every
    forward adds the gate values ``sigmoid(logits)`` of each scale, each voxel and channel, to a histogram of
    that scale. A network without gates (a single-branch ablation) records nothing.
    """

    def __init__(self, network: nn.Module) -> None:
        """
        Args:
            network: a :class:`~kd_components.networks.HybridTeacher` (a parallel wrapper is looked through).
        """
        net = unwrap_module(network)
        fusion = getattr(net, "fusion", None)
        blocks = list(fusion.fuse) if fusion is not None else []
        self.gates: list[nn.Module] = [b.gate for b in blocks if getattr(b, "gate", None) is not None]
        self.histograms = torch.zeros(len(self.gates), _GATE_BINS, dtype=torch.float64)
        self._handles: list[RemovableHandle] = []

    def _hook(self, scale: int) -> Any:
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            share = torch.sigmoid(output.detach().float()).flatten().cpu()
            self.histograms[scale] += torch.histc(share, bins=_GATE_BINS, min=0.0, max=1.0).double()

        return record

    def __enter__(self) -> GateRecorder:
        self._handles = [g.register_forward_hook(self._hook(i)) for i, g in enumerate(self.gates)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summary(self, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> list[dict[str, float]]:
        """Per scale (finest first): ``mean`` and the ``p10``, ``p50``, ``p90`` ... of the CNN's share, from the
        histogram (to its bin width, 0.01), and ``count`` (the values recorded). Empty for an unused recorder."""
        centres = (torch.arange(_GATE_BINS, dtype=torch.float64) + 0.5) / _GATE_BINS
        rows: list[dict[str, float]] = []
        for hist in self.histograms:
            total = float(hist.sum())
            if total == 0:
                continue
            row = {"mean": float((hist * centres).sum() / total), "count": total}
            cumulative = torch.cumsum(hist, 0) / total
            for q in quantiles:
                index = int(torch.searchsorted(cumulative, torch.tensor(q, dtype=torch.float64)))
                row[f"p{round(q * 100)}"] = float(centres[min(index, _GATE_BINS - 1)])
            rows.append(row)
        return rows
