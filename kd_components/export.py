"""Exporting a bundle network to ONNX with dynamic batch and spatial sizes, and checking it with onnxruntime.

The exported graph takes ``image`` ``(B, 4, H, W, D)`` (channels ``[t1c, t1n, t2w, t2f]``, z-scored) and
returns ``pred`` ``(B, 3, H, W, D)`` logits ``[TC, WT, ET]``; ``B`` and each of ``H, W, D`` are free, the
spatial sizes as multiples of ``spatial_multiple`` (by default the network's
:func:`~kd_components.networks.utils.size_divisor`: 16 for the default student, whose stem and three
downsamplings need it). It uses PyTorch's ``torch.export``-based exporter (``torch.onnx.export(...,
dynamo=True)``, needs ``onnxscript``), whose ``dynamic_shapes`` states that divisibility exactly; the
TorchScript-based exporter's ``dynamic_axes`` cannot.

Pre- and post-processing (normalisation, sliding window, sigmoid, thresholding, the BraTS label map) are
not in the graph: they stay in the bundle's ``inference.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from kd_components.checkpoints.state import load_checked, read_state_dict
from kd_components.constants import MODALITIES
from kd_components.networks.utils import size_divisor

__all__ = [
    "DEFAULT_ONNX_OPSET",
    "ONNX_ATOL",
    "compare_onnx_with_torch",
    "export_onnx",
    "load_network",
    "run_onnx",
]

#: ONNX opset of the export (supported by onnxruntime >= 1.14).
DEFAULT_ONNX_OPSET = 18
#: Tolerance of ONNX Runtime (CPU, float32) against eager PyTorch on the network's logits: measured max abs
#: differences are about 1e-5 on 64^3 and 96x80x64 inputs with logits of magnitude ~5.
ONNX_ATOL = 1e-4


def load_network(network: nn.Module, ckpt_file: str | os.PathLike[str] | None, key: str | None = None) -> nn.Module:
    """
    Load a checkpoint into ``network`` strictly and put it in eval mode.

    Args:
        network: the network definition (e.g. the bundle's ``network_def``).
        ckpt_file: a state dict (the bundle's ``models/model.pt``), a training checkpoint with the state dict
            under ``key`` (``"model"`` in ``latest*.pt``), or ``None`` to keep the current weights.
        key: entry of the checkpoint that holds the state dict; ``None`` looks for ``"model"``, else takes the
            file as the state dict.

    Raises:
        CheckpointError: the file cannot be read, holds no state dict or non-finite weights, or does not fit
            ``network`` (the message names the file and the keys).
    """
    if ckpt_file is not None:
        state = read_state_dict(ckpt_file, "checkpoint", key)
        hint = (
            " (is it the other bundle's checkpoint, or weights of another network_def? Weights trained with a config "
            "overlay such as the bundle's configs/demo.json need that overlay to run: brats-kd segment --config FILE, "
            "or monai.bundle's --config_file list)"
        )
        load_checked(network, state, f"checkpoint {ckpt_file}", hint)
    return network.eval()


def export_onnx(
    network: nn.Module,
    filepath: str | os.PathLike[str],
    example_shape: Sequence[int] = (1, len(MODALITIES), 64, 64, 64),
    spatial_multiple: int | None = None,
    max_spatial: int = 512,
    opset_version: int = DEFAULT_ONNX_OPSET,
    dynamic_spatial: bool = True,
) -> Path:
    """
    Export ``network`` to ONNX with a dynamic batch size and dynamic spatial sizes.

    Args:
        network: the eager network ``(B, C, H, W, D) -> (B, C_out, H, W, D)``; exported in eval mode on CPU.
        filepath: the ``.onnx`` file to write (its folder is created).
        example_shape: shape of the example input the graph is traced with, ``(B, C, H, W, D)``.
        spatial_multiple: each spatial size is ``spatial_multiple * k``; ``None``: the network's
            :func:`~kd_components.networks.utils.size_divisor` (16 for the default student).
        max_spatial: largest spatial size the graph declares (in voxels).
        opset_version: ONNX opset.
        dynamic_spatial: ``False`` fixes the spatial sizes to the example's (only the batch stays free): for
            sliding-window patches, which always have the ROI's size, and for networks that need a fixed
            size (the teacher's ViT).

    Returns:
        the path of the written file. The graph has one input ``image`` ``(batch, C, H, W, D)`` and one
        output ``pred`` ``(batch, C_out, H, W, D)``.

    Raises:
        ValueError: if an example spatial size is not a multiple of ``spatial_multiple``.
    """
    if spatial_multiple is None:
        spatial_multiple = size_divisor(network)
    if any(int(s) % spatial_multiple for s in example_shape[2:]):
        raise ValueError(f"example spatial sizes {list(example_shape[2:])} must be multiples of {spatial_multiple}")
    network = network.eval().cpu()
    example = torch.zeros(*example_shape)
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=1024)
    spatial = {
        axis: spatial_multiple * dim(f"{name}_{spatial_multiple}", min=1, max=max_spatial // spatial_multiple)
        for axis, name in zip((2, 3, 4), ("H", "W", "D"), strict=True)
    }
    dynamic_shapes = ({0: batch, **(spatial if dynamic_spatial else {})},)
    path = Path(filepath)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=["image"],
            output_names=["pred"],
            opset_version=opset_version,
        )
    program.save(str(path))
    return path


def run_onnx(filepath: str | os.PathLike[str], image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Run an exported graph with ONNX Runtime (CPU): ``image`` ``(B, C, H, W, D)`` -> ``(B, C_out, H, W, D)``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(filepath), providers=["CPUExecutionProvider"])
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return session.run(None, {session.get_inputs()[0].name: array.astype(np.float32)})[0]


def compare_onnx_with_torch(
    network: nn.Module, filepath: str | os.PathLike[str], shapes: Sequence[Sequence[int]], seed: int = 0
) -> list[float]:
    """
    Max abs difference between ONNX Runtime and eager PyTorch on random inputs of each shape in ``shapes``.

    Args:
        network: the eager network the graph was exported from (run in eval mode, on CPU).
        filepath: the ``.onnx`` file.
        shapes: input shapes ``(B, C, H, W, D)``, e.g. ``[(1, 4, 64, 64, 64), (2, 4, 96, 80, 64)]``.
        seed: seed of the random inputs.

    Returns:
        one max abs difference per shape.

    Raises:
        AssertionError: if an output shape differs from PyTorch's.
    """
    generator = torch.Generator().manual_seed(seed)
    network = network.eval().cpu()
    differences = []
    for shape in shapes:
        image = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = network(image).numpy()
        actual = run_onnx(filepath, image)
        if actual.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {actual.shape} != PyTorch {expected.shape} for input {shape}")
        differences.append(float(np.abs(actual - expected).max()))
    return differences
