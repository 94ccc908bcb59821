"""What ``brats-kd segment`` is given, as cases: a case folder, a folder of case folders, or four files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from monai.data import MetaTensor
from monai.transforms import LoadImage

from kd_components.constants import ET_LABEL, MODALITIES, match_case_id
from kd_components.data.brats import BratsCase, CaseProblem, case_from_directory, find_cases, validate_case
from kd_components.io import is_brats_kd_label_map
from kd_components.niftiio import ParallelNibabelReader
from kd_components.segment.segmenter import CaseFailed, read_failure
from kd_components.writers import case_id_from_path

__all__ = [
    "CaseBatch",
    "SegmentInputs",
    "case_id_problem",
    "header_problems",
    "open_case",
    "open_cases",
    "read_case_image",
    "resolve_inputs",
]


@dataclass
class SegmentInputs:
    """The cases found, and what was given but cannot be segmented (one problem per path or case)."""

    cases: list[BratsCase] = field(default_factory=list)
    problems: list[CaseProblem] = field(default_factory=list)


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name an output file ``<case_id>.nii.gz`` inside the output folder, or ``None``: a path
    separator (it would write outside the folder or make folders), ``.``/``..``, a leading dot (a hidden file),
    an empty name, a control character or a NIfTI extension (``<id>.nii.gz.nii.gz``)."""
    if not case_id or case_id in (".", ".."):
        return f"case id {case_id!r} cannot name an output file: give --case-id a plain name"
    if "/" in case_id or "\\" in case_id or os.sep in case_id:
        return f"case id {case_id!r} holds a path separator: its label map would be written outside -o"
    if case_id.startswith("."):
        return f"case id {case_id!r} starts with a dot: its label map would be a hidden file"
    if any(ord(c) < 32 for c in case_id):
        return f"case id {case_id!r} holds a control character"
    if case_id.lower().endswith((".nii.gz", ".nii")):  # the label map would be <case_id>.nii.gz.nii.gz
        stem = case_id[: -len(".nii.gz")] if case_id.lower().endswith(".gz") else case_id[: -len(".nii")]
        return f"case id {case_id!r} ends in a NIfTI extension: give the case's name ({stem!r}); -o gets {stem}.nii.gz"
    return None


def resolve_inputs(
    paths: Sequence[str | os.PathLike[str]] = (),
    files: Mapping[str, str | os.PathLike[str] | None] | None = None,
    case_id: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
) -> SegmentInputs:
    """The cases of ``paths`` (each a case folder, named by its case id, or a folder searched for case folders
    at any depth) and of ``files`` (one file per modality: ``{"t1c": ..., "t1n": ..., "t2w": ..., "t2f": ...}``).

    A case with a missing modality is returned with its problem (the caller skips it and names it); a path
    that does not exist, or a folder without case folders, is a problem of its own. Two inputs with the same
    case id are a problem of the second (its output would overwrite the first's).

    Args:
        paths: case folders or folders of case folders.
        files: the four modality files of one case (all four, or none given).
        case_id: the id of the case given as ``files`` (default: from the t1c file name, e.g.
            ``BraTS-GLI-00000-000-t1c.nii.gz`` -> ``BraTS-GLI-00000-000``, else the name without extension, and
            the files' folder name when that is only a modality, as for ``patient7/t1c.nii.gz``).
        output_dir: the output folder: where it lies inside a searched folder, it is not reported as a folder that
            is not a case (the label maps of an earlier run into it).
    """
    found = SegmentInputs()
    given = {m: Path(p) for m, p in (files or {}).items() if p is not None}
    if given:
        missing = [m for m in MODALITIES if m not in given]
        folder = Path(os.path.commonpath([str(p.parent.resolve()) for p in given.values()]))
        cid = case_id or case_id_from_path(given.get("t1c") or next(iter(given.values())))
        if case_id is None and cid.lower() in MODALITIES:  # "t1c.nii.gz": the case is the folder, not "t1c"
            cid = folder.name
        problems = [CaseProblem(cid, None, f"--{m} not given: all four modalities are needed") for m in missing]
        problems += [CaseProblem(cid, p.name, "file does not exist") for p in given.values() if not p.is_file()]
        found.cases.append(BratsCase(cid, folder, given, None, tuple(problems)))
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            found.problems.append(CaseProblem(str(path), None, "does not exist"))
        elif not path.is_dir():
            found.problems.append(
                CaseProblem(
                    str(path), None, "is a file: give a case folder, a folder of cases, or --t1c/--t1n/--t2w/--t2f"
                )
            )
        elif match_case_id(path.name):
            found.cases.append(case_from_directory(path))
        else:
            try:
                discovery = find_cases(path)
            except ValueError as err:  # two case folders with one id
                found.problems.append(CaseProblem(str(path), None, str(err)))
                continue
            found.problems.extend(p for p in discovery.not_cases if not _inside(path, p.case_id, output_dir))
            if not discovery.cases and not discovery.not_cases:
                found.problems.append(CaseProblem(str(path), None, "holds no BraTS case folder"))
            found.cases.extend(discovery.cases)
    seen: dict[str, BratsCase] = {}
    unique = []
    for case in found.cases:
        first = seen.setdefault(case.case_id.lower(), case)
        if first is not case:
            found.problems.append(
                CaseProblem(
                    case.case_id,
                    None,
                    f"given twice ({first.directory} and {case.directory}): only the first is segmented",
                )
            )
            continue
        unique.append(case)
    found.cases = unique
    return found


