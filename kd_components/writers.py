"""Saving predictions with MONAI's ``SaveImage(d)``: atomic NIfTI writes and BraTS case names."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.data import NibabelWriter
from monai.utils import ImageMetaKey

from kd_components.constants import MODALITIES, NIFTI_EXTENSIONS, match_case_id
from kd_components.io import atomic_path
from kd_components.transforms import CASE_ID_KEY


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's :class:`~monai.data.NibabelWriter`, writing to a temporary file renamed into place.

    A run killed while saving never leaves a truncated ``.nii.gz`` behind. Use it as
    ``SaveImaged(..., writer="kd_components.writers.AtomicNibabelWriter")``.
    """

    def write(self, filename: str | os.PathLike[str], verbose: bool = False, **obj_kwargs: Any) -> None:
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """The BraTS case id of a case's image file: ``.../BraTS-GLI-00000-000-t1c.nii.gz -> BraTS-GLI-00000-000``.

    Falls back to the file name without its NIfTI extension when it does not follow the BraTS layout.
    """
    name = Path(path).name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    stem, _, suffix = name.rpartition("-")
    if suffix.lower() in MODALITIES and match_case_id(stem):
        return stem
    return name


def case_id_of(meta: Mapping[str, Any] | None) -> str | None:
    """The case id of an image or prediction from its MONAI metadata: the datalist's ``case_id`` (put there by
    :class:`~kd_components.transforms.CaseIdToMetad`), else the BraTS id of its first source file
    (:func:`case_id_from_path`); ``None`` without either. The one rule by which every output is named."""
    meta = meta or {}
    case_id = meta.get(CASE_ID_KEY)
    if isinstance(case_id, list | tuple):
        case_id = case_id[0] if case_id else None
    if case_id:
        return str(case_id)
    source = meta.get(ImageMetaKey.FILENAME_OR_OBJ)
    if isinstance(source, list | tuple):
        source = source[0] if source else None
    return case_id_from_path(source) if source else None


def brats_case_name_formatter(metadict: dict | None, saver: Any) -> dict[str, Any]:
    """``output_name_formatter`` for ``SaveImage(d)``: name outputs ``<case_id>`` (+ the saver's postfix).

    The case id is :func:`case_id_of` the prediction's metadata: the datalist's case id, else the BraTS id of
    the first input file.
    """
    case_id = case_id_of(metadict)
    if not case_id:
        raise ValueError("cannot name the output: the prediction carries no case id and no source file name")
    return {"subject": case_id, "idx": None}


def case_meta_from_batch(batch: list[dict[str, Any]], image_key: str = "image") -> list[dict[str, str]]:
    """``batch_transform`` for MONAI's ``MetricsSaver``: per-case rows named by BraTS case id.

    ``batch`` is the decollated batch of an evaluator (a list of per-case dicts); the case id is
    :func:`case_id_of` the image's metadata.
    """
    return [{ImageMetaKey.FILENAME_OR_OBJ: case_id_of(getattr(item[image_key], "meta", {})) or ""} for item in batch]
