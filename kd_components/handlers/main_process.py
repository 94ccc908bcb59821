"""Which handlers run on which rank of a multi-process run: reporting and saving on rank 0 only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from monai.handlers import (
    CheckpointSaver,
    ClearMLHandler,
    MLFlowHandler,
    StatsHandler,
    TensorBoardHandler,
)

from kd_components.handlers.progress import ProgressBar

__all__ = ["MAIN_PROCESS_HANDLER_TYPES", "main_process_handlers"]

#: MONAI handlers that only report or save (logs, TensorBoard/MLflow/ClearML, the key-metric ``model.pt``):
#: attached on rank 0 only, as is ``kd_components.handlers.ProgressBar``. None of them may run a
#: collective (an ``all_gather``, a barrier, a metric's ``aggregate``) or iterate a sharded loader: the other ranks
#: would never join it and the run would hang at its end. Everything else runs on every rank: LR schedulers,
#: validation, the resumable checkpoint (every rank loads it when resuming; Ignite saves it on rank 0 only),
#: MONAI's ``MetricsSaver`` (it gathers the file names of every rank, then saves on its ``save_rank``) and
#: the teacher's ``BranchDiagnostics``, whose branch ablation gathers the Dice of every rank's validation cases
#: (it writes on rank 0 only).
MAIN_PROCESS_HANDLER_TYPES: tuple[type, ...] = (
    StatsHandler,
    TensorBoardHandler,
    MLFlowHandler,
    ClearMLHandler,
    CheckpointSaver,
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
