"""Inference engines for one network: eager PyTorch, ONNX Runtime and OpenVINO, at fp32, bf16 or int8.

Every engine is a callable ``(B, 4, h, w, d)`` float32 tensor -> ``(B, 3, h, w, d)`` float32 logits
``[TC, WT, ET]``, so that MONAI's ``SlidingWindowInferer`` runs it like the eager network. The ONNX and OpenVINO
engines run one graph exported from the eager network (:func:`kd_components.export.export_onnx`), cached beside
the checkpoint under a name that holds the checkpoint's hash and the sliding window's patch size
(:func:`cached_export`): it is made once per checkpoint and patch size, and made again when the checkpoint
changes.

Precisions:

- ``fp32``: float32 everywhere. OpenVINO's CPU plugin runs bf16 by default on CPUs with AVX512-BF16 or AMX; the
  fp32 engine sets ``INFERENCE_PRECISION_HINT`` to ``f32`` so that fp32 means fp32.
- ``bf16``: PyTorch autocast on the CPU (:class:`~kd_components.inferers.AutocastInferer`'s rule), OpenVINO's
  ``bf16`` hint. The ONNX Runtime engine is float32 only (asking it for bf16 or int8 is an error).
- ``int8``: OpenVINO only, post-training quantization with NNCF (``nncf.quantize``) calibrated on patches of a
  few cases; cached like the export, keyed by the checkpoint and the calibration data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kd_components.constants import MODALITIES
from kd_components.export import export_onnx
from kd_components.io import USER_CACHE, atomic_path
from kd_components.segment.errors import EngineError
from kd_components.segment.quantize import quantized_model

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "EngineError",
    "OnnxRuntimeEngine",
    "OpenVINOEngine",
    "TorchEngine",
    "build_engine",
    "cached_export",
    "file_digest",
    "resolve_engine",
]

#: Engine names of ``--engine`` (``auto``: OpenVINO on a CPU where it is installed, else PyTorch).
ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
#: OpenVINO's cache of compiled models, a folder beside the ONNX exports (:class:`OpenVINOEngine`'s ``cache_dir``).
OPENVINO_CACHE = "openvino_cache"
#: Precisions of ``--precision``.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")


def file_digest(path: str | os.PathLike[str], length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def cached_export(
    network: nn.Module,
    ckpt: str | os.PathLike[str] | None,
    roi_size: Sequence[int],
    cache_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The ONNX graph of ``network`` (with the weights of ``ckpt``), exported once and reused.

    The graph's input shape is fixed to ``(B, 4, *roi_size)`` (only the batch size is free: every
    sliding-window patch has that size, and the teacher's ViT needs one), so the patch size is part of the cache
    entry's name: ``<ckpt stem>-<first 12 hex digits of the checkpoint's SHA-256>-<h>x<w>x<d>.onnx`` in
    ``cache_dir``, by default the checkpoint's folder, or :data:`USER_CACHE` when that folder cannot be written;
    a changed checkpoint has another hash, hence another file, and another patch size another file beside it.
    Without a checkpoint (random weights, tests) the graph goes to a new temporary folder every time. The export
    is written atomically.

    Args:
        network: the eager network, weights loaded, ``(B, 4, h, w, d) -> (B, 3, h, w, d)``.
        ckpt: the checkpoint the weights come from (its content names the cache entry).
        roi_size: the sliding-window patch: the graph's spatial input size.
        cache_dir: where the export is kept (see above).
        log: receives one line when an export is made.
    """
    if ckpt is None:
        folder, name = Path(tempfile.mkdtemp(prefix="brats-kd-export-")), "random-weights.onnx"
    else:
        ckpt = Path(ckpt)
        folder = Path(cache_dir) if cache_dir is not None else ckpt.parent
        if not _writable(folder):
            folder = USER_CACHE
        name = f"{ckpt.stem}-{file_digest(ckpt)}-{'x'.join(str(int(s)) for s in roi_size)}.onnx"
    path = folder / name
    if path.exists():
        return path
    log(f"exporting the network to ONNX (once per checkpoint): {path}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            export_onnx(network, tmp, (1, len(MODALITIES), *roi_size), spatial_multiple=1, dynamic_spatial=False)
    except OSError as err:  # neither the checkpoint's folder nor the user cache can be written
        raise EngineError(
            f"cannot write the ONNX export of {ckpt or 'the network'} to {folder} ({err.strerror or err}): pass "
            "--cache-dir with a writable folder (or --engine torch, which needs no export)"
        ) from err
    return path


class TorchEngine:
    """The eager network on ``device``; ``bf16`` runs it under CPU autocast (on CUDA only ``fp32`` is offered)."""

    name = "torch"

    def __init__(self, network: nn.Module, device: torch.device | str = "cpu", precision: str = "fp32") -> None:
        if precision == "int8":
            raise EngineError("int8 needs the OpenVINO engine (--engine openvino): PyTorch has no int8 3D convolutions")
        self.device = torch.device(device)
        if precision == "bf16" and self.device.type != "cpu":
            raise EngineError("--precision bf16 with PyTorch is the CPU autocast path; on CUDA use fp32")
        self.network = network.eval().to(self.device)
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 4, h, w, d)`` -> logits ``(B, 3, h, w, d)`` float32, on ``x``'s device."""
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.network(x.to(self.device))
        return out.float().to(x.device)


