"""Discovery and validation of BraTS-2023 case folders.

Layout (official BraTS 2023, any depth below the data set root)::

    <root>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz
                               BraTS-GLI-00000-000-t1n.nii.gz
                               BraTS-GLI-00000-000-t2w.nii.gz
                               BraTS-GLI-00000-000-t2f.nii.gz
                               BraTS-GLI-00000-000-seg.nii.gz   (absent for unlabelled cases)

Task prefixes GLI, MEN, MET, PED, SSA and this project's synthetic SYN are accepted.
Every problem found is reported as a :class:`CaseProblem` naming the case, the file and what is
wrong; nothing is dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from kd_components.constants import (
    CASE_ID_PATTERN,
    ET_LABEL,
    LEGACY_ET_LABEL,
    MODALITIES,
    NIFTI_EXTENSIONS,
    SEG_SUFFIX,
    allowed_labels,
    case_file_name,
)

#: Default tolerance (in mm, element-wise on the 4x4 affine) for affines of one case to count as equal.
AFFINE_ATOL: float = 1e-3


@dataclass(frozen=True)
class CaseProblem:
    """One thing wrong with a case: which case, which file (``None`` for the case as a whole) and what."""

    case_id: str
    file: str | None
    problem: str

    def __str__(self) -> str:
        return f"{self.case_id}: {self.file}: {self.problem}" if self.file else f"{self.case_id}: {self.problem}"


class InvalidCaseError(ValueError):
    """Raised for a case that must not be used; ``problems`` lists everything found wrong with it."""

    def __init__(self, problems: Sequence[CaseProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class BratsCase:
    """A case folder: its id, the modality files found, the segmentation (``None`` when unlabelled).

    ``problems`` holds what discovery already found wrong (a missing modality, an ambiguous file).
    """

    case_id: str
    directory: Path
    images: dict[str, Path]
    label: Path | None
    problems: tuple[CaseProblem, ...] = ()

    @property
    def task(self) -> str:
        """The BraTS task prefix, e.g. ``GLI`` or ``SYN``."""
        match = CASE_ID_PATTERN.match(self.case_id)
        assert match is not None
        return match["task"]


def _find_volume(directory: Path, cid: str, suffix: str) -> tuple[Path | None, CaseProblem | None]:
    """The file ``<cid>-<suffix>.nii[.gz]`` in ``directory``; a problem when both extensions exist."""
    found = [directory / case_file_name(cid, suffix, ext) for ext in NIFTI_EXTENSIONS]
    found = [p for p in found if p.exists()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        return None, CaseProblem(cid, found[0].name, f"ambiguous: more than one file for '{suffix}' ({names})")
    return (found[0] if found else None), None


def _case_from_directory(directory: Path) -> BratsCase:
    cid = directory.name
    images: dict[str, Path] = {}
    problems: list[CaseProblem] = []
    for modality in MODALITIES:
        path, problem = _find_volume(directory, cid, modality)
        if problem:
            problems.append(problem)
        elif path is None:
            present = sorted(p.name for p in directory.iterdir() if p.is_file())
            problems.append(
                CaseProblem(
                    cid,
                    case_file_name(cid, modality),
                    f"missing modality '{modality}' (files present: {', '.join(present) or 'none'})",
                )
            )
        else:
            images[modality] = path
    label, problem = _find_volume(directory, cid, SEG_SUFFIX)
    if problem:
        problems.append(problem)
    return BratsCase(cid, directory, images, label, tuple(problems))


def discover_cases(root: str | os.PathLike[str]) -> list[BratsCase]:
    """Find every BraTS-2023 case folder below ``root`` (at any depth), sorted by case id.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        ValueError: two folders carry the same case id.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data set directory {root} does not exist or is not a directory")
    cases: dict[str, BratsCase] = {}
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        for name in list(dirnames):
            if CASE_ID_PATTERN.match(name):
                dirnames.remove(name)  # a case folder holds files, not more cases
                case = _case_from_directory(Path(dirpath) / name)
                if name in cases:
                    raise ValueError(f"duplicate case id {name}: {cases[name].directory} and {case.directory}")
                cases[name] = case
    return [cases[k] for k in sorted(cases)]


