"""Loading the trained teacher for distillation: strict, frozen, in eval mode, or a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from kd_components.checkpoints.state import CheckpointError, load_checked, read_state_dict
from kd_components.memory_layout import to_layout

__all__ = ["TeacherCheckpointError", "freeze", "load_frozen_teacher"]


#: What a teacher checkpoint that does not fit probably means.
_HINT = " (is teacher_config the one the teacher was trained with?)"


class TeacherCheckpointError(CheckpointError):
    """The teacher checkpoint cannot be read, or does not fit the teacher's definition."""


def freeze(network: nn.Module) -> nn.Module:
    """Freeze ``network`` in place for distillation (``requires_grad=False``, eval mode) and return it."""
    network.requires_grad_(False)
    return network.eval()


def load_frozen_teacher(
    network: nn.Module,
    ckpt_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    channels_last: bool = False,
) -> nn.Module:
    """
    Load the teacher's trained weights strictly, then freeze it and put it in eval mode.

    The checkpoint (read with ``torch.load(..., weights_only=True)``) is a state dict, as the teacher
    bundle's ``models/model.pt``, or a training checkpoint with the state dict under ``"model"`` (the
    ``latest*.pt`` files); a ``module.`` prefix (DistributedDataParallel) is removed. Nothing is loaded
    unless every key and shape fits: a teacher with random weights would silently distil noise.

    In a bundle config::

        "teacher": {"_target_": "kd_components.checkpoints.load_frozen_teacher",
                    "network": "@teacher_def", "ckpt_path": "@teacher_ckpt", "device": "@device"}

    Args:
        network: the teacher, built with the same definition as the checkpoint (e.g. ``build_teacher("demo")``).
        ckpt_path: the checkpoint file.
        device: device to move the teacher to; ``None`` leaves it where it is.
        channels_last: store its weights channels-last (:mod:`kd_components.memory_layout`), as the student's are.

    Returns:
        ``network`` itself, loaded, on ``device``, with ``requires_grad=False`` and in eval mode.

    Raises:
        FileNotFoundError: if ``ckpt_path`` is not a file.
        TeacherCheckpointError: if the file cannot be read, is not a state dict, or does not fit ``network``
            (the message names the file and lists missing/unexpected keys and shape mismatches).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher checkpoint not found: {path} (train the hybrid_teacher bundle first, or pass --teacher_ckpt)"
        )
    try:
        state = read_state_dict(path, "teacher checkpoint")
        load_checked(network, state, f"teacher checkpoint {path}", _HINT)
    except CheckpointError as err:
        raise TeacherCheckpointError(str(err)) from err
    if device is not None:
        network.to(device)
    to_layout(network, channels_last)
    return freeze(network)
