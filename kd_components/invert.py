"""Probabilities on the network's grid -> thresholded regions on the input's grid, resampling only where it matters.

The bundles' preprocessing reorients a scan (``Orientationd``) and resamples it to the network's voxel size
(``Spacingd``, bilinear). MONAI's ``Invertd`` followed by ``AsDiscreted(threshold=0.5)`` brings the network's
sigmoid probabilities back: every channel is interpolated over the whole input grid (on a 1 mm BraTS case three
channels x 8.9 M voxels), although almost all of it is background far from any tumour.

:class:`InvertThresholdd` gives the same binary regions while interpolating only a box. Trilinear interpolation is
a convex combination of the 8 grid voxels around a point, so a point can reach the threshold only when one of
them does: every input voxel at or above the threshold maps into the bounding box of the network voxels at or
above it, grown by one voxel. The transform resamples the network's probabilities inside that box (plus one more
voxel, so that every interpolation reads the same neighbours as over the whole grid) onto the input voxels that
map into it, thresholds them and writes them into an all-background grid. The mapping is the one ``Invertd``
applies (the inverse of ``Spacingd``'s resampling, then of ``Orientationd``'s flips and permutation), composed
into one affine map; ``tests/test_invert.py`` checks the result against ``Invertd`` + ``AsDiscreted`` on oblique,
anisotropic and reoriented grids. A preprocessing with any other spatial transform falls back to ``Invertd``.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Invertd, MapTransform, SpatialResample
from monai.utils import TraceKeys

from kd_components.postprocess import bounding_box

__all__ = ["InvertThresholdd", "input_grid", "invert_thresholded"]

#: The preprocessing transforms whose inverse is one affine resampling (MONAI's names in ``applied_operations``).
AFFINE_ONLY = frozenset({"Orientation", "Orientationd", "Spacing", "Spacingd", "SpatialResample"})


def input_grid(image: MetaTensor) -> tuple[tuple[int, ...], np.ndarray, torch.dtype] | None:
    """The input's spatial shape and affine ``(4, 4)`` before a preprocessing of reorientation and resampling only
    (the first applied operation's original size and, for ``Orientation``, its original affine), and the dtype the
    resampling computed in (``Invertd`` inverts in it too); ``None`` when ``image`` carries another spatial
    transform (or none: then the input's grid is the network's)."""
    operations = list(getattr(image, "applied_operations", []))
    if not operations or any(op.get(TraceKeys.CLASS_NAME) not in AFFINE_ONLY for op in operations):
        return None
    first = operations[0]
    shape = tuple(int(s) for s in first[TraceKeys.ORIG_SIZE])
    extra = first.get(TraceKeys.EXTRA_INFO, {})
    if first[TraceKeys.CLASS_NAME] in ("Orientation", "Orientationd"):
        affine = extra["original_affine"]
    else:  # a resampling first: its source affine
        affine = extra["src_affine"]
    dtype = torch.float64  # Spacing's default
    for op in operations:
        if op[TraceKeys.CLASS_NAME] not in ("Orientation", "Orientationd"):
            dtype = getattr(torch, str(op.get(TraceKeys.EXTRA_INFO, {}).get("dtype", "float64")), torch.float64)
    return shape, np.asarray(affine, dtype=np.float64), dtype


def invert_thresholded(
    probabilities: torch.Tensor,
    network_affine: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray,
    threshold: float = 0.5,
    padding_mode: str = "border",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Binary channels ``(C, *shape)`` uint8 on the input's grid: ``probabilities`` ``(C, h, w, d)`` on the network's
    grid (``network_affine``) resampled (trilinear in ``dtype``, as ``Invertd`` with ``nearest_interp=False``) onto
    the grid of ``shape`` and ``affine`` and thresholded (``>= threshold``, as ``AsDiscreted``), interpolating only
    the box that can hold a voxel at or above the threshold (module docstring)."""
    to_input = np.linalg.solve(np.asarray(affine, dtype=np.float64), np.asarray(network_affine, dtype=np.float64))
    axes = _voxel_permutation(to_input, probabilities.shape[1:], shape)
    if axes is not None:  # the grids' voxels coincide: interpolation reads each voxel alone (Invertd copies too)
        order, flips = axes
        thresholded = (probabilities >= threshold).to(torch.uint8).permute(0, *(k + 1 for k in order))
        return thresholded.flip([a + 1 for a in flips]).contiguous() if flips else thresholded.contiguous()
    channels = probabilities.shape[0]
    out = torch.zeros((channels, *(int(s) for s in shape)), dtype=torch.uint8)
    box = bounding_box((probabilities >= threshold).any(dim=0).numpy())
    if box is None:
        return out
    net_shape = np.array(probabilities.shape[1:])
    low, high = np.array([b.start for b in box]), np.array([b.stop - 1 for b in box])
    # network voxels whose neighbourhood can reach the threshold, then every voxel an interpolation there reads
    src_low = np.maximum(low - 2, 0)
    src_high = np.minimum(high + 2, net_shape - 1)
    # input voxels that map into [low - 1, high + 1] (the box's corners mapped back to the input's voxels)
    corners = np.array([[*c, 1.0] for c in itertools.product(*zip(low - 1, high + 1, strict=True))])
    mapped = (to_input @ corners.T)[:3]
    dst_low = np.maximum(np.floor(mapped.min(axis=1)).astype(int), 0)
    dst_high = np.minimum(np.ceil(mapped.max(axis=1)).astype(int), np.array(shape) - 1)
    if np.any(dst_high < dst_low):
        return out
    src_affine = np.asarray(network_affine, dtype=np.float64).copy()
    src_affine[:3, 3] += src_affine[:3, :3] @ src_low
    dst_affine = np.asarray(affine, dtype=np.float64).copy()
    dst_affine[:3, 3] += dst_affine[:3, :3] @ dst_low
    source = probabilities[(slice(None), *(slice(lo, hi + 1) for lo, hi in zip(src_low, src_high, strict=True)))]
    resampled = SpatialResample(mode="bilinear", padding_mode=padding_mode, align_corners=False, dtype=dtype)(
        MetaTensor(source.float(), affine=torch.as_tensor(src_affine)),
        dst_affine=torch.as_tensor(dst_affine),
        spatial_size=tuple(int(s) for s in dst_high - dst_low + 1),
    )
    target = (slice(None), *(slice(lo, hi + 1) for lo, hi in zip(dst_low, dst_high, strict=True)))
    out[target] = (
        torch.as_tensor(resampled.as_tensor() if isinstance(resampled, MetaTensor) else resampled) >= threshold
    ).to(torch.uint8)
    return out


def _voxel_permutation(
    to_input: np.ndarray, network_shape: Sequence[int], shape: Sequence[int], tolerance: float = 1e-4
) -> tuple[list[int], list[int]] | None:
    """Where the network's grid is the input's with its axes permuted and flipped (``to_input``, the ``(4, 4)`` map
    from network to input voxel indices, a signed permutation whose image is the input's whole grid): for each input
    axis the network axis it comes from, and the input axes that run backwards; ``None`` otherwise."""
    linear, translation = to_input[:3, :3], to_input[:3, 3]
    signs = np.round(linear)
    if not np.allclose(linear, signs, atol=tolerance) or not np.array_equal(np.abs(signs).sum(axis=1), np.ones(3)):
        return None
    order = [int(np.flatnonzero(row)[0]) for row in signs]
    if sorted(order) != [0, 1, 2]:
        return None
    flips = []
    for axis, source in enumerate(order):
        if int(network_shape[source]) != int(shape[axis]):
            return None
        start = 0.0 if signs[axis, source] > 0 else float(shape[axis] - 1)  # where network voxel 0 lands
        if abs(translation[axis] - start) > tolerance:
            return None
        if signs[axis, source] < 0:
            flips.append(axis)
    return order, flips


class InvertThresholdd(MapTransform):
    """``Invertd(nearest_interp=False)`` then ``AsDiscreted(threshold=...)`` of sigmoid probabilities ``(C, h, w, d)``
    as one transform that interpolates only where a voxel can reach the threshold (module docstring): binary
    channels ``(C, H, W, D)`` (uint8) on the input's grid, with its affine.

    Args:
        keys: prediction keys (probabilities on the network's grid, a MetaTensor with its affine).
        transform: the preprocessing (its ``Invertd`` fallback, for a preprocessing that is not only reorientation
            and resampling).
        orig_keys: the preprocessed image whose applied operations say where the input's grid was.
        threshold: as ``AsDiscreted``'s (``>=``).
        allow_missing_keys: skip keys that are absent (a prediction dropped as non-finite).
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: object,
        orig_keys: str = "image",
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orig_keys = orig_keys
        self.threshold = float(threshold)
        self.fallback = Invertd(
            keys, transform=transform, orig_keys=orig_keys, nearest_interp=False, allow_missing_keys=allow_missing_keys
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = d[self.orig_keys]
        grid = input_grid(image) if isinstance(image, MetaTensor) else None
        if grid is None:
            d = dict(self.fallback(d))
            for key in self.key_iterator(d):
                d[key] = (d[key] >= self.threshold).to(torch.uint8)
            return d
        shape, affine, dtype = grid
        for key in self.key_iterator(d):
            pred = d[key]
            network_affine = np.asarray(pred.affine if isinstance(pred, MetaTensor) else image.affine, dtype=np.float64)
            values = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
            out = invert_thresholded(values.detach().cpu(), network_affine, shape, affine, self.threshold, dtype=dtype)
            meta = dict(pred.meta) if isinstance(pred, MetaTensor) else dict(image.meta)
            meta["affine"] = torch.as_tensor(affine)
            meta["spatial_shape"] = np.asarray(shape)
            d[key] = MetaTensor(out, meta=meta)
        return d
