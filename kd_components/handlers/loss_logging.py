"""Helpers that bundle configs pass to MONAI's logging handlers for the distillation trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine

__all__ = ["LOSS_KEYS", "every_n_iterations", "loss_components"]

#: The loss entries of :class:`~kd_components.engines.DistillationTrainer`'s iteration output:
#: the total and its unweighted terms (``loss = loss_task + alpha * loss_soft + beta * loss_feature``).
LOSS_KEYS: tuple[str, ...] = ("loss", "loss_task", "loss_soft", "loss_feature")


def loss_components(output: Any) -> dict[str, float]:
    """
    ``output_transform`` for ``StatsHandler`` / ``TensorBoardStatsHandler`` / ``MLFlowHandler``: the loss
    components of an iteration as ``{"loss": ..., "loss_task": ..., "loss_soft": ..., "loss_feature": ...}``.

    MONAI's handlers log every key of a returned dict. ``output`` is ``engine.state.output``: a dict, or
    (after MONAI's decollation) a list of per-sample dicts, which all hold the same loss values. Keys
    that are absent are left out. In a config::

        "output_transform": {"_target_": "kd_components.handlers.loss_components", "_mode_": "callable"}
    """
    item = output[0] if isinstance(output, list | tuple) and output else output
    if not isinstance(item, dict):
        return {}
    return {k: float(item[k]) for k in LOSS_KEYS if k in item}


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