class OnnxRuntimeEngine:
    """The exported graph in ONNX Runtime (CPU execution provider, float32)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike[str], precision: str = "fp32", threads: int | None = None) -> None:
        if precision != "fp32":
            raise EngineError(
                f"ONNX Runtime runs these networks in fp32 only on a CPU (asked: {precision}); "
                "use --engine openvino for bf16 or int8"
            )
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).to(x.device)


class OpenVINOEngine:
    """The exported graph compiled by OpenVINO for the CPU, at ``fp32`` (``f32`` hint), ``bf16`` or ``int8``.

    Args:
        model: an ``.onnx`` file, an OpenVINO ``.xml`` IR, or an ``openvino.Model``.
        precision: ``fp32``, ``bf16`` or ``int8`` (an int8 model comes quantized: see :func:`quantize_int8`; its
            remaining float layers run in f32).
        threads: CPU threads (``INFERENCE_NUM_THREADS``); ``None``: OpenVINO's default (all cores).
        cache_dir: OpenVINO's model cache (``CACHE_DIR``): the compiled model is kept there and the next process
            that compiles the same model with the same settings loads it instead (``None``: no cache).
    """

    name = "openvino"

    def __init__(
        self,
        model: Any,
        precision: str = "fp32",
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import openvino as ov

        core = ov.Core()
        if isinstance(model, str | os.PathLike):
            model = str(model)  # compiled from the file: with a cache, a cached model is not even read
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise EngineError("this CPU has no bf16 support that OpenVINO uses (OPTIMIZATION_CAPABILITIES lacks BF16)")
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        result = self.request.infer({0: array})
        return torch.from_numpy(np.array(result[self.compiled.output(0)])).to(x.device)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` checked against this machine (``None``: ``cuda:0`` when CUDA is available, else the CPU).

    Raises:
        EngineError: a name torch does not know (``gpu``), CUDA asked for on a machine without it, or a GPU index
            beyond the ones visible.
    """
    if device is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise EngineError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise EngineError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif resolved.type != "cpu":
        raise EngineError(f"--device {device}: only cpu and cuda devices are supported")
    return resolved


def resolve_engine(engine: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``torch`` on CUDA, ``openvino`` on a CPU where OpenVINO is installed, else ``torch``; other
    names are checked (known, installed) and returned."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    device = torch.device(device)
    if engine == "auto":
        return "openvino" if device.type == "cpu" and installed("openvino") else "torch"
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(engine)
    if module and not installed(module):
        raise EngineError(f"--engine {engine} needs the {module} package: pip install {module}")
    if engine != "torch" and device.type != "cpu":
        raise EngineError(f"--engine {engine} runs on the CPU here; --device {device} needs --engine torch")
    return engine


def build_engine(
    engine: str,
    network: nn.Module,
    ckpt: str | os.PathLike[str] | None,
    roi_size: Sequence[int],
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    calibration: Callable[[], Sequence[torch.Tensor]] | None = None,
    log: Callable[[str], None] = print,
) -> TorchEngine | OnnxRuntimeEngine | OpenVINOEngine:
    """The engine ``engine`` (after :func:`resolve_engine`) for ``network`` with the weights of ``ckpt``.

    Args:
        engine: a name of :data:`ENGINES`.
        network: the eager network, weights loaded.
        ckpt: the checkpoint file (names the export cache), or ``None``.
        roi_size: the sliding-window patch size.
        precision: a name of :data:`PRECISIONS`.
        device: where the torch engine runs; the others run on the CPU.
        cache_dir: where exports are kept (:func:`cached_export`).
        threads: CPU threads of ONNX Runtime / OpenVINO (``None``: their default).
        calibration: for ``int8``: returns the calibration patches ``(1, 4, *roi_size)`` (called only when the
            quantized model is not cached yet).
        log: receives progress lines (exports, quantization).
    """
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    name = resolve_engine(engine, device)
    if name == "torch":
        return TorchEngine(network, device, precision)
    onnx_path = cached_export(network, ckpt, roi_size, cache_dir, log)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(onnx_path, precision, threads)
    compiled_cache = onnx_path.parent / OPENVINO_CACHE if _writable(onnx_path.parent / OPENVINO_CACHE) else None
    if precision == "int8":
        if calibration is None:
            raise EngineError("int8 needs calibration cases (the segment command passes the first cases given)")
        return OpenVINOEngine(quantized_model(onnx_path, calibration, log), "int8", threads, compiled_cache)
    return OpenVINOEngine(onnx_path, precision, threads, compiled_cache)
