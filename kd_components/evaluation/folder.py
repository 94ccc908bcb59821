"""``brats-kd evaluate``: score a folder of predicted label maps against the BraTS cases they segment.

Each reference case (a case folder with a segmentation, found at any depth below the data folder) is paired with
``<predictions>/<case_id>.nii.gz`` (or ``.nii``) and scored per region by :func:`~kd_components.evaluation.lesions.
score_label_maps`. Before scoring, both files are read in full and checked: readable, 3-D, the same shape and
affine (within :data:`~kd_components.data.brats.AFFINE_ATOL` mm), finite integer BraTS labels. A case that fails is
reported (the case, the file and what is wrong) and left out; the others are scored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from kd_components.constants import ET_LABEL, EVALUATION_REGIONS, LEGACY_ET_LABEL, NIFTI_EXTENSIONS, allowed_labels
from kd_components.data.brats import AFFINE_ATOL, BratsCase, CaseProblem, find_cases
from kd_components.evaluation.lesions import RegionScores, case_row, mean_scores, score_label_maps, write_case_table
from kd_components.io import atomic_path

__all__ = [
    "EvaluationError",
    "FolderEvaluation",
    "evaluate_case",
    "evaluate_folder",
    "find_prediction",
    "load_case_pair",
    "summary_rows",
    "summary_table",
    "write_evaluation",
]

#: Columns of the summary (per region): (header, :class:`RegionScores` field, format).
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Dice", "dice", ".3f"),
    ("HD95 (mm)", "hd95", ".1f"),
    ("NSD", "nsd", ".3f"),
    ("lesion Dice (2023 ranking)", "ranking_lesion_dice", ".3f"),
    ("lesion HD95 (2023 ranking, mm)", "ranking_lesion_hd95", ".1f"),
    ("matched-lesion Dice", "matched_lesion_dice", ".3f"),
    ("TP", "tp", ".0f"),
    ("FP", "fp", ".0f"),
    ("FN", "fn", ".0f"),
)


class EvaluationError(ValueError):
    """One case cannot be scored; :attr:`problem` names the case, the file and the reason."""

    def __init__(self, problem: CaseProblem) -> None:
        self.problem = problem
        super().__init__(str(problem))


@dataclass
class FolderEvaluation:
    """What :func:`evaluate_folder` found.

    Attributes:
        scores: case id -> region -> :class:`RegionScores`, for the cases scored (sorted by case id), the cases
            without a prediction included (scored as an empty prediction, as BraTS does).
        problems: one line per case that could not be scored (and per folder not taken as a case).
        unmatched: prediction files that belong to no reference case evaluated.
        missing: the cases without a prediction file (scored as empty predictions).
    """

    scores: dict[str, dict[str, RegionScores]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def find_prediction(predictions: Path, case_id: str) -> Path | None:
    """``<predictions>/<case_id>.nii.gz`` or ``.nii`` (the case id in any letter case), else ``None``.

    Raises:
        EvaluationError: more than one file is the case's prediction (``.nii`` and ``.nii.gz``, or two letter
            cases): which one was meant cannot be told, so none is used (:func:`evaluate_folder` scores the case
            as a missing prediction, as it would score an invalid submission, and names it).
    """
    wanted = {f"{case_id}{ext}".lower() for ext in NIFTI_EXTENSIONS}
    found = [p for p in sorted(predictions.iterdir()) if p.name.lower() in wanted and p.is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise EvaluationError(
            CaseProblem(case_id, None, f"ambiguous: {len(found)} predictions in {predictions} ({names}): keep one")
        )
    return found[0] if found else None


def _spacing(affine: np.ndarray) -> tuple[float, ...]:
    """The voxel size (mm) along each axis of a ``(4, 4)`` affine."""
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))


def evaluate_missing(
    case: BratsCase, et_label: int = ET_LABEL, regions: Sequence[str] = tuple(EVALUATION_REGIONS)
) -> dict[str, RegionScores]:
    """Score a case that has no prediction as the BraTS evaluation does: as an empty prediction (Dice 0 and HD95
    :data:`~kd_components.constants.MISSED_REGION_HD_MM` where the reference has the region, 1 and 0 where it has
    not); :class:`EvaluationError` names a reference that cannot be read."""
    if case.label is None:
        raise EvaluationError(CaseProblem(case.case_id, None, "no segmentation (-seg file) to evaluate against"))
    reference, affine = _read_label_map(case.case_id, case.label, et_label, "reference")
    return score_label_maps(np.zeros_like(reference), reference, _spacing(affine), et_label, regions)


def _read_label_map(case_id: str, path: Path, et_label: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A label map and its affine, checked: readable NIfTI, 3-D, finite integer values among the BraTS labels."""

    def fail(problem: str) -> EvaluationError:
        return EvaluationError(CaseProblem(case_id, str(path), f"{what}: {problem}"))

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for a truncated, empty or non-NIfTI file
        raise fail(f"cannot be read as NIfTI ({type(err).__name__}: {str(err).strip()[:200]})") from err
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise fail(f"expected a 3-D label map, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise fail("contains NaN or Inf values")
        if not np.array_equal(data, np.round(data)):
            raise fail("has non-integer values (a probability map? give label maps)")
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        raise fail(f"voxel type {data.dtype} is not a label type")
    values = {int(v) for v in np.unique(data).tolist()}
    allowed = allowed_labels(et_label)
    unknown = sorted(values - allowed)
    if unknown:
        hint = (
            f"; ET marked {LEGACY_ET_LABEL} (BraTS 2018-2022)? use --et-label 4" if LEGACY_ET_LABEL in unknown else ""
        )
        raise fail(f"unknown label values {unknown}; allowed {sorted(allowed)}{hint}")
    return data.astype(np.uint8), np.asarray(image.affine, dtype=np.float64)


def load_case_pair(
    case: BratsCase, prediction: Path, et_label: int = ET_LABEL, affine_atol: float = AFFINE_ATOL
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The prediction and the reference label maps ``(H, W, D)`` of a case and the voxel spacing (mm), checked
    (see the module's docstring); :class:`EvaluationError` names what is wrong."""
    if case.label is None:
        raise EvaluationError(CaseProblem(case.case_id, None, "no segmentation (-seg file) to evaluate against"))
    reference, ref_affine = _read_label_map(case.case_id, case.label, et_label, "reference")
    pred, pred_affine = _read_label_map(case.case_id, prediction, et_label, "prediction")
    if pred.shape != reference.shape:
        raise EvaluationError(
            CaseProblem(
                case.case_id,
                str(prediction),
                f"prediction shape {pred.shape} differs from the reference's {reference.shape} ({case.label.name}): "
                "label maps must be on the scan's grid",
            )
        )
    difference = float(np.abs(pred_affine - ref_affine).max())
    if not math.isfinite(difference) or difference > affine_atol:
        raise EvaluationError(
            CaseProblem(
                case.case_id,
                str(prediction),
                f"prediction affine differs from the reference's ({case.label.name}; max abs difference "
                f"{difference:.4g} mm > {affine_atol}): label maps must be on the scan's grid",
            )
        )
    return pred, reference, _spacing(ref_affine)


def evaluate_case(
    case: BratsCase,
    prediction: Path,
    et_label: int = ET_LABEL,
    regions: Sequence[str] = tuple(EVALUATION_REGIONS),
    affine_atol: float = AFFINE_ATOL,
) -> dict[str, RegionScores]:
    """Score one prediction file against the case's segmentation; :class:`EvaluationError` names what is wrong."""
    pred, reference, spacing = load_case_pair(case, prediction, et_label, affine_atol)
    return score_label_maps(pred, reference, spacing, et_label, regions)


def evaluate_folder(
    predictions: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    case_ids: Iterable[str] | None = None,
    et_label: int = ET_LABEL,
    regions: Sequence[str] = tuple(EVALUATION_REGIONS),
    progress: Callable[[Iterable[BratsCase]], Iterable[BratsCase]] = lambda cases: cases,
) -> FolderEvaluation:
    """Score every labelled case below ``dataset_dir`` (or only ``case_ids``) with its prediction in ``predictions``.

    Raises:
        FileNotFoundError: ``predictions`` or ``dataset_dir`` is not a folder.
    """
    predictions, dataset_dir = Path(predictions), Path(dataset_dir)
    if not predictions.is_dir():
        raise FileNotFoundError(f"prediction folder {predictions} does not exist or is not a folder")
    discovery = find_cases(dataset_dir)
    result = FolderEvaluation(problems=[str(p) for p in discovery.not_cases])
    cases = {c.case_id.lower(): c for c in discovery.cases}
    if case_ids is not None:
        wanted = list(dict.fromkeys(case_ids))
        result.problems += [f"{c}: no case folder below {dataset_dir}" for c in wanted if c.lower() not in cases]
        chosen = [cases[c.lower()] for c in wanted if c.lower() in cases]
    else:
        chosen = [c for c in discovery.cases if c.label is not None]
    used: set[str] = set()
    for case in progress(sorted(chosen, key=lambda c: c.case_id)):
        try:
            try:
                prediction = find_prediction(predictions, case.case_id)
            except EvaluationError as ambiguous:  # no one prediction: scored as a missing one, and named
                result.problems.append(f"{ambiguous}; scored as a missing prediction")
                result.scores[case.case_id] = evaluate_missing(case, et_label, regions)
                used |= {f"{case.case_id}{ext}".lower() for ext in NIFTI_EXTENSIONS}
                continue
            if prediction is None:  # BraTS scores a missing prediction as an empty one: it counts in every mean
                result.scores[case.case_id] = evaluate_missing(case, et_label, regions)
                result.missing.append(case.case_id)
                continue
            used.add(prediction.name.lower())
            result.scores[case.case_id] = evaluate_case(case, prediction, et_label, regions)
        except EvaluationError as err:
            result.problems.append(str(err))
            used |= {f"{case.case_id}{ext}".lower() for ext in NIFTI_EXTENSIONS}
    result.unmatched = sorted(
        p.name
        for p in predictions.iterdir()
        if p.name.lower() not in used and any(p.name.lower().endswith(ext) for ext in NIFTI_EXTENSIONS)
    )
    return result


def summary_rows(scores: Mapping[str, Mapping[str, RegionScores]]) -> list[dict[str, float | str]]:
    """One row per region: the mean over cases of each score (TP, FP, FN: the sums), and the number of cases."""
    means = mean_scores(list(scores.values()))
    return [{"region": region, **values, "cases": len(scores)} for region, values in means.items()]


def summary_table(scores: Mapping[str, Mapping[str, RegionScores]]) -> str:
    """Markdown table: per region, the means over cases (TP, FP, FN: sums over cases)."""
    header = ["region", *(h for h, _, _ in SUMMARY_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in summary_rows(scores):
        cells = [str(row["region"])] + [format(float(row[key]), fmt) for _, key, fmt in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_evaluation(evaluation: FolderEvaluation, output_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``brats_metrics.csv`` (one row per case) and ``brats_summary.csv`` (one row per region) in
    ``output_dir``, each atomically; nothing when no case was scored. Returns the paths written."""
    if not evaluation.scores:
        return []
    output = Path(output_dir)
    per_case = write_case_table([case_row(c, s) for c, s in evaluation.scores.items()], output / "brats_metrics.csv")
    rows = summary_rows(evaluation.scores)
    summary = output / "brats_summary.csv"
    with atomic_path(summary) as tmp:
        keys = list(rows[0])
        lines = [",".join(keys)] + [",".join(_csv_value(row[k]) for k in keys) for row in rows]
        tmp.write_text("\n".join(lines) + "\n")
    return [p for p in (per_case, summary) if p is not None]


def _csv_value(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
