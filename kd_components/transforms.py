"""BraTS label maps <-> the three overlapping region channels ``[TC, WT, ET]``.

Regions (BraTS convention):

- TC, tumour core      = NETC | ET
- WT, whole tumour     = NETC | SNFH | ET
- ET, enhancing tumour = ET

BraTS 2023 marks ET with 3; BraTS 2018-2022 and MONAI's defaults use 4. Every function here
takes ``et_label`` explicitly (default :data:`~kd_components.constants.ET_LABEL` = 3) and, in
strict mode, refuses label values outside the chosen convention instead of silently dropping
them (a 4 in BraTS-2023 data would otherwise vanish from every region).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, CropForegroundd, MapTransform, Transform
from monai.utils import TransformBackends

from kd_components.constants import BACKGROUND_LABEL, ET_LABEL, NETC_LABEL, REGIONS, SNFH_LABEL, allowed_labels

TC_INDEX, WT_INDEX, ET_INDEX = (REGIONS.index(r) for r in ("TC", "WT", "ET"))

#: Datalist key of a case's id, and the metadata key :class:`CaseIdToMetad` copies it to.
CASE_ID_KEY = "case_id"


def _unique_values(label: NdarrayOrTensor) -> set[int | float]:
    values = torch.unique(label).tolist() if isinstance(label, torch.Tensor) else np.unique(np.asarray(label)).tolist()
    return {int(v) if float(v).is_integer() else float(v) for v in values}


def unknown_label_values(label: NdarrayOrTensor, et_label: int = ET_LABEL) -> list[int | float]:
    """Sorted label values in ``label`` that are not BraTS labels under ``et_label`` (empty if all known)."""
    allowed = allowed_labels(et_label)
    return sorted(v for v in _unique_values(label) if v not in allowed)


class BratsLabelsToRegions(Transform):
    """Convert a BraTS label map to region channels ``[TC, WT, ET]``.

    Wraps MONAI's :class:`~monai.transforms.ConvertToMultiChannelBasedOnBratsClasses` (which
    implements the region definitions) with the BraTS-2023 default ``et_label=3`` and a strict
    check of the label values.

    Args:
        et_label: label value of the enhancing tumour: 3 (BraTS 2023) or 4 (BraTS 2018-2022).
        strict: raise ``ValueError`` when the map holds values other than 0, 1, 2 and ``et_label``.

    Input: ``(H, W, D)`` or ``(1, H, W, D)`` integer-valued labels. Output: ``(3, H, W, D)`` bool.
    """

    backend = ConvertToMultiChannelBasedOnBratsClasses.backend

    def __init__(self, et_label: int = ET_LABEL, strict: bool = True) -> None:
        allowed_labels(et_label)  # validates et_label
        self.et_label = et_label
        self.strict = strict
        self._convert = ConvertToMultiChannelBasedOnBratsClasses(et_label=et_label)

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        if self.strict:
            unknown = unknown_label_values(label, self.et_label)
            if unknown:
                raise ValueError(
                    f"unknown label values {unknown}: with et_label={self.et_label} the BraTS labels are "
                    f"{sorted(allowed_labels(self.et_label))}"
                )
        return self._convert(label)


class BratsLabelsToRegionsd(MapTransform):
    """Dictionary version of :class:`BratsLabelsToRegions`; the error names the offending key."""

    backend = BratsLabelsToRegions.backend

    def __init__(
        self, keys: KeysCollection, et_label: int = ET_LABEL, strict: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BratsLabelsToRegions(et_label=et_label, strict=strict)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.converter(d[key])
            except ValueError as err:
                source = getattr(d[key], "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{source}: {err}") from err
        return d


def regions_to_labels(regions: NdarrayOrTensor, et_label: int = ET_LABEL) -> NdarrayOrTensor:
    """Convert binary region channels ``(3, H, W, D)`` ``[TC, WT, ET]`` to a label map ``(1, H, W, D)``.

    Predicted regions need not be nested; precedence follows the BraTS definitions:
    ET wins over TC, TC over WT. So ``ET -> et_label``, ``TC and not ET -> NETC (1)``,
    ``WT and not TC/ET -> SNFH (2)``, else background (0). Returns ``uint8`` (NumPy) or ``torch.uint8``.
    """
    allowed_labels(et_label)
    if regions.shape[0] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region channels {REGIONS} in dim 0, got {tuple(regions.shape)}")
    if isinstance(regions, torch.Tensor):
        r = regions.bool()
        out = torch.full(r.shape[1:], BACKGROUND_LABEL, dtype=torch.uint8, device=r.device)
    else:
        r = np.asarray(regions).astype(bool)
        out = np.full(r.shape[1:], BACKGROUND_LABEL, dtype=np.uint8)
    out[r[WT_INDEX]] = SNFH_LABEL
    out[r[TC_INDEX]] = NETC_LABEL
    out[r[ET_INDEX]] = et_label
    return out[None]


class RegionsToBratsLabels(Transform):
    """Post-processing: binary ``[TC, WT, ET]`` channels ``(3, H, W, D)`` -> one BraTS label map ``(1, H, W, D)``.

    Args:
        et_label: value written for enhancing tumour: 3 (BraTS 2023, default) or 4 (legacy).
    """

    backend = BratsLabelsToRegions.backend

    def __init__(self, et_label: int = ET_LABEL) -> None:
        allowed_labels(et_label)
        self.et_label = et_label

    def __call__(self, regions: NdarrayOrTensor) -> NdarrayOrTensor:
        out = regions_to_labels(regions, self.et_label)
        meta = getattr(regions, "meta", None)
        if meta is not None and isinstance(out, torch.Tensor):
            from monai.data import MetaTensor

            out = MetaTensor(out, meta=dict(meta), applied_operations=list(getattr(regions, "applied_operations", [])))
        return out


class RegionsToBratsLabelsd(MapTransform):
    """Dictionary version of :class:`RegionsToBratsLabels`."""

    backend = RegionsToBratsLabels.backend

    def __init__(self, keys: KeysCollection, et_label: int = ET_LABEL, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToBratsLabels(et_label=et_label)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class NestRegionsd(MapTransform):
    """Binary ``[TC, WT, ET]`` channels ``(3, H, W, D)`` -> the regions of the label map they are written as:
    TC | ET, WT | TC | ET, ET (the precedence of :func:`regions_to_labels`, read back as BraTS reads a label map).

    A network's three sigmoid channels need not be nested (an ET voxel outside its TC), but every label map it
    writes is, and the challenge scores the label map. Validation and ``evaluate.json`` score the nested channels,
    so their numbers are those of ``brats-kd segment``'s label maps scored by ``brats-kd evaluate``.
    """

    backend = (TransformBackends.TORCH, TransformBackends.NUMPY)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            if regions.shape[0] != len(REGIONS):
                raise ValueError(f"expected {len(REGIONS)} region channels {REGIONS} in dim 0, got {regions.shape}")
            tc = (regions[TC_INDEX] > 0) | (regions[ET_INDEX] > 0)
            nested = regions.clone() if isinstance(regions, torch.Tensor) else np.array(regions, copy=True)
            nested[TC_INDEX] = tc
            nested[WT_INDEX] = tc | (regions[WT_INDEX] > 0)
            d[key] = nested
        return d


def brain_mask(image: NdarrayOrTensor, channel_dim: int = 0) -> NdarrayOrTensor:
    """Brain voxels of a skull-stripped multi-channel image: uint8, 1 where any channel is non-zero.

    The one brain-mask rule of the project (BraTS images are 0 outside the brain, and
    ``NormalizeIntensityd(nonzero=True)`` keeps them 0). Compute it before intensity augmentations that
    move the background (``RandShiftIntensityd``), and crop/flip it with the image.

    Args:
        image: ``(C, H, W, D)`` (``channel_dim=0``) or a batch ``(B, C, H, W, D)`` (``channel_dim=1``).
        channel_dim: the channel axis. Defaults to 0.

    Returns:
        the image's shape with one channel: ``(1, H, W, D)`` or ``(B, 1, H, W, D)``.
    """
    if isinstance(image, torch.Tensor):  # an OR of the channels: a few times faster than .any(dim) on the CPU
        mask = functools.reduce(torch.logical_or, (channel != 0 for channel in image.unbind(channel_dim)))
        return mask.unsqueeze(channel_dim).to(torch.uint8)
    return np.any(np.asarray(image) != 0, axis=channel_dim, keepdims=True).astype(np.uint8)


class BrainMaskd(MapTransform):
    """Add the brain mask (:func:`brain_mask`, ``(1, H, W, D)`` uint8) of the image under ``keys`` as ``mask_key``.

    Used by the distillation pipelines: the soft-target loss is averaged over brain voxels only, and
    unlabelled patches are sampled around brain voxels (``RandCropByPosNegLabeld(label_key=mask_key)``).

    Args:
        keys: the image key (one key).
        mask_key: key of the added mask. Defaults to ``"brain_mask"``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, keys: KeysCollection, mask_key: str = "brain_mask", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"BrainMaskd takes one image key, got {list(self.keys)}")
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = brain_mask(d[key])
            meta = getattr(d[key], "meta", None)
            if meta is not None and isinstance(mask, torch.Tensor):
                from monai.data import MetaTensor

                mask = MetaTensor(mask, meta=dict(meta), applied_operations=list(d[key].applied_operations))
            d[self.mask_key] = mask
        return d


