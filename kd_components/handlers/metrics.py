"""Metric handlers that need more than MONAI's defaults."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.handlers import HausdorffDistance
from monai.metrics import compute_dice, compute_hausdorff_distance

from kd_components.constants import ET_LABEL, MISSED_REGION_HD_MM
from kd_components.transforms import BratsLabelsToRegions

__all__ = ["MISSED_REGION_HD_MM", "HausdorffDistanceMM", "label_map_dice", "voxel_spacing"]


def label_map_dice(a: np.ndarray, b: np.ndarray, et_label: int = ET_LABEL) -> list[float]:
    """Dice per region ``[TC, WT, ET]`` between two BraTS label maps ``(H, W, D)`` (MONAI's ``compute_dice``; a
    region empty in both maps scores 1, empty in one only 0)."""
    to_regions = BratsLabelsToRegions(et_label=et_label)
    regions = [torch.as_tensor(np.asarray(to_regions(np.asarray(m)[None])))[None].float() for m in (a, b)]
    return compute_dice(*regions, include_background=True, ignore_empty=False)[0].tolist()


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

    A region present in the label but absent from the prediction gets :data:`MISSED_REGION_HD_MM`
    (BraTS's convention) instead of MONAI's NaN, which the mean would skip, so missing a tumour
    can never look better than finding it. A region absent from the label stays NaN (undefined,
    left out of the mean), as in MONAI.
    """

    def update(self, output: Sequence[Sequence[torch.Tensor]]) -> None:
        if len(output) != 2:
            raise ValueError(f"output must have length 2 (y_pred, y), got {len(output)}")
        y_pred, y = output
        for pred, label in zip(y_pred, y, strict=True):
            metric = self.metric_fn
            values = compute_hausdorff_distance(
                pred[None],
                label[None],
                include_background=metric.include_background,
                distance_metric=metric.distance_metric,
                percentile=metric.percentile,
                directed=metric.directed,
                spacing=voxel_spacing(label),
            )
            missed = (pred.flatten(1).sum(1) == 0) & (label.flatten(1).sum(1) > 0)
            if not metric.include_background:
                missed = missed[1:]
            values[:, missed.to(values.device)] = MISSED_REGION_HD_MM
            metric.extend(values)
