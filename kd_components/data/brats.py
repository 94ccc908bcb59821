"""Discovery and validation of BraTS-2023 case folders.

Layout (official BraTS 2023, any depth below the data set root)::

    <root>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz
                               BraTS-GLI-00000-000-t1n.nii.gz
                               BraTS-GLI-00000-000-t2w.nii.gz
                               BraTS-GLI-00000-000-t2f.nii.gz
                               BraTS-GLI-00000-000-seg.nii.gz   (absent for unlabelled cases)

Task prefixes GLI, MEN, MET, PED, SSA and this project's synthetic SYN are accepted. Folder and file
names are matched in any letter case (the folder's own spelling is the case id); symlinked folders are
followed, each folder searched once (so a symlink loop ends). Every problem found is reported as a
:class:`CaseProblem` naming the case, the file and what is wrong, and every folder holding NIfTI files
that is not taken as a case is named with the reason (:func:`find_cases`); nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from kd_components.constants import (
    CASE_ID_FORMAT,
    CASE_ID_SEARCH,
    ET_LABEL,
    LEGACY_ET_LABEL,
    MAX_ABS_INTENSITY,
    MODALITIES,
    NIFTI_EXTENSIONS,
    SEG_SUFFIX,
    allowed_labels,
    case_file_name,
    match_case_id,
)

logger = logging.getLogger(__name__)

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
        """The BraTS task prefix in upper case, e.g. ``GLI`` or ``SYN``; ``""`` for an id that is not a BraTS one
        (a datalist entry may name its case ``patient1``)."""
        match = match_case_id(self.case_id)
        return match["task"].upper() if match else ""


def _is_nifti(name: str) -> bool:
    lower = name.lower()
    return any(lower.endswith(ext) for ext in NIFTI_EXTENSIONS)


def _os_error(err: OSError) -> str:
    return f"{type(err).__name__}: {err.strerror or err}"


def _list_folder(directory: Path) -> tuple[list[str], list[str]]:
    """Names of the files (symlinks followed) and of the broken symlinks in ``directory``, sorted."""
    files, broken = [], []
    for entry in os.scandir(directory):
        try:
            if entry.is_file():
                files.append(entry.name)
            elif entry.is_symlink() and not os.path.exists(entry.path):
                broken.append(entry.name)
        except OSError:
            continue
    return sorted(files), sorted(broken)


def _find_volume(
    directory: Path, cid: str, suffix: str, files: Sequence[str], broken: Sequence[str] = ()
) -> tuple[Path | None, CaseProblem | None]:
    """The file ``<cid>-<suffix>.nii[.gz]`` in ``directory`` (``files`` lists it), in any letter case; a problem
    when more than one file fits or the file is a broken symlink."""
    wanted = {case_file_name(cid, suffix, ext).lower() for ext in NIFTI_EXTENSIONS}
    found = [name for name in files if name.lower() in wanted]
    if len(found) > 1:
        return None, CaseProblem(cid, found[0], f"ambiguous: more than one file for '{suffix}' ({', '.join(found)})")
    if not found:
        for name in broken:
            if name.lower() in wanted:
                target = os.readlink(directory / name)
                return None, CaseProblem(cid, name, f"broken symlink (its target {target} does not exist)")
        return None, None
    return directory / found[0], None


def case_from_directory(directory: Path) -> BratsCase:
    """The case in a folder named by its case id: the files found and what is missing or ambiguous."""
    cid = directory.name
    try:
        files, broken = _list_folder(directory)
    except OSError as err:
        problem = CaseProblem(cid, None, f"case folder {directory} cannot be read ({_os_error(err)})")
        return BratsCase(cid, directory, {}, None, (problem,))
    images: dict[str, Path] = {}
    problems: list[CaseProblem] = []
    for modality in MODALITIES:
        path, problem = _find_volume(directory, cid, modality, files, broken)
        if problem:
            problems.append(problem)
        elif path is None:
            problems.append(
                CaseProblem(
                    cid,
                    case_file_name(cid, modality),
                    f"missing modality '{modality}' (files present: {', '.join(files) or 'none'})",
                )
            )
        else:
            images[modality] = path
    label, problem = _find_volume(directory, cid, SEG_SUFFIX, files, broken)
    if problem:
        problems.append(problem)
    return BratsCase(cid, directory, images, label, tuple(problems))


@dataclass
class CaseDiscovery:
    """What :func:`find_cases` found below a data set root.

    Attributes:
        cases: the case folders, sorted by case id.
        not_cases: one problem per folder that holds NIfTI files (or is a broken symlink to what looks like a
            case) but is not taken as a case, saying why. ``case_id`` is the folder's path relative to the root
            (``.`` for the root itself), ``file`` is ``None``.
        notes: folders not searched a second time because they were reached before under another path (a
            symlink loop, or two links to one folder); nothing in them is lost.
    """

    cases: list[BratsCase] = field(default_factory=list)
    not_cases: list[CaseProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _not_a_case(folder: str, name: str, nifti: int, cases: dict[str, BratsCase]) -> CaseProblem:
    """Why the folder ``name`` holding ``nifti`` NIfTI files is not a case, with the id it probably should have."""
    text = (
        f"not taken as a case: the folder holds {nifti} NIfTI file(s) but its name {name!r} is not a BraTS case id "
        f"(expected {CASE_ID_FORMAT})"
    )
    found = CASE_ID_SEARCH.search(name)
    if found:
        text += f"; did you mean {found.group(0)!r}? rename the folder to use it"
        existing = cases.get(found.group(0).lower())
        if existing is not None:
            text += f" (a case folder {existing.case_id!r} exists already: is this a copy?)"
    return CaseProblem(folder, None, text)


def find_cases(root: str | os.PathLike[str]) -> CaseDiscovery:
    """Find every BraTS-2023 case folder below ``root`` (at any depth), and every folder not taken with the reason.

    A case folder is named by a case id (:data:`~kd_components.constants.CASE_ID_PATTERN`) in any letter case;
    the folder's own spelling becomes the case id. Symlinked folders are followed; a folder reached a second
    time (a symlink loop) is not searched again (see ``notes``). Case folders are not searched for further
    cases. Every other folder that holds NIfTI files is listed in ``not_cases`` with the reason (its name is
    not a case id: the expected pattern and, for a case id with something around it such as a trailing
    space or `` (copy)``, the id it probably should have; it lies inside a case folder; it cannot be read).

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        ValueError: two folders carry the same case id (letter case aside).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data set directory {root} does not exist or is not a directory")
    cases: dict[str, BratsCase] = {}  # by lower-case id
    misnamed: list[tuple[str, str, int]] = []  # (folder relative to root, its name, NIfTI files in it)
    discovery = CaseDiscovery()
    seen: dict[tuple[int, int], str] = {}  # (device, inode) of each folder searched -> its relative path
    stack: list[tuple[Path, str | None]] = [(root, None)]  # (folder, the case folder it lies in)
    while stack:
        folder, enclosing_case = stack.pop()
        rel = Path(os.path.relpath(folder, root)).as_posix()
        try:
            info = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            problem = f"folder cannot be read ({_os_error(err)}): nothing in it is used"
            discovery.not_cases.append(CaseProblem(rel, None, problem))
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            discovery.notes.append(f"{rel}: not searched again: the same folder as {seen[key]} (through a symlink)")
            continue
        seen[key] = rel
        is_case = folder != root and enclosing_case is None and match_case_id(folder.name) is not None
        subdirs, nifti = [], 0
        for entry in entries:
            try:
                if entry.is_dir():
                    subdirs.append(entry.name)
                elif entry.is_file():
                    nifti += _is_nifti(entry.name)
                elif entry.is_symlink() and not is_case and enclosing_case is None and match_case_id(entry.name):
                    target = os.readlink(entry.path)
                    problem = f"broken symlink (its target {target} does not exist): not taken as a case"
                    discovery.not_cases.append(CaseProblem(f"{rel}/{entry.name}".removeprefix("./"), None, problem))
            except OSError:
                continue
        if is_case:
            case = case_from_directory(folder)
            previous = cases.get(case.case_id.lower())
            if previous is not None:
                raise ValueError(f"duplicate case id {case.case_id}: {previous.directory} and {case.directory}")
            cases[case.case_id.lower()] = case
        elif nifti and enclosing_case is not None:
            problem = (
                f"folder inside case folder {enclosing_case!r} holds {nifti} NIfTI file(s): not taken "
                "(case folders are not searched for further cases)"
            )
            discovery.not_cases.append(CaseProblem(rel, None, problem))
        elif nifti and folder == root and match_case_id(folder.name):
            problem = (
                f"the data set root {root} is itself a case folder: not taken; "
                "give the folder that holds the case folders instead"
            )
            discovery.not_cases.append(CaseProblem(rel, None, problem))
        elif nifti:
            misnamed.append((rel, folder.name, nifti))
        inner = folder.name if is_case else enclosing_case
        stack.extend((folder / name, inner) for name in reversed(subdirs))
    discovery.not_cases.extend(_not_a_case(rel, name, nifti, cases) for rel, name, nifti in misnamed)
    discovery.not_cases.sort(key=lambda p: p.case_id)
    discovery.cases = sorted(cases.values(), key=lambda c: c.case_id)
    return discovery


