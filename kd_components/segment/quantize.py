"""int8 post-training quantization of an exported network for OpenVINO, with NNCF, cached beside the export.

``nncf.quantize`` inserts quantize/dequantize pairs calibrated on a few real patches (the ``calibration``
patches: windows of the first cases given, :func:`~kd_components.segment.segmenter.calibration_patches`); the
OpenVINO CPU plugin then runs the convolutions in int8 (VNNI). The quantized IR (``.xml`` + ``.bin``) is kept
beside the ONNX export under a name that adds a hash of the calibration data, so another checkpoint or other
calibration cases make another file, and the same ones reuse it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from kd_components.segment.errors import EngineError

__all__ = ["quantized_model"]


def _calibration_digest(patches: Sequence[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for patch in patches:
        digest.update(patch.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:8]


def quantized_model(
    onnx_path: str | os.PathLike[str],
    calibration: Callable[[], Sequence[torch.Tensor]],
    log: Callable[[str], None] = print,
) -> Any:
    """The int8 OpenVINO model of ``onnx_path``, quantized with NNCF on ``calibration()``'s patches
    ``(1, 4, *roi)`` and cached as ``<onnx stem>-int8-<calibration hash>.xml`` beside it.

    Raises:
        EngineError: NNCF is not installed, or there are no calibration patches.
    """
    try:
        import nncf
    except ImportError as err:
        raise EngineError("--precision int8 needs NNCF: pip install nncf") from err
    import openvino as ov

    patches = list(calibration())
    if not patches:
        raise EngineError("int8 calibration found no brain voxels in the calibration cases")
    onnx_path = Path(onnx_path)
    target = onnx_path.with_name(f"{onnx_path.stem}-int8-{_calibration_digest(patches)}.xml")
    core = ov.Core()
    if target.exists() and target.with_suffix(".bin").exists():
        return core.read_model(str(target))
    log(f"quantizing to int8 with NNCF on {len(patches)} patches (once per checkpoint and calibration): {target}")
    model = core.read_model(str(onnx_path))
    dataset = nncf.Dataset([p.numpy() for p in patches])
    quantized = nncf.quantize(model, dataset, subset_size=len(patches))
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.xml")
    ov.save_model(quantized, str(tmp))
    os.replace(tmp.with_suffix(".bin"), target.with_suffix(".bin"))  # weights first: an .xml always has its .bin
    os.replace(tmp, target)
    return quantized
