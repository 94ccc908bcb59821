"""Channels-last memory layout (NDHWC) for the 3D networks in training on the CPU.

PyTorch's CPU convolutions (oneDNN) work in channels-last internally: a network whose weights are stored
channels-first (PyTorch's default, NCDHW) has its activations reordered around every convolution, forward and
backward. Stored channels-last (``torch.channels_last_3d``), the convolutions read and write their layout directly
and the layers between them (norms, activations, additions) follow it. On a 2-core AMD EPYC (Zen 4) one training
step of the demo networks at batch 4 x 64^3 takes 1.2-1.5x less time (``scripts/benchmark_training.py``, section 1
of ``docs/training_speed.md``). The values are the same; only the order of floating-point sums differs.

The bundles' ``channels_last`` setting (``"auto"``: on for a CPU; ``true``; ``false``) decides it for the network
being trained and, in the student's bundle, for the frozen teacher. ``"auto"`` leaves CUDA as it is: channels-last
there depends on cuDNN's kernels for each GPU and precision, and has not been measured here.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kd_components.config_checks import as_bool

__all__ = ["to_layout", "use_channels_last"]


def use_channels_last(setting: str | bool, device: str | torch.device) -> bool:
    """Resolve the ``channels_last`` setting for ``device``: ``"auto"`` is on for a CPU and off elsewhere; a flag
    (``true``/``false``, as :func:`~kd_components.config_checks.as_bool` reads it) forces it."""
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        return torch.device(device).type == "cpu"
    return as_bool(setting, "channels_last")


def to_layout(network: nn.Module, channels_last: bool) -> nn.Module:
    """``network`` with its 5-D parameters and buffers (3D convolution kernels ``(O, I, kD, kH, kW)``) stored
    channels-last when ``channels_last`` is true, else unchanged; the same module, converted in place. Its
    ``state_dict`` holds the same values either way, so checkpoints load into either layout."""
    return network.to(memory_format=torch.channels_last_3d) if channels_last else network
