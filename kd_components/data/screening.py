"""Screening the cases of a batch inference run: invalid cases are set aside and reported, the rest run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_components.constants import ET_LABEL, MODALITIES
from kd_components.data.brats import BratsCase, CaseProblem, find_cases, validate_cases
from kd_components.data.datalist import entry_name, image_list_problems, load_datalist_split

__all__ = ["ScreenedCases", "screen_inference_cases"]

logger = logging.getLogger(__name__)


@dataclass
class ScreenedCases:
    """Outcome of :func:`screen_inference_cases`.

    Attributes:
        items: MONAI datalist items ``{"case_id", "image": [t1c, t1n, t2w, t2f]}`` (absolute paths) of the
            cases that passed every check, in input order.
        skipped: every problem of the cases left out (one case may have several), and, without a datalist, one
            problem per folder not taken as a case (its ``case_id`` is the folder's path below the data set root).
    """

    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[CaseProblem] = field(default_factory=list)


def _case_from_item(item: dict[str, Any], index: int | None = None, where: str = "") -> BratsCase:
    """The case of one datalist item (absolute paths). Without a ``case_id`` the case is named by the folder of its
    first image (``patient1/t1c.nii.gz -> patient1``). What :func:`~kd_components.data.datalist.image_list_problems`
    finds wrong with the images (their number, the same file twice, the channel order by file name) becomes a
    problem of the case; ``where`` (e.g. ``'testing' entry 3 of <datalist>``) is added to those messages."""
    images = [Path(p) for p in item["image"]]
    if item.get("case_id"):
        case_id = Path(str(item["case_id"])).name  # as CaseIdToMetad names the output
    elif images:
        case_id = images[0].parent.name
    else:
        case_id = f"entry {index}"
    suffix = f" ({where})" if where else ""
    problems = tuple(CaseProblem(case_id, None, p + suffix) for p in image_list_problems([str(p) for p in images]))
    directory = images[0].parent if images else Path()
    return BratsCase(case_id, directory, dict(zip(MODALITIES, images, strict=False)), None, problems)


def _datalist_cases(
    data_list_file_path: str | os.PathLike[str], dataset_dir: str | os.PathLike[str], split: str, fold: int
) -> tuple[list[BratsCase], list[CaseProblem]]:
    """The cases of one split of a datalist and the problems of the entries left out before any file is read.

    Raises:
        ValueError: two entries share a case id (they would write the same ``<case_id>.nii.gz``), or the
            datalist or split is unusable.
    """
    key = "testing" if split == "testing" else "training"
    items = load_datalist_split(data_list_file_path, dataset_dir, split, fold, check_images=False)
    cases = [
        _case_from_item(item, index, f"{entry_name(key, index, item)} of {data_list_file_path}")
        for index, item in enumerate(items)
    ]
    first_of_id: dict[str, int] = {}
    collisions = []
    for index, case in enumerate(cases):
        earlier = first_of_id.setdefault(case.case_id.lower(), index)  # one name on case-insensitive file systems
        if earlier != index:
            collisions.append(
                f"{data_list_file_path}: {entry_name(key, earlier, items[earlier])} and "
                f"{entry_name(key, index, items[index])} have the same case id {case.case_id} "
                f"(both would write {case.case_id}.nii.gz); give each entry its own 'case_id'"
            )
    if collisions:
        raise ValueError("\n".join(collisions))
    kept, skipped = [], []
    first_of_images: dict[frozenset[str], int] = {}
    for index, case in enumerate(cases):
        files = frozenset(os.path.realpath(p) for p in case.images.values())
        earlier = first_of_images.setdefault(files, index)
        if earlier != index and len(files) == len(MODALITIES):
            problem = (
                f"same four image files as entry {earlier} ({cases[earlier].case_id}) of {data_list_file_path}: "
                "not run a second time under another name"
            )
            skipped.append(CaseProblem(case.case_id, None, problem))
        else:
            kept.append(case)
    return kept, skipped


def screen_inference_cases(
    dataset_dir: str | os.PathLike[str],
    data_list_file_path: str | os.PathLike[str] | None = None,
    split: str = "testing",
    fold: int = 0,
    et_label: int = ET_LABEL,
    workers: int = 1,
    plausibility: bool = True,
) -> ScreenedCases:
    """The cases to run inference on, each checked before the run (images only; a segmentation is not needed).

    Cases come from one split of a datalist (:func:`~kd_components.data.datalist.load_datalist_split`)
    or, with an empty ``data_list_file_path``, from every BraTS case folder under ``dataset_dir``
    (:func:`~kd_components.data.brats.find_cases`, as ``brats-kd datalist`` finds them). Each
    case is read in full and checked as in :func:`~kd_components.data.brats.validate_case`: four
    modalities present and readable as NIfTI, 3D, one shape and affine, values the network can use. A
    datalist entry must also list four different files, in the order ``[t1c, t1n, t2w, t2f]`` where the file
    names say the modality; an entry with the same four files as an earlier one is not run again. A case that
    fails is not run; it is listed in ``skipped`` so that the run can report it (see
    :class:`~kd_components.handlers.InferenceSummary`), and the other cases go on. Without a datalist, the
    folders holding NIfTI files that are not taken as cases are listed in ``skipped`` too. With ``plausibility``
    (the bundles' ``plausibility_check``), a case that is not a whole brain with its modalities in their places
    (:func:`~kd_components.data.plausibility.plausibility_problems`) is skipped too.

    Raises:
        ValueError: the datalist or split is unusable, two entries have the same case id (the same output
            file), or no case is valid (every problem is listed).
    """
    screened = ScreenedCases()
    if data_list_file_path:
        cases, screened.skipped = _datalist_cases(data_list_file_path, dataset_dir, split, fold)
    else:
        discovery = find_cases(dataset_dir)
        for note in discovery.notes:
            logger.info("%s", note)
        cases = [BratsCase(c.case_id, c.directory, c.images, None, c.problems) for c in discovery.cases]
        screened.skipped = list(discovery.not_cases)
        if not cases:
            listing = "".join(f"\n  {p}" for p in screened.skipped)
            raise ValueError(f"no BraTS case folders (named like BraTS-GLI-00000-000) under {dataset_dir}{listing}")
    for report in validate_cases(cases, et_label=et_label, workers=workers):
        problem = _implausible(report.case) if report.ok and plausibility else None
        if report.ok and problem is None:
            images = [str(report.case.images[m]) for m in MODALITIES]
            screened.items.append({"case_id": report.case.case_id, "image": images})
        elif problem is not None:
            screened.skipped.append(problem)
        else:
            screened.skipped.extend(report.problems)
    if not screened.items:
        listing = "\n  ".join(str(p) for p in screened.skipped)
        raise ValueError(f"no valid case to run inference on ({len(cases)} checked):\n  {listing}")
    return screened


def _implausible(case: BratsCase) -> CaseProblem | None:
    """The case's first plausibility problem (its four scans as read), or ``None``."""
    import nibabel as nib
    import numpy as np

    from kd_components.data.plausibility import plausibility_problems

    files = [case.images[m] for m in MODALITIES]
    scans = [nib.load(str(f)) for f in files]
    image = np.stack([np.asarray(scan.dataobj, dtype=np.float32) for scan in scans])
    problems = plausibility_problems(image, scans[0].affine, [f.name for f in files])
    if not problems:
        return None
    return CaseProblem(case.case_id, None, f"{problems[0]} (if the scans are right: --plausibility_check false)")
