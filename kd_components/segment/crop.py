"""Brain crop for sliding-window inference: run the windows over the brain's bounding box only.

A BraTS volume (240 x 240 x 155) holds a skull-stripped brain in a zero background. MONAI's
``SlidingWindowInferer`` run on the brain's bounding box (plus a margin) needs fewer windows than on the whole
grid; the logits are pasted back into the full grid and every voxel outside the box is background (a
skull-stripped scan has no tumour there).

The windows on the box are not the windows of the whole grid (MONAI places them from the box's corner), so a
voxel near a window seam can be blended from other windows than without the crop: the logits differ slightly
and a label at the 0.5 threshold can flip. ``docs/inference.md`` measures how much (Dice between the label maps
with and without the crop, trained student, held-out phantoms); a network whose output does not depend on the
window (a pointwise one) gives identical labels, which ``tests/test_segment.py`` checks, so the crop and the
paste themselves are exact.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from kd_components.postprocess import bounding_box
from kd_components.transforms import BRAIN_MARGIN, brain_mask

__all__ = ["brain_box", "window_count", "window_starts"]


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start of every sliding window along one axis of ``size`` voxels, as MONAI's sliding window places them
    (an axis shorter than ``roi`` is padded to ``roi``: one window at 0)."""
    padded = max(size, roi)
    interval = _get_scan_interval((padded,), (roi,), 1, (overlap,))
    return [int(window[0].start) for window in dense_patch_slices((padded,), (roi,), interval)]


def window_count(shape: tuple[int, ...] | torch.Size, roi_size: tuple[int, ...], overlap: float) -> int:
    """Windows MONAI's sliding window runs over a grid of ``shape`` (spatial sizes)."""
    return int(np.prod([len(window_starts(s, r, overlap)) for s, r in zip(shape, roi_size, strict=True)]))


def brain_box(image: torch.Tensor | np.ndarray, margin: int = BRAIN_MARGIN) -> tuple[slice, ...] | None:
    """The brain's bounding box plus ``margin`` voxels (clipped to the grid): one slice per spatial axis.

    Args:
        image: ``(C, H, W, D)``; the brain is where any channel is non-zero
            (:func:`~kd_components.transforms.brain_mask`).
        margin: voxels added on every side.

    Returns:
        the box, or ``None`` when the image has no non-zero voxel.
    """
    mask = brain_mask(image)[0]
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    box = bounding_box(mask)
    if box is None:
        return None
    return tuple(
        slice(max(0, s.start - margin), min(s.stop + margin, size)) for s, size in zip(box, mask.shape, strict=True)
    )
