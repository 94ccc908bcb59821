"""Screening the cases of a batch inference run: invalid cases are set aside and reported, the rest run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_components.constants import ET_LABEL, MODALITIES
from kd_components.data.brats import BratsCase, CaseProblem, discover_cases, validate_cases
from kd_components.data.datalist import load_datalist_split

__all__ = ["ScreenedCases", "screen_inference_cases"]


@dataclass
class ScreenedCases:
    """Outcome of :func:`screen_inference_cases`.

    Attributes:
        items: MONAI datalist items ``{"case_id", "image": [t1c, t1n, t2w, t2f]}`` (absolute paths) of the
            cases that passed every check, in input order.
        skipped: every problem of the cases left out (one case may have several).
    """

    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[CaseProblem] = field(default_factory=list)


def _case_from_item(item: dict[str, Any]) -> BratsCase:
    images = [Path(p) for p in item["image"]]
    case_id = Path(str(item.get("case_id") or images[0].parent)).name  # load_decathlon_datalist prefixes base_dir
    problems: tuple[CaseProblem, ...] = ()
    if len(images) != len(MODALITIES):
        problems = (
            CaseProblem(case_id, None, f"expected {len(MODALITIES)} images {list(MODALITIES)}, got {len(images)}"),
        )
    return BratsCase(case_id, images[0].parent, dict(zip(MODALITIES, images, strict=False)), None, problems)


def screen_inference_cases(
    dataset_dir: str | os.PathLike[str],
    data_list_file_path: str | os.PathLike[str] | None = None,
    split: str = "testing",
    fold: int = 0,
    et_label: int = ET_LABEL,
    workers: int = 1,
) -> ScreenedCases:
    """The cases to run inference on, each checked before the run (images only; a segmentation is not needed).

    Cases come from one split of a datalist (:func:`~kd_components.data.datalist.load_datalist_split`)
    or, with an empty ``data_list_file_path``, from every BraTS case folder under ``dataset_dir``. Each
    case is read in full and checked as in :func:`~kd_components.data.brats.validate_case`: four
    modalities present and readable as NIfTI, 3D, one shape and affine, finite and not all-zero voxels.
    A case that fails is not run; it is listed in ``skipped`` so that the run can report it (see
    :class:`~kd_components.handlers.InferenceSummary`), and the other cases go on.

    Raises:
        ValueError: the datalist or split is unusable, or no case is valid (every problem is listed).
    """
    if data_list_file_path:
        cases = [_case_from_item(item) for item in load_datalist_split(data_list_file_path, dataset_dir, split, fold)]
    else:
        cases = [BratsCase(c.case_id, c.directory, c.images, None, c.problems) for c in discover_cases(dataset_dir)]
        if not cases:
            raise ValueError(f"no BraTS case folders (named like BraTS-GLI-00000-000) under {dataset_dir}")
    screened = ScreenedCases()
    for report in validate_cases(cases, et_label=et_label, workers=workers):
        if report.ok:
            images = [str(report.case.images[m]) for m in MODALITIES]
            screened.items.append({"case_id": report.case.case_id, "image": images})
        else:
            screened.skipped.extend(report.problems)
    if not screened.items:
        listing = "\n  ".join(str(p) for p in screened.skipped)
        raise ValueError(f"no valid case to run inference on ({len(cases)} checked):\n  {listing}")
    return screened
