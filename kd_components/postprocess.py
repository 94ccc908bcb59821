"""Post-processing of predicted BraTS regions as the challenge's winners use it.

Two rules, applied to the binary region channels ``[TC, WT, ET]`` before they become a label map:

1. **Small components.** A connected component (26-connectivity, as the lesions of the BraTS evaluation) of a
   region smaller than that region's minimum volume is removed, outermost region first: a whole-tumour component
   goes with everything inside it (background), a tumour-core component becomes oedema (its ET goes too), an ET
   component becomes NETC (it stays tumour core). So the regions stay nested (ET inside TC inside WT).
2. **ET -> NETC.** When the enhancing tumour left is below a volume in all, it is relabelled as NETC: a few
   enhancing voxels in a case without enhancing tumour cost the whole ET Dice (BraTS scores an empty reference 0
   unless the prediction is empty too), while as NETC they stay in the tumour core.

Volumes are in mm³ (the voxel count times the voxel volume from the affine), so a threshold means the same on
any grid. The thresholds are bundle settings of ``inference.json`` (``postprocess``, ``postprocess_min_mm3``,
``postprocess_et_to_netc_mm3``), chosen on the validation fold by ``brats-kd choose-postprocessing``;
``evaluate.json`` repeats the two thresholds to score a network with and without them (a test keeps the two files
equal).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform
from scipy import ndimage

from kd_components.config_checks import as_bool
from kd_components.constants import ET_LABEL, REGIONS
from kd_components.transforms import ET_INDEX, TC_INDEX, WT_INDEX, BratsLabelsToRegions, regions_to_labels

__all__ = [
    "BratsPostprocessd",
    "PostprocessSettings",
    "bounding_box",
    "postprocess_label_map",
    "postprocess_regions",
    "small_components",
]

#: 26-connectivity in 3-D, the connectivity of the lesions (connected components) of the BraTS evaluation.
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


class PostprocessSettings:
    """The thresholds of :func:`postprocess_regions`.

    Args:
        min_component_mm3: region name (``TC``, ``WT``, ``ET``) -> smallest volume in mm³ a connected component keeps;
            a missing region or 0 keeps every component.
        et_to_netc_mm3: ET whose total volume is below this (mm³) is relabelled NETC; 0 never relabels.
    """

    def __init__(self, min_component_mm3: Mapping[str, float] | None = None, et_to_netc_mm3: float = 0.0) -> None:
        sizes = dict(min_component_mm3 or {})
        unknown = sorted(set(sizes) - set(REGIONS))
        if unknown:
            raise ValueError(f"min_component_mm3: unknown region(s) {unknown}; the regions are {list(REGIONS)}")
        for name, value in [*sizes.items(), ("et_to_netc_mm3", et_to_netc_mm3)]:
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"post-processing threshold {name} must be a volume >= 0 in mm³, got {value!r}")
        self.min_component_mm3 = {r: float(sizes.get(r, 0.0)) for r in REGIONS}
        self.et_to_netc_mm3 = float(et_to_netc_mm3)

    def __repr__(self) -> str:
        return f"PostprocessSettings(min_component_mm3={self.min_component_mm3}, et_to_netc_mm3={self.et_to_netc_mm3})"

    @property
    def is_identity(self) -> bool:
        """True when no rule can change anything."""
        return self.et_to_netc_mm3 == 0 and not any(self.min_component_mm3.values())


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the ``True`` voxels of a 3D ``mask`` (``None`` when there is none), from the mask's
    projections, each over the part of the grid the earlier ones left: a few times faster than
    ``ndimage.find_objects`` on a 1 mm BraTS grid."""
    box: list[slice] = []
    region = mask
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(region.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
        region = region[(*([slice(None)] * axis), box[-1])]
    return tuple(box)


def small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """The voxels of ``mask`` ``(H, W, D)`` that belong to connected components of fewer than ``min_voxels`` voxels.

    The components are labelled within the mask's bounding box only (no component reaches outside it), which on a
    1 mm BraTS grid is a small part of the volume.
    """
    out = np.zeros(mask.shape, dtype=bool)
    if min_voxels <= 1 or not mask.any():
        return out
    box = bounding_box(mask)
    components, count = ndimage.label(mask[box], structure=CONNECTIVITY)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    small = sizes < min_voxels
    small[0] = False
    out[box] = small[components]
    return out


def postprocess_regions(
    regions: np.ndarray, spacing: Sequence[float], settings: PostprocessSettings
) -> tuple[np.ndarray, dict[str, int]]:
    """Apply the rules to binary regions ``(3, H, W, D)`` ``[TC, WT, ET]`` with voxel ``spacing`` (mm).

    The regions are first nested as :func:`~kd_components.transforms.regions_to_labels` reads them (TC includes ET,
    WT includes TC), so the result is the same as post-processing the label map. Returns the new regions (bool) and
    what changed: voxels removed per region and whether ET was relabelled
    (``{"WT": n, "TC": n, "ET": n, "et_to_netc": 0 or 1}``).
    """
    r = np.asarray(regions).astype(bool).copy()
    if r.shape[0] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region channels {REGIONS} in dim 0, got {r.shape}")
    # the regions as the label map reads them (regions_to_labels: ET wins over TC, TC over WT): nested
    r[TC_INDEX] |= r[ET_INDEX]
    r[WT_INDEX] |= r[TC_INDEX]
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    changes = {"WT": 0, "TC": 0, "ET": 0, "et_to_netc": 0}
    # outermost first; removing a component also removes it from the regions inside
    for name, index, inner in (
        ("WT", WT_INDEX, (TC_INDEX, ET_INDEX)),
        ("TC", TC_INDEX, (ET_INDEX,)),
        ("ET", ET_INDEX, ()),
    ):
        small = small_components(r[index], settings.min_component_mm3[name] / voxel_mm3)
        changes[name] = int(small.sum())
        for i in (index, *inner):
            r[i] &= ~small
    et_volume = float(r[ET_INDEX].sum()) * voxel_mm3
    if 0 < et_volume < settings.et_to_netc_mm3:
        r[TC_INDEX] |= r[ET_INDEX]
        r[ET_INDEX] = False
        changes["et_to_netc"] = 1
    return r, changes


def postprocess_label_map(
    labels: np.ndarray, spacing: Sequence[float], settings: PostprocessSettings, et_label: int = ET_LABEL
) -> np.ndarray:
    """:func:`postprocess_regions` on a BraTS label map ``(H, W, D)``; returns the new label map (uint8)."""
    regions = np.asarray(BratsLabelsToRegions(et_label=et_label)(np.asarray(labels)[None]))
    out, _ = postprocess_regions(regions, spacing, settings)
    return np.asarray(regions_to_labels(out, et_label))[0]


class BratsPostprocessd(MapTransform):
    """:func:`postprocess_regions` as a MONAI dictionary transform of binary region predictions ``(3, H, W, D)``
    (after ``AsDiscreted``, before :class:`~kd_components.transforms.RegionsToBratsLabelsd`).

    The voxel spacing comes from the prediction's affine (a MetaTensor; 1 mm without one). Keeps the type, device
    and metadata of the input.

    Args:
        keys: prediction keys.
        min_component_mm3, et_to_netc_mm3: see :class:`PostprocessSettings`.
        enabled: ``False`` (or ``"false"``) passes predictions through unchanged (``brats-kd segment
            --no-postprocess``, ``--postprocess false`` of the bundle).
        allow_missing_keys: skip keys that are absent (a prediction dropped as non-finite).
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_component_mm3: Mapping[str, float] | None = None,
        et_to_netc_mm3: float = 0.0,
        enabled: bool | str = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.settings = PostprocessSettings(min_component_mm3, et_to_netc_mm3)
        self.enabled = as_bool(enabled, "postprocess")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if not self.enabled or self.settings.is_identity:
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            affine = getattr(pred, "affine", None)
            spacing = affine_to_spacing(affine, r=3).tolist() if affine is not None else (1.0, 1.0, 1.0)
            values = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            foreground = values > 0.5
            regions = np.zeros_like(foreground)
            box = bounding_box(foreground.any(axis=0))
            if box is not None:  # the rules only remove voxels: run them on the tumour's box, not the whole grid
                inside = (slice(None), *box)
                regions[inside], _ = postprocess_regions(foreground[inside], spacing, self.settings)
            if isinstance(pred, torch.Tensor):
                out = pred.clone()
                out[...] = torch.as_tensor(regions, device=pred.device).to(pred.dtype)
            else:
                out = regions.astype(np.asarray(pred).dtype)
            d[key] = out
        return d
