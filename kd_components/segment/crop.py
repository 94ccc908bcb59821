"""Brain crop for sliding-window inference: run only the windows that touch the brain, with the same results.

A BraTS volume (240 x 240 x 155) is mostly background around a skull-stripped brain. The crop is the union of
the sliding windows **of the full grid** that overlap the brain's bounding box: MONAI's
``SlidingWindowInferer`` run on that sub-volume places its windows exactly where it would have placed them on
the whole volume (same starts relative to the grid, same Gaussian weights, same order), so every brain voxel
gets the same logits as without the crop. Voxels outside the crop lie in no window that touches the brain;
they are background by construction (a skull-stripped scan has no tumour there).

The window grid is MONAI's own (``_get_scan_interval`` and ``dense_patch_slices``, the functions its sliding
window uses; ``tests/test_library_contract.py`` pins that behaviour).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval
from monai.transforms.utils import generate_spatial_bounding_box

from kd_components.transforms import brain_mask

__all__ = ["brain_window_box", "window_starts"]


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start of every sliding window along one axis of ``size`` voxels, as MONAI's sliding window places them
    (an axis shorter than ``roi`` is padded to ``roi``: one window at 0)."""
    padded = max(size, roi)
    interval = _get_scan_interval((padded,), (roi,), 1, (overlap,))
    return [int(window[0].start) for window in dense_patch_slices((padded,), (roi,), interval)]


def brain_window_box(
    image: torch.Tensor | np.ndarray, roi_size: Sequence[int], overlap: float, margin: int = 2
) -> tuple[slice, ...] | None:
    """The sub-volume to run the sliding window on: the union of the full grid's windows that overlap the
    brain's bounding box (plus ``margin`` voxels).

    Args:
        image: ``(C, H, W, D)``; the brain is where any channel is non-zero
            (:func:`~kd_components.transforms.brain_mask`).
        roi_size: the sliding-window patch ``(h, w, d)``.
        overlap: the sliding window's overlap (MONAI's ``overlap``).
        margin: voxels added around the brain's bounding box before the windows are chosen.

    Returns:
        one slice per spatial axis, or ``None`` when the image has no non-zero voxel.
    """
    mask = brain_mask(image)
    if not bool(mask.any()):
        return None
    lows, highs = generate_spatial_bounding_box(mask, margin=margin)
    box = []
    for size, roi, low, high in zip(image.shape[1:], roi_size, lows, highs, strict=True):
        if size <= roi:
            box.append(slice(0, size))
            continue
        kept = [s for s in window_starts(size, roi, overlap) if s < high and s + roi > low]
        box.append(slice(min(kept), max(kept) + roi))
    return tuple(box)
