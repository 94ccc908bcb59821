"""Small utilities on any network: the parameters to train, and the bare network inside a parallel wrapper."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "GAIN_PARAMETER_SUFFIXES",
    "parameter_device",
    "parameter_groups",
    "size_divisor",
    "trainable_parameters",
    "unwrap_module",
]

#: Names (suffixes) of the scalar gain parameters that :func:`parameter_groups` gives a learning rate of their own:
#: the fusion's per-scale logits (``fusion.scale_logits`` of a :class:`~kd_components.networks.HybridTeacher`).
GAIN_PARAMETER_SUFFIXES: tuple[str, ...] = ("scale_logits",)


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


def parameter_groups(module: nn.Module, lr: float, gain_lr_factor: float = 1.0) -> list[dict[str, Any]]:
    """The trainable parameters of ``module`` as optimizer groups: the gains (:data:`GAIN_PARAMETER_SUFFIXES`) at
    ``lr * gain_lr_factor`` and without weight decay, everything else at ``lr`` (and the optimizer's decay).

    Why the fusion's scale logits need their own rate: each fused map enters the decoder through a convolution
    whose weights can rescale it as well, so a scale's strength has two parameterisations, the one logit and the
    many convolution weights. Adam moves every parameter by about ``lr`` per step, which changes a convolution
    weight of magnitude ~0.05 by ~``lr / 0.05`` of itself but the softmax weight ``w_i`` only by about
    ``(1 - w_i) lr``: the convolutions take up the change some 20 times faster, and the logits stay near their
    uniform start (0.254, 0.254, 0.246, 0.246 after the demo teacher's training at ``gain_lr_factor`` 1).
    A factor of about 20 lets them move as fast as the weights they compete with; weight decay is left off
    them because it would pull the scales towards uniform, a prior with no reason behind it.

    In a bundle config: ``"params": "$parameter_groups(@network, @learning_rate, @fusion_lr_factor)"``.

    Args:
        module: the network (or a loss with parameters).
        lr: the base learning rate.
        gain_lr_factor: the gains' learning rate over ``lr``, positive. Defaults to 1.

    Returns:
        one or two groups ``{"params": [...], "lr": ...}`` (the gains' group also ``"weight_decay": 0.0``);
        empty groups are left out.

    Raises:
        ValueError: if ``gain_lr_factor`` is not positive.
    """
    if not gain_lr_factor > 0:
        raise ValueError(f"gain_lr_factor must be positive, got {gain_lr_factor}")
    gains, others = [], []
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            (gains if name.endswith(GAIN_PARAMETER_SUFFIXES) else others).append(parameter)
    groups: list[dict[str, Any]] = []
    if others:
        groups.append({"params": others, "lr": lr})
    if gains:
        groups.append({"params": gains, "lr": lr * gain_lr_factor, "weight_decay": 0.0})
    return groups


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
