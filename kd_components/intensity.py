"""Intensity normalisation of brain MRI that does not rely on an exactly-zero background.

BraTS scans are skull-stripped with a background of exact zeros, and ``NormalizeIntensityd(nonzero=True)`` takes
the non-zero voxels as the brain. Scans from elsewhere break that rule in small ways: small negative values left
by registration and interpolation, a background of noise or a constant offset instead of zeros, float64 data,
intensity scales that differ a hundredfold between scanners. :func:`brain_foreground` finds the brain from the
volume's own background (its border), and :class:`NormalizeBraind` z-scores every channel over that brain and sets
everything else to exactly 0, so that the rest of the pipeline (``kd_components.transforms.brain_mask``, the brain
crop of ``brats-kd segment``) keeps its "0 outside the brain" rule.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import TransformBackends, convert_to_tensor

from kd_components.postprocess import bounding_box
from kd_components.transforms import all_finite

__all__ = [
    "BACKGROUND_MADS",
    "BACKGROUND_SHARE",
    "BORDER_VOXELS",
    "MIN_CONTRAST",
    "NormalizeBraind",
    "brain_foreground",
    "normalize_brain",
    "quantiles",
]

#: Thickness (voxels) of the volume's outer shell taken as background.
BORDER_VOXELS = 2
#: A voxel is brain in a channel when it is above the border's median by more than this many robust standard
#: deviations (1.4826 x the median absolute deviation) of the border: 0 above an exactly-zero background.
BACKGROUND_MADS = 6.0
#: The border is taken as background when its median lies in the lowest 5 % of the range between this quantile
#: of the whole channel and its top (a skull-stripped scan is mostly background); otherwise (a volume cropped to
#: the brain) the brain is the non-zero voxels.
BACKGROUND_SHARE = 0.25
#: ... and by more than this fraction of the channel's range (its 99.9th percentile above the border's median):
#: what interpolation leaves in an exactly-zero background (1e-5 of a neighbour's value) is not brain.
MIN_CONTRAST = 1e-3


def _border(channel: torch.Tensor, width: int) -> torch.Tensor:
    """The voxels of the outer shell ``width`` voxels thick of a 3D ``channel`` (all of it when it is thinner), as
    its six faces (each voxel once; in no particular order)."""
    if any(size <= 2 * width for size in channel.shape):
        return channel.flatten()
    inner = slice(width, -width)
    faces = (
        channel[:width],
        channel[-width:],
        channel[inner, :width],
        channel[inner, -width:],
        channel[inner, inner, :width],
        channel[inner, inner, -width:],
    )
    return torch.cat([face.flatten() for face in faces])


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[mask]`` (the same values in the same order), by NumPy on the CPU: several times faster than
    torch's boolean indexing there."""
    if values.device.type != "cpu":
        return values[mask]
    return torch.from_numpy(values.numpy()[mask.numpy()])


