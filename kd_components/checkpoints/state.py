"""How a state dict fits a network, and whether its weights are finite: the checks behind every checkpoint load."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "load_checked", "non_finite_tensors", "read_state_dict", "state_dict_mismatches"]

#: The prefix DistributedDataParallel gives every key of the network it wraps.
DDP_PREFIX = "module."


class CheckpointError(ValueError):
    """A checkpoint cannot be read, is not a state dict, holds non-finite weights or does not fit the network; the
    message names the file."""


#: How many keys of each kind of mismatch an error message lists.
_SHOWN = 5


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def state_dict_mismatches(network: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """
    How ``state`` fails to fit ``network`` for a strict load: one line each for missing keys, unexpected
    keys and shape mismatches (at most a few keys listed per line); empty when it fits.

    Args:
        network: the network the state dict should load into.
        state: a state dict (parameter and buffer tensors by name).
    """
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(v.shape)} vs network {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape
    ]
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if shapes:
        lines.append(f"{len(shapes)} shape mismatch(es): {_listed(shapes)}")
    return lines


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """How ``state`` holds NaN or Inf weights: one line naming the tensors (at most a few), or empty when all
    floating-point tensors are finite. A network with such weights gives NaN everywhere: an empty label map,
    0 mL, with no error, unless the load refuses it."""
    bad = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    return [f"{len(bad)} tensor(s) with NaN or Inf values: {_listed(bad)}"] if bad else []


def read_state_dict(path: str | os.PathLike[str], what: str = "checkpoint", key: str | None = None) -> dict:
    """The model state dict of the file ``path``: a raw state dict, the ``key`` entry of a dict, or (``key`` None)
    the ``"model"`` entry of a training checkpoint; a ``module.`` prefix (DistributedDataParallel) is removed.

    Raises:
        CheckpointError: the file cannot be read by ``torch.load(..., weights_only=True)`` (truncated, not a torch
            file, pickled code) or holds no state dict; ``what`` names it in the message ("teacher checkpoint").
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file (truncated, text, pickled objects) gets one message
        if _is_torchscript(path):
            raise CheckpointError(
                f"the {what} {path} is a TorchScript archive (an exported model.ts), not the weights a training "
                "saves: give the model.pt of the bundle's models folder (the MONAI Deploy app, deploy/app.py -m, "
                "runs model.ts)"
            ) from err
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"cannot read the {what} {path} as PyTorch weights: not a file torch.save wrote, truncated, or holding "
            f"code ({type(err).__name__}{': ' + detail if detail else ''})"
        ) from err
    if key is not None:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{what} {path} is not a state dict (or a dict with a {key or 'model'!r} state dict): "
            f"got {type(obj).__name__}"
        )
    state = dict(obj)
    if all(k.startswith(DDP_PREFIX) for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len(DDP_PREFIX) :]: v for k, v in state.items()}
    return state


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``: a zip file with the module's ``code/``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_checked(network: nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str = "") -> nn.Module:
    """Load ``state`` into ``network`` strictly, after checking that its weights are finite and that it fits.

    Raises:
        CheckpointError: naming ``source`` (the file) with the non-finite tensors, or the missing and unexpected
            keys and shape mismatches, and ``hint`` (what the user may have mixed up) after a mismatch.
    """
    nan = non_finite_tensors(state)
    if nan:
        raise CheckpointError(f"{source} holds non-finite weights (a diverged training?): {nan[0]}")
    problems = state_dict_mismatches(network, state)
    if problems:
        raise CheckpointError(
            f"{source} does not fit the network {type(network).__name__}{hint}:\n  " + "\n  ".join(problems)
        )
    network.load_state_dict(state, strict=True)
    return network
