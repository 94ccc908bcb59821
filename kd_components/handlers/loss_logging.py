"""Helpers that bundle configs pass to MONAI's logging handlers for the distillation trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine

from kd_components.losses.combined import LOSS_PREFIX

__all__ = ["every_n_iterations", "is_loss_key", "loss_components"]


def is_loss_key(key: object) -> bool:
    """Whether ``key`` of an iteration output is a loss entry: the total ``"loss"`` or a term ``"loss_<name>"``."""
    return isinstance(key, str) and (key == LOSS_PREFIX or key.startswith(f"{LOSS_PREFIX}_"))


def loss_components(output: Any) -> dict[str, float]:
    """
    ``output_transform`` for ``StatsHandler`` / ``TensorBoardStatsHandler`` / ``MLFlowHandler``: the loss
    entries of an iteration (:func:`is_loss_key`), e.g. ``{"loss": ..., "loss_task": ..., "loss_soft": ...,
    "loss_feature": ...}`` for the terms the bundle config declares
    (:class:`~kd_components.losses.DistillationLoss` names them), or ``{"loss": ...}`` for a supervised trainer.

    MONAI's handlers log every key of a returned dict. ``output`` is ``engine.state.output``: a dict, or
    (after MONAI's decollation) a list of per-sample dicts, which all hold the same loss values. In a config::

        "output_transform": {"_target_": "kd_components.handlers.loss_components", "_mode_": "callable"}
    """
    item = output[0] if isinstance(output, list | tuple) and output else output
    if not isinstance(item, dict):
        return {}
    return {k: float(v) for k, v in item.items() if is_loss_key(k)}


def every_n_iterations(n: int) -> Callable[[Engine, int], bool]:
    """
    An Ignite event filter that is true every ``n`` iterations, e.g. ``StatsHandler(iteration_log=...)``::

        "iteration_log": {"_target_": "kd_components.handlers.every_n_iterations", "n": 10}
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")

    def _filter(engine: Engine, event: int) -> bool:
        return event % n == 0

    return _filter