@dataclass
class CaseReport:
    """Outcome of :func:`validate_case`: the problems found and, for a labelled case, voxel counts per label."""

    case: BratsCase
    problems: list[CaseProblem] = field(default_factory=list)
    label_counts: dict[int, int] | None = None
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file fully (so truncated data fails here, not in training): (data, affine (4, 4))."""
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"not a NIfTI image ({type(img).__name__})")
    return np.asanyarray(img.dataobj), np.asarray(img.affine)


def _describe_read_error(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return f"cannot be read as NIfTI ({type(err).__name__}: {text})"


def validate_case(case: BratsCase, et_label: int = ET_LABEL, affine_atol: float = AFFINE_ATOL) -> CaseReport:
    """Check one case before anything trains on it.

    Checks: all four modalities present; every file readable as NIfTI; volumes 3D; identical shapes
    and affines (within ``affine_atol``) across the case, taking the first modality as reference;
    image voxels finite and not all zero; segmentation integer-valued with labels only in
    ``{0, 1, 2, et_label}``.
    """
    report = CaseReport(case=case, problems=list(case.problems))
    cid = case.case_id
    reference: tuple[str, tuple[int, ...], np.ndarray] | None = None
    files = [(m, p) for m, p in case.images.items()] + ([(SEG_SUFFIX, case.label)] if case.label else [])
    for kind, path in files:
        name = path.name
        try:
            data, affine = _load(path)
        except Exception as err:  # any reader failure is a problem of this file
            report.problems.append(CaseProblem(cid, name, _describe_read_error(err)))
            continue
        if data.ndim != 3:
            report.problems.append(CaseProblem(cid, name, f"expected a 3D volume, got {data.ndim}D shape {data.shape}"))
            continue
        if reference is None:
            reference = (name, data.shape, affine)
            report.shape = tuple(int(s) for s in data.shape)
            report.spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
        else:
            report.problems.extend(_check_geometry(cid, name, data.shape, affine, reference, affine_atol))
        if kind == SEG_SUFFIX:
            _check_segmentation(report, name, data, et_label)
        else:
            _check_image(report, name, data)
    return report


def _check_geometry(
    cid: str,
    name: str,
    shape: tuple[int, ...],
    affine: np.ndarray,
    reference: tuple[str, tuple[int, ...], np.ndarray],
    affine_atol: float,
) -> list[CaseProblem]:
    """Shape and affine of one file against the case's reference file."""
    ref_name, ref_shape, ref_affine = reference
    problems = []
    if shape != ref_shape:
        problems.append(CaseProblem(cid, name, f"shape {shape} differs from {ref_name} {ref_shape}"))
    diff = float(np.abs(affine - ref_affine).max())
    if diff > affine_atol:
        problems.append(
            CaseProblem(cid, name, f"affine differs from {ref_name} (max abs difference {diff:.4g} mm > {affine_atol})")
        )
    return problems


def _check_image(report: CaseReport, name: str, data: np.ndarray) -> None:
    if np.issubdtype(data.dtype, np.floating):
        n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        if n_nan or n_inf:
            report.problems.append(
                CaseProblem(report.case.case_id, name, f"contains non-finite voxels ({n_nan} NaN, {n_inf} Inf)")
            )
            return
    if not np.any(data):
        report.problems.append(CaseProblem(report.case.case_id, name, "all voxels are zero (empty scan)"))


def _check_segmentation(report: CaseReport, name: str, data: np.ndarray, et_label: int) -> None:
    cid = report.case.case_id
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            report.problems.append(CaseProblem(cid, name, "segmentation contains NaN or Inf values"))
            return
        if not np.array_equal(data, np.round(data)):
            report.problems.append(CaseProblem(cid, name, "segmentation has non-integer values"))
            return
    values, counts = np.unique(data.astype(np.int64), return_counts=True)
    allowed = allowed_labels(et_label)
    unknown = sorted(int(v) for v in values if int(v) not in allowed)
    if unknown:
        hint = ""
        if et_label == ET_LABEL and LEGACY_ET_LABEL in unknown:
            hint = f"; label {LEGACY_ET_LABEL} marks ET in BraTS 2018-2022 data: use et_label={LEGACY_ET_LABEL}"
        report.problems.append(
            CaseProblem(cid, name, f"unknown label values {unknown}; allowed {sorted(allowed)}{hint}")
        )
        return
    report.label_counts = {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _validate_star(args: tuple[BratsCase, int, float]) -> CaseReport:
    return validate_case(*args)


def validate_cases(
    cases: Iterable[BratsCase],
    et_label: int = ET_LABEL,
    affine_atol: float = AFFINE_ATOL,
    workers: int | None = None,
    progress: bool = False,
) -> list[CaseReport]:
    """Validate many cases, in parallel over ``workers`` processes (default: all cores), in input order."""
    jobs = [(c, et_label, affine_atol) for c in cases]
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    if workers <= 1:
        results: Iterable[CaseReport] = map(_validate_star, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_validate_star, jobs, chunksize=4)
    try:
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc="validate", unit="case")
        return list(results)
    finally:
        if pool is not None:
            pool.shutdown()