def _inside(root: Path, relative: str, folder: str | os.PathLike[str] | None) -> bool:
    """Whether ``root / relative`` (a folder found below ``root``) is ``folder`` or lies inside it."""
    if folder is None:
        return False
    found, target = (root / relative).resolve(), Path(folder).resolve()
    return found == target or target in found.parents


def header_problems(case: BratsCase, et_label: int = ET_LABEL) -> list[str]:
    """What keeps ``case``'s scans from being segmented, found before reading a voxel: its discovery problems (a
    missing modality, an ambiguous file), else the headers' (files readable, 3D, one shape and affine). A faulty
    reference segmentation in the folder is left aside: it does not stop inference."""
    if case.problems:
        return [str(p) for p in case.problems]
    report = validate_case(case, et_label=et_label, headers_only=True)  # the voxels are checked once loaded
    label = getattr(case.label, "name", None)
    return [str(p) for p in report.problems if p.file is None or p.file != label]


def open_case(folder: str | os.PathLike[str]) -> BratsCase:
    """The one case of ``folder`` (a BraTS case folder), checked as ``brats-kd segment`` checks a case before
    reading its voxels (:func:`header_problems`).

    Raises:
        CaseFailed: every problem found, each naming the case and the file; also for a folder that holds no case,
            or several (give one case folder).
    """
    found = resolve_inputs([folder])
    problems = [str(p) for p in found.problems]
    if not problems and len(found.cases) > 1:
        names = ", ".join(c.case_id for c in found.cases[:3])
        problems = [f"{folder}: holds {len(found.cases)} case folders ({names}, ...): give one case folder"]
    if not problems:
        (case,) = found.cases
        problems = header_problems(case)
    if problems:
        raise CaseFailed("\n".join(problems))
    return case


@dataclass
class CaseBatch:
    """The cases of an input folder that can be segmented (:func:`open_cases`), and one line per case or folder
    that cannot (naming the case and the file)."""

    cases: list[BratsCase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def open_cases(folder: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None = None) -> CaseBatch:
    """The cases of ``folder``, one case folder or a folder of case folders, each checked as :func:`open_case`
    checks one (:func:`header_problems`); a case with problems is left out and its problems listed, so that the
    others are still segmented. ``output_dir``: where it lies inside ``folder``, it is not named as a folder that
    is not a case (the label maps of an earlier run), as in :func:`resolve_inputs`, and a case whose label map there
    would replace a file no brats-kd run wrote is left out (:func:`foreign_output_problem`).

    Raises:
        CaseFailed: ``folder`` holds no case that can be segmented (one case with a problem, or none at all):
            every problem found, each naming the case and the file.
    """
    found = resolve_inputs([folder], output_dir=output_dir)
    batch = CaseBatch(problems=[str(p) for p in found.problems])
    for case in found.cases:
        problems = header_problems(case)
        foreign = None if output_dir is None else foreign_output_problem(Path(output_dir) / f"{case.case_id}.nii.gz")
        problems += [f"{case.case_id}: {foreign}"] if foreign else []
        if problems:
            batch.problems.append("\n".join(problems))
        else:
            batch.cases.append(case)
    if not batch.cases:
        raise CaseFailed("\n".join(batch.problems) or f"{folder}: holds no BraTS case folder")
    return batch


def foreign_output_problem(target: Path) -> str | None:
    """Why the label map ``target`` must not be written: a file there that no brats-kd run wrote (a user's
    segmentation or reference; :func:`~kd_components.io.is_brats_kd_label_map`), which is kept; else ``None``."""
    if target.exists() and not is_brats_kd_label_map(target):
        return (
            f"{target} exists and is not a label map brats-kd wrote (a file of yours?): it is kept; move it, or "
            "choose another -o"
        )
    return None


def read_case_image(case: BratsCase) -> MetaTensor:
    """The case's four modalities as the bundles' ``LoadImaged`` reads them (:class:`ParallelNibabelReader`):
    ``(4, H, W, D)`` float32, channels ``[t1c, t1n, t2w, t2f]``, with the scan's affine.

    Raises:
        CaseFailed: a file cannot be read (the message names the case and the reader's error).
    """
    try:
        reader = ParallelNibabelReader()  # the bundles' reader (inference.json): the four files at once
        return LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(
            [str(case.images[m]) for m in MODALITIES]
        )
    except Exception as err:  # MONAI wraps reader errors
        raise CaseFailed(read_failure(case, err)) from err
