"""The voxel grid a network was trained on travels with its weights.

The bundles bring every scan to their ``orientation`` and ``pixdim`` before the network (``Orientationd``,
``Spacingd``) and back afterwards (``Invertd``). A network trained at 2 mm (``demo.json``) and run at 1 mm sees
every structure twice as large, so the grid is not a setting a user should have to repeat: training writes it to
``<ckpt_dir>/training_geometry.json`` beside the weights, and inference (``inference.json``, ``brats-kd
segment``, an exported ``model.ts``) reads it from there. The file is itself a bundle config overlay
(``{"pixdim": [...], "orientation": "..."}``), so ``ckpt_export`` can embed it next to ``inference.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kd_components.io import save_json_atomic

__all__ = ["GEOMETRY_FILE", "GEOMETRY_KEYS", "read_training_geometry", "trained_geometry", "write_training_geometry"]

#: File name of the training grid, in the folder of the weights.
GEOMETRY_FILE = "training_geometry.json"
#: The config ids it holds.
GEOMETRY_KEYS = ("pixdim", "orientation")


def write_training_geometry(ckpt_dir: str | os.PathLike[str], pixdim: Sequence[float], orientation: str) -> Path:
    """Write ``<ckpt_dir>/training_geometry.json`` (atomically) before training starts; return its path."""
    path = Path(ckpt_dir) / GEOMETRY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json_atomic({"pixdim": [float(v) for v in pixdim], "orientation": str(orientation)}, path)
    return path


def read_training_geometry(weights: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training grid of the weights file ``weights`` (``training_geometry.json`` in its folder), or ``None``.

    Raises:
        ValueError: the file exists but is not a JSON object with ``pixdim`` and ``orientation``.
    """
    path = Path(weights).parent / GEOMETRY_FILE
    if not path.is_file():
        return None
    try:
        geometry = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if not isinstance(geometry, dict) or any(key not in geometry for key in GEOMETRY_KEYS):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(GEOMETRY_KEYS)}")
    return {key: geometry[key] for key in GEOMETRY_KEYS}


def trained_geometry(ckpt_dir: str | os.PathLike[str], key: str, default: Any) -> Any:
    """``key`` (``pixdim`` or ``orientation``) of the weights in ``ckpt_dir``, else ``default``: what
    ``inference.json`` runs at (``"pixdim": "$trained_geometry(@ckpt_dir, 'pixdim', [1.0, 1.0, 1.0])"``)."""
    geometry = read_training_geometry(Path(ckpt_dir) / "model.pt")
    return geometry[key] if geometry is not None else default
