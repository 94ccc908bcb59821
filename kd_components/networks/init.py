"""Initialisation helpers shared by the teacher and the student."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def init_output_prior(layer: nn.Module, prior: float) -> None:
    """Set the bias of a voxel-wise classifier so that ``sigmoid(logit) == prior`` at initialisation.

    Tumour regions cover a few per cent of a brain MRI patch; with a zero bias every voxel starts at
    probability 0.5, and Adam, which moves each parameter by about the learning rate per step, needs
    thousands of steps to bring the background logits down. Starting at the prior (RetinaNet's
    "prior probability" initialisation, Lin et al. 2017) removes that phase.

    Args:
        layer: a convolution (or a module whose last convolution is the classifier) with a bias.
        prior: foreground probability at initialisation, in (0, 1).
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    if not convs or convs[-1].bias is None:
        raise ValueError(f"{type(layer).__name__} has no convolution with a bias to initialise")
    with torch.no_grad():
        convs[-1].bias.fill_(math.log(prior / (1.0 - prior)))
