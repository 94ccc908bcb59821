"""Multi-GPU / multi-node training helpers for the bundles' ``configs/multi_gpu_train.json`` overlays.

The overlays follow MONAI's model-zoo bundles (``torch.distributed.run`` sets ``LOCAL_RANK``, ``RANK`` and
``WORLD_SIZE``; the network is wrapped in ``DistributedDataParallel``; data loaders take a
``DistributedSampler``); these functions hold the ``torch.distributed`` logic the JSON should not
(the handler filter of the overlays is :func:`kd_components.handlers.main_process_handlers`):

- :func:`init_distributed` / :func:`destroy_distributed`: the process group (NCCL on GPU, gloo on CPU);
- :func:`local_device`: ``cuda:<LOCAL_RANK>`` when CUDA is present, else the CPU;
- :func:`sync_batch_norm`: batch normalisation with statistics over all GPUs (the default student has it);
- :func:`average_gradients`: averaging across ranks the gradients of trainable parameters that live
  outside the DDP-wrapped network (the feature-distillation adapters).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "average_gradients",
    "destroy_distributed",
    "init_distributed",
    "is_distributed",
    "local_device",
    "sync_batch_norm",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` (``LOCAL_RANK`` from ``torch.distributed.run``, 0 if unset)
    when CUDA is available, else the CPU. A local rank without a GPU of its own is an error that says so."""
    if torch.cuda.is_available():
        rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if rank >= count:
            raise RuntimeError(
                f"local rank {rank} has no GPU: {count} CUDA device(s) visible on this node. Launch at most {count} "
                "process(es) per node (torch.distributed.run --nproc_per_node), or hide the GPUs "
                "(CUDA_VISIBLE_DEVICES=) to train on the CPU with gloo."
            )
        return torch.device(f"cuda:{rank}")
    return torch.device("cpu")


def sync_batch_norm(network: nn.Module, device: torch.device) -> nn.Module:
    """
    ``network`` on ``device``, its batch normalisations (if any) synchronised across ranks when it trains on GPUs in
    a process group: :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, in place (the bare network that
    validation runs shares the modules; the state-dict keys do not change, so checkpoints load into the plain
    network). On the CPU (gloo), where PyTorch's ``SyncBatchNorm`` does not run, each rank normalises with its own
    batch statistics, as without this function.

    Args:
        network: the bare network (not yet wrapped in ``DistributedDataParallel``).
        device: this process's device (:func:`local_device`).
    """
    if device.type == "cuda" and is_distributed():
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    return network.to(device)


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
