"""Which handlers run on which rank of a multi-process run: reporting and saving on rank 0 only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from monai.handlers import (
    CheckpointSaver,
    ClearMLHandler,
    MetricsSaver,
    MLFlowHandler,
    StatsHandler,
    TensorBoardHandler,
)

from kd_components.handlers.branches import BranchDiagnostics
from kd_components.handlers.progress import ProgressBar

__all__ = ["MAIN_PROCESS_HANDLER_TYPES", "main_process_handlers"]

#: MONAI handlers that only report or save (logs, TensorBoard/MLflow/ClearML, metric files, the key-metric
#: ``model.pt``) and the teacher's branch diagnostics: attached on rank 0 only, as is
#: ``kd_components.handlers.ProgressBar``. Everything else (LR
#: schedulers, validation, the resumable checkpoint, which every rank must load when resuming and Ignite
#: saves on rank 0 only) runs on every rank.
MAIN_PROCESS_HANDLER_TYPES: tuple[type, ...] = (
    StatsHandler,
    TensorBoardHandler,
    MLFlowHandler,
    ClearMLHandler,
    MetricsSaver,
    CheckpointSaver,
    BranchDiagnostics,
)


def main_process_handlers(handlers: Sequence[Any] | None, rank: int | None = None) -> list[Any]:
    """
    ``handlers`` for this rank: all of them on rank 0 (or without distribution), and on other ranks all
    but the instances of :data:`MAIN_PROCESS_HANDLER_TYPES` and ``kd_components.handlers.ProgressBar``.

    The filter is by type, not by position, so handlers added to a bundle's list later are kept (on every
    rank) unless they are of a reporting/saving type. In a config::

        "train#trainer#train_handlers": {"_target_": "kd_components.handlers.main_process_handlers",
                                         "handlers": "@train#handlers"}

    Args:
        handlers: the handler objects (``None`` gives an empty list).
        rank: the process's rank; ``None`` reads it from the process group (0 without one).
    """
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    items = list(handlers or [])
    if rank == 0:
        return items
    return [h for h in items if not isinstance(h, (*MAIN_PROCESS_HANDLER_TYPES, ProgressBar))]
