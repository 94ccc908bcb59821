"""Metric handlers that need more than MONAI's defaults."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.handlers import HausdorffDistance


def voxel_spacing(image: torch.Tensor) -> tuple[float, ...]:
    """Voxel spacing in mm of a MONAI ``MetaTensor`` ``(C, H, W, D)``, from its affine (1 mm without one)."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return (1.0,) * (image.ndim - 1)
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    return tuple(float(s) for s in np.linalg.norm(matrix[:3, :3], axis=0))


class HausdorffDistanceMM(HausdorffDistance):
    """MONAI's :class:`~monai.handlers.HausdorffDistance` measured in millimetres.

    MONAI's handler measures in voxels; this one passes each case's voxel spacing (read from the
    label's affine) to the metric, so HD95 is comparable between 1 mm BraTS data and 2 mm phantoms.
    Expects ``output_transform`` to give ``(preds, labels)``: lists of ``(C, H, W, D)`` tensors.
    """

    def update(self, output: Sequence[Sequence[torch.Tensor]]) -> None:
        if len(output) != 2:
            raise ValueError(f"output must have length 2 (y_pred, y), got {len(output)}")
        y_pred, y = output
        for pred, label in zip(y_pred, y, strict=True):
            self.metric_fn(pred[None], label[None], spacing=voxel_spacing(label))