def discover_cases(root: str | os.PathLike[str]) -> list[BratsCase]:
    """The BraTS-2023 case folders below ``root`` (at any depth), sorted by case id (see :func:`find_cases`).

    The folders not taken are logged as warnings; :func:`find_cases` returns them.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        ValueError: two folders carry the same case id.
    """
    discovery = find_cases(root)
    for problem in discovery.not_cases:
        logger.warning("%s", problem)
    for note in discovery.notes:
        logger.info("%s", note)
    return discovery.cases


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


@dataclass(frozen=True)
class _Volume:
    """A NIfTI file as the pipeline reads it: ``data`` with the NIfTI scaling applied (before the float32 cast of
    ``LoadImage``), its affine and the scaling (``scl_slope``, ``scl_inter``)."""

    data: np.ndarray
    affine: np.ndarray
    slope: float = 1.0
    inter: float = 0.0

    @property
    def scaling(self) -> str:
        """`` after NIfTI scaling (scl_slope ..., scl_inter ...)`` for messages, ``""`` when unscaled."""
        if self.slope == 1.0 and self.inter == 0.0:
            return ""
        return f" after NIfTI scaling (scl_slope {self.slope:.3g}, scl_inter {self.inter:.3g})"


def _load(path: Path) -> _Volume:
    """Read a NIfTI file fully (so truncated data fails here, not in training), scaled as MONAI's reader scales it."""
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"not a NIfTI image ({type(img).__name__})")
    proxy = img.dataobj
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    with np.errstate(all="ignore"):  # scaling that overflows is reported by _check_image
        data = np.asanyarray(proxy)
    return _Volume(data, np.asarray(img.affine, dtype=np.float64), slope, inter)


