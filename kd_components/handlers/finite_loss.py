"""Stop training at the first NaN or Inf loss, before the optimizer step, naming the iteration and the loss term."""

from __future__ import annotations

import math
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from kd_components.handlers.loss_logging import is_loss_key

__all__ = ["FiniteLossGuard", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss (or one of its terms) is NaN or infinite."""


def _value(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else None
    if isinstance(value, int | float):
        return float(value)
    return None


class FiniteLossGuard:
    """Raise :class:`NonFiniteLossError` as soon as the loss of an iteration is not finite.

    It runs on MONAI's ``IterationEvents.LOSS_COMPLETED`` (fired by ``SupervisedTrainer`` and
    :class:`~kd_components.engines.DistillationTrainer` after the loss and before ``backward()``), so the
    weights in memory never take a NaN step and no checkpoint handler sees them: training stops, and the
    last checkpoint on disk (``models/model.pt``, ``models/latest*.pt``) is the last good one. The message
    names the epoch, the iteration and every loss entry (``loss`` and the terms' ``loss_<name>``, e.g.
    ``loss_task``, ``loss_soft``, ``loss_feature``) with its value, so it is clear which term went wrong.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict):
            return
        values = {k: _value(v) for k, v in output.items() if is_loss_key(k)}
        bad = [k for k, v in values.items() if v is not None and not math.isfinite(v)]
        if not bad:
            return
        epoch_length = engine.state.epoch_length or 0
        in_epoch = (engine.state.iteration - 1) % epoch_length + 1 if epoch_length else engine.state.iteration
        terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items() if v is not None)
        raise NonFiniteLossError(
            f"non-finite loss at epoch {engine.state.epoch}, iteration {engine.state.iteration} "
            f"(batch {in_epoch} of the epoch): {', '.join(bad)} ({terms}). Training stopped before the optimizer "
            "step; the checkpoints on disk are from the last completed epoch. Likely causes: a learning rate "
            "that is too high, NaN/Inf voxels in an input (run brats-kd datalist to check the data), "
            "or a teacher checkpoint that produces NaN."
        )
