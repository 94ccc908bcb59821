"""Small utilities on any network: the parameters to train, and the bare network inside a parallel wrapper."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["parameter_device", "size_divisor", "trainable_parameters", "unwrap_module"]


def parameter_device(network: nn.Module) -> torch.device:
    """The device of ``network``'s first parameter (the CPU for a network without parameters)."""
    tensor = next(network.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require gradients (frozen ones left out), for the optimizer.

    In a bundle config:
    ``"params": {"_target_": "kd_components.networks.trainable_parameters", "module": "@network"}``.
    """
    return [p for p in module.parameters() if p.requires_grad]


def unwrap_module(module: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` or ``DataParallel`` wrapper (``module`` itself otherwise).

    Module paths of the bare network (``down_layers.1``) gain a ``module.`` prefix in the wrapper; hooks and
    state dicts use the bare one.
    """
    while isinstance(module, nn.parallel.DistributedDataParallel | nn.DataParallel):
        module = module.module
    return module


def size_divisor(network: nn.Module) -> int:
    """What every spatial size of ``network``'s input must be divisible by: its ``size_divisor`` attribute
    (:class:`~kd_components.networks.HybridTeacher`, :class:`~kd_components.networks.StridedSegResNet`),
    ``2 ** (levels - 1)`` for a MONAI SegResNet, else 1."""
    from monai.networks.nets import SegResNet

    net = unwrap_module(network)
    divisor = getattr(net, "size_divisor", None)
    if isinstance(divisor, int):
        return divisor
    if isinstance(net, SegResNet):
        return 2 ** (len(net.down_layers) - 1)
    return 1