#: Voxels kept around the brain's bounding box, in training (:class:`CropToBraind`) and in inference
#: (``kd_components.segment.crop.brain_box``) alike, so that both run their windows over the same box.
BRAIN_MARGIN = 4


class CropToBraind(CropForegroundd):
    """Crop the images under ``keys`` to the brain's bounding box (:func:`brain_mask` of ``source_key``) plus
    ``margin`` voxels, clipped to the grid (never padded): the box ``brats-kd segment`` slides its windows over.

    A 1 mm BraTS grid (240 x 240 x 155) holds a brain of about 140 x 175 x 145 voxels, so a cropped case takes about
    a third of the memory and of the disk of the whole grid; the training pipelines crop before they cache. The
    affine of each MetaTensor is moved with the crop (MONAI's ``CropForegroundd``).

    Args:
        keys: the keys to crop (the image and its label map or regions).
        source_key: the image whose non-zero voxels (any channel) define the brain. Defaults to ``"image"``.
        margin: voxels added on every side. Defaults to :data:`BRAIN_MARGIN`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "image",
        margin: int = BRAIN_MARGIN,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys,
            source_key=source_key,
            select_fn=brain_mask,
            margin=margin,
            allow_smaller=True,
            start_coord_key=None,
            end_coord_key=None,
            allow_missing_keys=allow_missing_keys,
        )


class CaseIdToMetad(MapTransform):
    """Copy the datalist entry's case id (``d[case_id_key]``) into the metadata of the images under ``keys``.

    MONAI carries an image's metadata through preprocessing, the network and postprocessing to the
    prediction, so writers and handlers name their outputs by it (:func:`kd_components.writers.case_id_of`)
    instead of by an input file name, which two cases may share (``patient1/t1c.nii.gz``,
    ``patient2/t1c.nii.gz``). Entries without a case id are left alone.

    Args:
        keys: image keys (MetaTensors, i.e. after ``LoadImaged``).
        case_id_key: the entry's case-id key, also the metadata key. Defaults to ``"case_id"``.
    """

    def __init__(self, keys: KeysCollection, case_id_key: str = CASE_ID_KEY, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.case_id_key = case_id_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        case_id = d.get(self.case_id_key)
        if case_id is None:
            return d
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", None)
            if meta is not None:
                meta[self.case_id_key] = Path(str(case_id)).name  # a file name: an output is never written elsewhere
        return d


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value of ``values`` is finite, by one fast reduction: its minimum and maximum are finite (a NaN
    propagates into both, an infinity is one of them); several times faster than ``torch.isfinite(values).all()``."""
    if values.numel() == 0:
        return True
    low, high = torch.aminmax(values)
    return bool(torch.isfinite(low) & torch.isfinite(high))


