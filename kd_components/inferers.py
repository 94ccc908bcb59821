"""bf16 autocast on the CPU for any MONAI inferer: the networks run in bfloat16 where the CPU has native
bf16 instructions (AVX512-BF16 or AMX), and everything around them (losses, sliding-window aggregation,
metrics) stays float32.

MONAI's trainers and evaluators autocast only on CUDA (``amp``); on a CPU they run float32. The bundles
declare their inferers through :class:`AutocastInferer`, switched by the ``cpu_bf16`` setting
(``"auto"``: on where the CPU supports bf16 natively, ``true``, ``false``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from monai.inferers import Inferer

from kd_components.config_checks import as_bool

__all__ = ["SMALL_CONV_INPUT", "AutocastInferer", "cpu_bf16_supported", "float32_small_convolutions", "use_cpu_bf16"]

SMALL_CONV_INPUT = 2
"""Convolutions whose input has a spatial side of at most this many voxels run in float32 under CPU autocast:
PyTorch's bf16 ``conv3d`` on the CPU returns non-finite weight gradients now and then for 2x2x2 inputs (measured
with torch 2.13: 6 of 360 random trials at 2^3, none at 3^3, 4^3 or 6^3; ``tests/test_inferers.py``)."""
_MARK = "_kd_float32_small_convolutions"


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def use_cpu_bf16(setting: str | bool, device: str | torch.device) -> bool:
    """Resolve the ``cpu_bf16`` setting for ``device``: ``"auto"`` is on for a CPU with native bf16; a flag
    (``true``/``false``, as :func:`~kd_components.config_checks.as_bool` reads it) forces it. Never on for a
    non-CPU device (CUDA has ``amp``)."""
    if torch.device(device).type != "cpu":
        return False
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        return cpu_bf16_supported()
    return as_bool(setting, "cpu_bf16")


def float32_small_convolutions(network: nn.Module) -> int:
    """Make the convolutions of ``network`` run in float32 under CPU autocast when their input is tiny.

    A forward pre-hook on every convolution turns autocast off and casts the input to float32 when a spatial
    side of the input is at most :data:`SMALL_CONV_INPUT` (the 1/16 maps of a 32^3 patch); a forward hook, also
    called when the layer raises, turns it back on. Maps that small cost nothing in float32. Idempotent: a
    layer is hooked once. Returns the number of convolutions hooked by this call.
    """
    count = 0
    for module in network.modules():
        if not isinstance(module, nn.modules.conv._ConvNd) or getattr(module, _MARK, False):
            continue
        module.register_forward_pre_hook(_enter_float32)
        module.register_forward_hook(_exit_float32, always_call=True)
        setattr(module, _MARK, True)
        count += 1
    return count


def _enter_float32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    stack = module.__dict__.setdefault("_kd_autocast_off", [])
    x = args[0] if args else None
    small = isinstance(x, torch.Tensor) and x.dim() > 2 and min(x.shape[2:]) <= SMALL_CONV_INPUT
    if not (small and torch.is_autocast_enabled("cpu")):
        stack.append(None)
        return None
    context = torch.autocast("cpu", enabled=False)
    context.__enter__()
    stack.append(context)
    return (x.float(), *args[1:])


def _exit_float32(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    stack = module.__dict__.get("_kd_autocast_off")
    context = stack.pop() if stack else None
    if context is not None:
        context.__exit__(None, None, None)


class AutocastInferer(Inferer):
    """Run ``inferer`` with the network under ``torch.autocast("cpu", dtype)`` and its outputs cast back to float32.

    The autocast wraps each network call, not the inferer: a sliding window still aggregates its patches
    in float32. Tensors the network's hooks capture (distillation features) are in ``dtype``; the losses
    cast them to float32. On other devices, or when ``enabled`` is false, it is ``inferer`` unchanged.

    Args:
        inferer: the MONAI inferer to wrap (``SimpleInferer``, ``SlidingWindowInferer``, ...).
        enabled: autocast on (e.g. ``use_cpu_bf16(@cpu_bf16, @device)`` in a config).
        dtype: the autocast dtype. Defaults to ``torch.bfloat16``.

    Attributes it does not have itself are those of ``inferer`` (``roi_size``, ``overlap``, ``sw_batch_size``, ...),
    so tools that read ``@inferer#roi_size`` or ``inferer.roi_size`` from a bundle see the wrapped inferer's.
    """

    def __init__(self, inferer: Inferer, enabled: bool = True, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.inferer = inferer
        self.enabled = bool(enabled)
        self.dtype = dtype

    def __getattr__(self, name: str) -> Any:
        """The wrapped inferer's attribute ``name`` (only called when this object has no attribute of that name)."""
        if name == "inferer":  # not set yet (unpickling, copying): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``inferer(inputs, network, ...)``; with autocast, ``network`` returns float32 ``(B, C, H, W, D)``."""
        if not self.enabled or inputs.device.type != "cpu":
            return self.inferer(inputs, network, *args, **kwargs)
        if isinstance(network, nn.Module):
            float32_small_convolutions(network)

        def autocast_network(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            with torch.autocast("cpu", dtype=self.dtype):
                out = network(x, *a, **k)
            return out.float() if isinstance(out, torch.Tensor) else out

        return self.inferer(inputs, autocast_network, *args, **kwargs)