def quantiles(values: torch.Tensor, q: tuple[float, ...]) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) of a 1D float tensor on the CPU, bit for bit, with the
    order statistics found by selection (``numpy.partition``) instead of a full sort: several times faster on the
    million values of a channel."""
    if values.device.type != "cpu":
        return torch.quantile(values, torch.tensor(q, dtype=values.dtype, device=values.device))
    ranks = torch.tensor(q, dtype=values.dtype) * (values.numel() - 1)  # torch.quantile's ranks and weights
    below, above = ranks.long(), ranks.ceil().long()
    ordered = np.partition(values.numpy(), sorted({*below.tolist(), *above.tolist()}))
    return torch.lerp(torch.from_numpy(ordered[below.numpy()]), torch.from_numpy(ordered[above.numpy()]), ranks - below)


def brain_foreground(
    image: torch.Tensor, border: int = BORDER_VOXELS, mads: float = BACKGROUND_MADS, min_contrast: float = MIN_CONTRAST
) -> torch.Tensor:
    """The brain voxels of a skull-stripped scan ``(C, H, W, D)``: ``(H, W, D)`` bool, True where any channel is
    above its background level.

    Each channel's background is estimated on the volume's border (which a skull-stripped, field-of-view-centred
    brain touches at most on a small part): its median plus ``mads`` robust standard deviations, and at least
    ``min_contrast`` of the channel's range above the median. For BraTS data (exact zeros outside the brain,
    positive inside) this is "above 0.1 % of the range"; negative values, background noise and offsets, and what
    resampling leaves in the background fall below it. A border that is not background (its median well above
    the channel's :data:`BACKGROUND_SHARE` quantile: a volume cropped to the brain) falls back to "non-zero".
    """
    image = torch.as_tensor(image)
    mask = torch.zeros(image.shape[1:], dtype=torch.bool, device=image.device)
    for channel in image:
        values = _border(channel, border).float()
        if values.numel() == 0:
            values = channel.flatten().float()
        values = values[torch.isfinite(values)]  # NaN/Inf voxels are left to the value checks, which name the file
        if values.numel() == 0:
            continue
        median = values.median()
        spread = 1.4826 * (values - median).abs().median()
        flat = channel.flatten()
        sample = flat[:: max(1, flat.numel() // 1_000_000)].float()  # about a million values are enough
        if not all_finite(sample):
            sample = sample[torch.isfinite(sample)]
        low, top = quantiles(sample, (BACKGROUND_SHARE, 0.999))
        if median > low + 0.05 * (top - low):  # the border is not background (cropped to the brain): BraTS's rule
            mask |= channel != 0
            continue
        mask |= channel > median + torch.maximum(mads * spread, min_contrast * (top - median))
    return mask


def normalize_brain(image: NdarrayOrTensor) -> torch.Tensor:
    """``image`` ``(C, H, W, D)`` z-scored per channel over :func:`brain_foreground`, exactly 0 elsewhere
    (float32). A channel constant over the brain becomes 0 there (its std is 0); NaN and Inf voxels stay as they
    are, for the value checks to refuse the scan. Without a brain voxel (an empty or constant scan) the result is
    all zeros, which the value checks refuse as a constant scan, naming the file.
    """
    data = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
    mask = brain_foreground(data)
    out = torch.zeros_like(data)
    # the brain's bounding box: outside it every output voxel is 0 (on the CPU; a GPU tensor takes the whole grid)
    box = bounding_box(mask.numpy()) if mask.device.type == "cpu" else tuple(slice(None) for _ in mask.shape)
    if box is not None:
        inner = mask[box]
        for c, channel in enumerate(data):
            region = channel[box]
            values = _masked(region, inner)  # the brain's voxels in the order of channel[mask]: same mean and std
            std = values.std(unbiased=False)
            if std > 0:
                out[c][box] = torch.where(inner, (region - values.mean()) / std, 0.0)
    if not all_finite(data):
        bad = ~torch.isfinite(data)
        out[bad] = data[bad]  # kept: the value checks after preprocessing refuse the scan by name
    return out


class NormalizeBraind(MapTransform):
    """:func:`normalize_brain` on the images under ``keys`` (MetaTensors keep their metadata).

    The bundles' normalisation in place of ``NormalizeIntensityd(nonzero=True, channel_wise=True)``: identical on
    BraTS-style data (exact zeros outside the brain, no negative values), robust where the background is not 0.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            normalised = normalize_brain(image)
            d[key] = _like(image, normalised) if isinstance(image, torch.Tensor) else normalised.numpy()
        return d


def _like(image: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` as a tensor of ``image``'s kind (a MetaTensor keeps ``image``'s metadata and applied operations)."""
    from monai.data import MetaTensor

    if isinstance(image, MetaTensor):
        return MetaTensor(values, meta=dict(image.meta), applied_operations=list(image.applied_operations))
    return values
