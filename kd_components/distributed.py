"""Multi-GPU / multi-node training helpers for the bundles' ``configs/multi_gpu_train.json`` overlays.

The overlays follow MONAI's model-zoo bundles (``torch.distributed.run`` sets ``LOCAL_RANK``, ``RANK`` and
``WORLD_SIZE``; the network is wrapped in ``DistributedDataParallel``; data loaders take a
``DistributedSampler``); these functions hold the logic the JSON should not:

- :func:`init_distributed` / :func:`destroy_distributed`: the process group (NCCL on GPU, gloo on CPU);
- :func:`local_device`: ``cuda:<LOCAL_RANK>`` when CUDA is present, else the CPU;
- :func:`main_process_handlers`: a handler list without the logging, progress and checkpoint-saving
  handlers on ranks other than 0 (so one process writes logs, TensorBoard files and ``model.pt``);
- :func:`unwrap_module`: the bare network inside a ``DistributedDataParallel``/``DataParallel`` wrapper
  (feature hooks are placed by module path on the bare network);
- :func:`average_gradients`: averaging across ranks the gradients of trainable parameters that live
  outside the DDP-wrapped network (the feature-distillation adapters).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from monai.handlers import (
    CheckpointSaver,
    ClearMLHandler,
    MetricsSaver,
    MLFlowHandler,
    StatsHandler,
    TensorBoardHandler,
)

__all__ = [
    "MAIN_PROCESS_HANDLER_TYPES",
    "average_gradients",
    "destroy_distributed",
    "init_distributed",
    "is_distributed",
    "local_device",
    "main_process_handlers",
    "unwrap_module",
]

#: MONAI handlers that only report or save (logs, TensorBoard/MLflow/ClearML, metric files, the key-metric
#: ``model.pt``): attached on rank 0 only, as is ``kd_components.handlers.ProgressBar``. Everything else (LR
#: schedulers, validation, the resumable checkpoint, which every rank must load when resuming and Ignite
#: saves on rank 0 only) runs on every rank.
MAIN_PROCESS_HANDLER_TYPES: tuple[type, ...] = (
    StatsHandler,
    TensorBoardHandler,
    MLFlowHandler,
    ClearMLHandler,
    MetricsSaver,
    CheckpointSaver,
)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` (``LOCAL_RANK`` from ``torch.distributed.run``, 0 if unset)
    when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> None:
    """
    Join the process group of a ``torch.distributed.run`` launch (``env://``: ``MASTER_ADDR``,
    ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``), unless already joined, and select this process's GPU.

    Args:
        backend: ``"nccl"``, ``"gloo"``, ...; ``None`` picks NCCL when CUDA is available, else gloo.
    """
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))


def destroy_distributed() -> None:
    """Leave the process group (after a barrier, so that no rank exits while another still saves)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main_process_handlers(handlers: Sequence[Any] | None, rank: int | None = None) -> list[Any]:
    """
    ``handlers`` for this rank: all of them on rank 0 (or without distribution), and on other ranks all
    but the instances of :data:`MAIN_PROCESS_HANDLER_TYPES` and ``kd_components.handlers.ProgressBar``.

    The filter is by type, not by position, so handlers added to a bundle's list later are kept (on every
    rank) unless they are of a reporting/saving type. In a config::

        "train#trainer#train_handlers": {"_target_": "kd_components.distributed.main_process_handlers",
                                         "handlers": "@train#handlers"}

    Args:
        handlers: the handler objects (``None`` gives an empty list).
        rank: the process's rank; ``None`` reads it from the process group (0 without one).
    """
    from kd_components.handlers.progress import ProgressBar  # here: kd_components.handlers imports the engines

    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    items = list(handlers or [])
    if rank == 0:
        return items
    return [h for h in items if not isinstance(h, (*MAIN_PROCESS_HANDLER_TYPES, ProgressBar))]


def unwrap_module(module: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` or ``DataParallel`` wrapper (``module`` itself otherwise).

    Module paths of the bare network (``down_layers.1``) gain a ``module.`` prefix in the wrapper; hooks and
    state dicts use the bare one.
    """
    while isinstance(module, nn.parallel.DistributedDataParallel | nn.DataParallel):
        module = module.module
    return module


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """
    Average the ``.grad`` of ``parameters`` over all ranks (one ``all_reduce`` per tensor); a no-op without
    a multi-process group.

    ``DistributedDataParallel`` synchronises the gradients of the network it wraps; parameters trained
    beside it (the feature-distillation adapters of the loss) need this, or each rank's copy drifts apart.
    Parameters without a gradient on this rank take part with zeros, so that every rank makes the same calls.
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    for param in parameters:
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(world)