def _load_header(path: Path) -> _Volume:
    """A NIfTI file's header only: ``data`` is an empty array of the file's shape and data type (nothing is read
    beyond the header), with the affine."""
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"not a NIfTI image ({type(img).__name__})")
    placeholder = np.lib.stride_tricks.as_strided(np.zeros(1, img.get_data_dtype()), img.shape, (0,) * len(img.shape))
    return _Volume(placeholder, np.asarray(img.affine, dtype=np.float64))


def _describe_read_error(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return f"cannot be read as NIfTI ({type(err).__name__}: {text})"


def _unchecked(cid: str, name: str, err: Exception) -> CaseProblem:
    """A check that failed on an unusual file: a problem of that file, so that the other files and cases go on."""
    text = str(err).strip() or type(err).__name__
    return CaseProblem(cid, name, f"could not be checked ({type(err).__name__}: {text})")


def validate_case(
    case: BratsCase, et_label: int = ET_LABEL, affine_atol: float = AFFINE_ATOL, headers_only: bool = False
) -> CaseReport:
    """Check one case before anything trains on it, each file as the pipeline will read it.

    Checks: all four modalities present; every file readable as NIfTI; volumes 3D; a finite, non-singular
    affine (no zero voxel spacing); identical shapes and affines (within ``affine_atol``) across the case,
    taking the first modality as reference; image voxels real scalars (not RGB, not complex) that, after
    NIfTI scaling and the cast to float32, are finite, below
    :data:`~kd_components.constants.MAX_ABS_INTENSITY` in absolute value and not all equal (an all-zero or
    constant scan); segmentation integer-valued with labels only in ``{0, 1, 2, et_label}``.

    Any error raised while checking a file (an unusual data type, say) becomes a problem of that file: one
    file never stops the validation of the others.

    ``headers_only=True`` reads the NIfTI headers alone (files readable, 3D, affines, shapes, voxel data types),
    not the voxels: for a caller that reads the voxels next anyway and checks their values itself
    (``brats-kd segment``), so that each file is decompressed once.
    """
    report = CaseReport(case=case, problems=list(case.problems))
    cid = case.case_id
    reference: tuple[str, tuple[int, ...], np.ndarray] | None = None
    files = [(m, p) for m, p in case.images.items()] + ([(SEG_SUFFIX, case.label)] if case.label else [])
    for kind, path in files:
        name = path.name
        try:
            volume = _load_header(path) if headers_only else _load(path)
        except Exception as err:  # any reader failure is a problem of this file
            report.problems.append(CaseProblem(cid, name, _describe_read_error(err)))
            continue
        data, affine = volume.data, volume.affine
        if headers_only:
            problem = _voxel_type_problem(volume.data.dtype) if kind != SEG_SUFFIX else None
            if problem:
                report.problems.append(CaseProblem(cid, name, problem))
        if data.ndim != 3:
            report.problems.append(CaseProblem(cid, name, f"expected a 3D volume, got {data.ndim}D shape {data.shape}"))
            continue
        try:
            report.problems.extend(_check_affine(cid, name, affine))
            if reference is None:
                reference = (name, data.shape, affine)
                report.shape = tuple(int(s) for s in data.shape)
                report.spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
            else:
                report.problems.extend(_check_geometry(cid, name, data.shape, affine, reference, affine_atol))
        except Exception as err:
            report.problems.append(_unchecked(cid, name, err))
        if headers_only:
            continue
        try:
            if kind == SEG_SUFFIX:
                _check_segmentation(report, name, data, et_label)
            else:
                _check_image(report, name, data, volume.scaling)
        except Exception as err:
            report.problems.append(_unchecked(cid, name, err))
    return report


def _check_affine(cid: str, name: str, affine: np.ndarray) -> list[CaseProblem]:
    """The affine of one file: finite, and not singular (every voxel axis a non-zero spacing, axes independent)."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        return [CaseProblem(cid, name, "affine has non-finite values (NaN or Inf): voxel positions are undefined")]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    shown = ", ".join(f"{s:.4g}" for s in spacing)
    if np.any(spacing <= 0):
        return [CaseProblem(cid, name, f"singular affine: voxel spacing ({shown}) mm; every axis needs a spacing > 0")]
    if abs(float(np.linalg.det(affine[:3, :3]))) <= 1e-6 * float(np.prod(spacing)):
        return [CaseProblem(cid, name, f"singular affine: its voxel axes are (nearly) parallel (spacing ({shown}) mm)")]
    return []


def _check_geometry(
    cid: str,
    name: str,
    shape: tuple[int, ...],
    affine: np.ndarray,
    reference: tuple[str, tuple[int, ...], np.ndarray],
    affine_atol: float,
) -> list[CaseProblem]:
    """Shape and affine of one file against the case's reference file (affines only when both are finite)."""
    ref_name, ref_shape, ref_affine = reference
    problems = []
    if shape != ref_shape:
        problems.append(CaseProblem(cid, name, f"shape {shape} differs from {ref_name} {ref_shape}"))
    difference = np.abs(affine - ref_affine)
    diff = float(difference.max())
    if np.all(np.isfinite(difference)) and diff > affine_atol:
        problems.append(
            CaseProblem(cid, name, f"affine differs from {ref_name} (max abs difference {diff:.4g} mm > {affine_atol})")
        )
    return problems


def _voxel_type_problem(dtype: np.dtype) -> str | None:
    """Why voxels of ``dtype`` cannot be read as one real number each (RGB, complex, not numeric), else ``None``."""
    if dtype.fields is not None:
        return (
            f"voxels are not scalars (data type {dtype}: RGB or another compound type); expected one number per voxel"
        )
    if np.issubdtype(dtype, np.complexfloating):
        return f"complex-valued voxels ({dtype}); expected real numbers"
    if not np.issubdtype(dtype, np.number):
        return f"voxels are not numbers (data type {dtype}); expected one number per voxel"
    return None


def _check_image(report: CaseReport, name: str, data: np.ndarray, scaling: str = "") -> None:
    """The intensities of one scan as the networks will see them: ``data`` (NIfTI scaling applied) cast to float32.

    ``scaling`` describes the NIfTI scaling for messages (see :attr:`_Volume.scaling`).
    """
    cid = report.case.case_id
    problem = _voxel_type_problem(data.dtype)
    if problem:
        report.problems.append(CaseProblem(cid, name, problem))
        return
    if np.issubdtype(data.dtype, np.floating):
        n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        if n_nan or n_inf:
            report.problems.append(CaseProblem(cid, name, f"contains non-finite voxels ({n_nan} NaN, {n_inf} Inf)"))
            return
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        as_read = data.astype(np.float32)  # what LoadImage(d) hands the transforms and the network
    low, high = float(as_read.min()), float(as_read.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        largest = float(np.abs(data.astype(np.float64)).max())
        report.problems.append(
            CaseProblem(
                cid,
                name,
                f"values overflow float32 (largest |value| {largest:.3g}{scaling}): "
                "the networks read float32 and would see Inf",
            )
        )
        return
    largest = max(abs(low), abs(high))
    if largest >= MAX_ABS_INTENSITY:
        report.problems.append(
            CaseProblem(
                cid,
                name,
                f"intensities out of range: largest |value| {largest:.3g}{scaling} exceeds {MAX_ABS_INTENSITY:.0e} "
                "(normalising in float32 would overflow)",
            )
        )
        return
    if low == high:
        if low == 0 and np.any(data):
            largest = float(np.abs(data.astype(np.float64)).max())
            problem = (
                f"all voxels are zero in float32 (largest |value| {largest:.3g}{scaling} is too small for float32)"
            )
        elif low == 0:
            problem = "all voxels are zero (empty scan)"
        else:
            problem = f"all voxels have the same value {low:.6g}{scaling} (constant scan: no image contrast)"
        report.problems.append(CaseProblem(cid, name, problem))


def _label_value(value: float | int) -> float | int:
    """A label value for messages and counts: an int when it is a whole number."""
    return int(value) if float(value).is_integer() else value


def _check_segmentation(report: CaseReport, name: str, data: np.ndarray, et_label: int) -> None:
    cid = report.case.case_id
    problem = _voxel_type_problem(data.dtype)
    if problem:
        report.problems.append(CaseProblem(cid, name, problem))
        return
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            report.problems.append(CaseProblem(cid, name, "segmentation contains NaN or Inf values"))
            return
        if not np.array_equal(data, np.round(data)):
            report.problems.append(CaseProblem(cid, name, "segmentation has non-integer values"))
            return
    values, counts = np.unique(data, return_counts=True)
    allowed = allowed_labels(et_label)
    unknown = sorted(_label_value(v) for v in values.tolist() if v not in allowed)
    if unknown:
        hint = ""
        if et_label == ET_LABEL and LEGACY_ET_LABEL in unknown:
            hint = f"; label {LEGACY_ET_LABEL} marks ET in BraTS 2018-2022 data: use et_label={LEGACY_ET_LABEL}"
        report.problems.append(
            CaseProblem(cid, name, f"unknown label values {unknown}; allowed {sorted(allowed)}{hint}")
        )
        return
    report.label_counts = {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}


def _validate_star(args: tuple[BratsCase, int, float]) -> CaseReport:
    case = args[0]
    try:
        return validate_case(*args)
    except Exception as err:
        text = str(err).strip() or type(err).__name__
        problem = CaseProblem(case.case_id, None, f"could not be checked ({type(err).__name__}: {text})")
        return CaseReport(case=case, problems=[*case.problems, problem])


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