class DropNonFinited(MapTransform):
    """Drop a prediction whose values are not all finite, so that no label map or volume is made from it.

    NaN or Inf logits (an input or weights that overflow) would otherwise become an empty label map with
    0 mL everywhere. The key is removed and ``d[problem_key]`` says why, naming the case; the following
    postprocessing transforms skip the missing key (``allow_missing_keys``) and
    :class:`~kd_components.handlers.InferenceSummary` reports the case as skipped (exit status 1).

    Args:
        keys: prediction keys, e.g. ``"pred"`` (logits ``(C, H, W, D)``).
        problem_key: where the reason goes. Defaults to ``"problem"``.
    """

    def __init__(self, keys: KeysCollection, problem_key: str = "problem", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.problem_key = problem_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            values = torch.as_tensor(d[key])
            if all_finite(values):
                continue
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                d.pop(key)
                d[self.problem_key] = (
                    f"the network output has {bad} non-finite value(s) of {values.numel()} (NaN/Inf): no label map "
                    "written (check the input's intensities and the checkpoint's weights)"
                )
        return d


__all__ = [
    "BRAIN_MARGIN",
    "CASE_ID_KEY",
    "ET_INDEX",
    "TC_INDEX",
    "WT_INDEX",
    "BrainMaskd",
    "BratsLabelsToRegions",
    "BratsLabelsToRegionsd",
    "CaseIdToMetad",
    "CropToBraind",
    "DropNonFinited",
    "NestRegionsd",
    "RegionsToBratsLabels",
    "RegionsToBratsLabelsd",
    "all_finite",
    "brain_mask",
    "regions_to_labels",
    "unknown_label_values",
]
