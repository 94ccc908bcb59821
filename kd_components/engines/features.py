"""Building the feature-distillation loss for any teacher/student pair, by module path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from kd_components.constants import MODALITIES
from kd_components.distributed import unwrap_module
from kd_components.losses import FeatureHooks, FeatureKDLoss

__all__ = ["build_feature_kd_loss", "feature_channels"]


def _device(network: nn.Module) -> torch.device:
    tensor = next(network.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def feature_channels(
    network: nn.Module,
    paths: Sequence[str],
    spatial_size: Sequence[int] = (32, 32, 32),
    in_channels: int = len(MODALITIES),
) -> list[int]:
    """
    Channels of the outputs of the submodules at ``paths`` (e.g. ``["down_layers.1", "down_layers.2"]``).

    A network with ``feature_modules()`` and ``feature_channels`` (the
    :class:`~kd_components.networks.HybridTeacher`) answers for its own feature modules without running;
    otherwise one forward of a zero input ``(1, in_channels, *spatial_size)`` is hooked, in eval mode
    under ``torch.no_grad()`` (the training mode is restored afterwards).

    Args:
        network: the (eager) network.
        paths: module paths.
        spatial_size: spatial size of the probe input (must suit the network). Defaults to 32^3.
        in_channels: channels of the probe input. Defaults to 4 (``[t1c, t1n, t2w, t2f]``).

    Raises:
        ValueError: for an unknown path (the message lists valid paths nearby).
    """
    network = unwrap_module(network)  # paths name the bare network's modules, also under DDP
    known = getattr(network, "feature_channels", None)
    modules = network.feature_modules() if callable(getattr(network, "feature_modules", None)) else None
    if known is not None and modules is not None and all(p in modules for p in paths):
        return [int(known[modules.index(p)]) for p in paths]
    was_training = network.training
    probe = torch.zeros(1, in_channels, *spatial_size, device=_device(network))
    with FeatureHooks(network, list(paths), detach=True) as hooks, torch.no_grad():
        network.eval()
        try:
            network(probe)
            return [int(f.shape[1]) for f in hooks.features()]
        finally:
            network.train(was_training)


def build_feature_kd_loss(
    student: nn.Module,
    teacher: nn.Module,
    pairs: Sequence[Sequence[str]],
    probe_size: Sequence[int] = (32, 32, 32),
    in_channels: int = len(MODALITIES),
    **kwargs: Any,
) -> FeatureKDLoss:
    """
    A :class:`~kd_components.losses.FeatureKDLoss` for ``pairs``, with the channel counts read from the
    networks (:func:`feature_channels`) and the adapters on the student's device.

    In a bundle config::

        "feature_loss": {"_target_": "kd_components.engines.build_feature_kd_loss", "student": "@network",
                         "teacher": "@teacher", "pairs": [["fusion.fuse.0", "down_layers.1"], ...]}

    Args:
        student: the student network (eager; a ``DistributedDataParallel`` wrapper is looked through).
        teacher: the teacher network (eager).
        pairs: ``(teacher_path, student_path)`` per scale, finest first.
        probe_size: spatial size of the probe input for networks that must be run to know their channels.
        in_channels: channels of the probe input.
        kwargs: further arguments of :class:`~kd_components.losses.FeatureKDLoss` (``distance``,
            ``scale_weights``, ``tau``, ``adapter_norm``, ``resize``).
    """
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"pairs must be a non-empty list of (teacher_path, student_path), got {pairs}")
    teacher_channels = feature_channels(teacher, [t for t, _ in pairs], probe_size, in_channels)
    student_channels = feature_channels(student, [s for _, s in pairs], probe_size, in_channels)
    loss = FeatureKDLoss(pairs, student_channels, teacher_channels, **kwargs)
    return loss.to(_device(student))
