"""BraTS challenge metrics of one case: global and lesion-wise Dice, HD95 and NSD, with panoptica.

The BraTS segmentation challenges rank on lesion-wise metrics computed by their official evaluator
(``brats-evaluation``, built on panoptica). This module reproduces its adult-glioma (GLI) configuration, the file
``brats_evaluation/configs/config_gli.yaml`` of ``brats-evaluation`` 0.0.10 (https://pypi.org/project/brats-evaluation/,
https://github.com/BrainLesion): semantic input; regions TC (labels 1, 3), WT (1, 2, 3), ET (3) and the single
labels NETC (1), SNFH (2); connected components (cc3d, 26-connectivity) as lesions; maximum bipartite matching of
predicted to reference lesions on Dice, any overlap (Dice > 1e-6) counting; per matched lesion Dice, NSD and HD95;
global (whole-region) Dice, NSD and HD95. That package is AGPL-3.0 and is not a dependency: the configuration is
rebuilt here with panoptica's own classes (Apache-2.0).

Rules, per case and region (the numbers are :class:`RegionScores`):

- **lesion-wise Dice / HD95 as the BraTS 2023 ranking counts them** (``ranking_lesion_dice``,
  ``ranking_lesion_hd95``, the headline): every lesion counts, matched or not. Dice is the sum of the matched
  lesions' Dice over TP + FP + FN (a false-positive or missed lesion scores 0); HD95 the sum of the matched lesions'
  HD95 plus :data:`~kd_components.constants.MISSED_REGION_HD_MM` per false-positive or missed lesion, over TP + FP +
  FN (the 2023 challenge's ``LesionWise_Score_Dice`` / ``LesionWise_Score_HD95``).
- **matched-lesion Dice / HD95 / NSD** (``matched_lesion_dice``, ...): the mean over matched lesions only
  (panoptica's ``sq_dsc`` / ``sq_hd95`` / ``sq_nsd``, which ``brats-evaluation``'s GLI parser reports as
  ``lesionwise_dsc_mean`` / ``lesionwise_hd95_mean``). It cannot see a false-positive or a missed lesion (those are
  counted in ``tp``/``fp``/``fn`` only). With no matched lesion at all: Dice 0, NSD 0, HD95
  :data:`~kd_components.constants.MISSED_REGION_HD_MM`.
- **global Dice / HD95 / NSD** of the whole region. A prediction that does not overlap the reference at all scores
  Dice 0, NSD 0, HD95 :data:`~kd_components.constants.MISSED_REGION_HD_MM` (panoptica's zero-overlap rule, infinity,
  written as the grid diagonal like the official parser does).
- **empty regions** (BraTS's rule): a region absent from the reference scores Dice 1, NSD 1, HD95 0 when the
  prediction is empty too, else Dice 0, NSD 0, HD95 :data:`~kd_components.constants.MISSED_REGION_HD_MM`; the same
  holds for the lesion-wise values. So every case has a value and enters the mean (MONAI's metrics leave such a
  case NaN, out of the mean; ``brats-evaluation``'s GLI configuration leaves an empty-and-empty case NaN too).

Distances are in mm (the voxel spacing is passed on); panoptica 2.1 computes the global metrics without the
spacing, so they are computed here with its metric functions and the spacing: identical on BraTS's 1 mm grid, and
in mm on any other. The NSD tolerance is the official one: the smallest voxel size for lesions (panoptica's default)
and half a voxel for the global NSD.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from panoptica import (
    ConnectedComponentsInstanceApproximator,
    InputType,
    MaxBipartiteMatching,
    Metric,
    disable_citation_reminder,
)
from panoptica import Panoptica_Evaluator as PanopticaEvaluator
from panoptica.utils.edge_case_handling import EdgeCaseHandler, EdgeCaseResult, MetricZeroTPEdgeCaseHandling

from kd_components.constants import ET_LABEL, EVALUATION_REGIONS, MISSED_REGION_HD_MM, allowed_labels
from kd_components.io import atomic_path

__all__ = [
    "LESION_MATCHING_THRESHOLD",
    "RegionScores",
    "brats_lesion_evaluator",
    "case_row",
    "mean_scores",
    "region_masks",
    "score_label_maps",
    "score_region",
    "write_case_table",
]

#: Dice above which a predicted lesion may be matched to a reference lesion (the official GLI configuration: any
#: overlap).
LESION_MATCHING_THRESHOLD = 1e-6


@dataclass(frozen=True)
class RegionScores:
    """BraTS metrics of one region of one case (see the module's docstring for the rules).

    Attributes:
        dice, hd95, nsd: global Dice, HD95 (mm) and normalised surface Dice of the whole region.
        ranking_lesion_dice, ranking_lesion_hd95: lesion-wise Dice and HD95 (mm) as the BraTS 2023 ranking counts
            them, every false-positive and missed lesion scoring 0 / the missed-region distance (computed here).
        matched_lesion_dice, matched_lesion_hd95, matched_lesion_nsd: means over the matched lesions only.
        tp, fp, fn: lesions matched, predicted lesions without a match, reference lesions without a match.
    """

    dice: float
    hd95: float
    nsd: float
    ranking_lesion_dice: float = field(init=False)
    ranking_lesion_hd95: float = field(init=False)
    matched_lesion_dice: float
    matched_lesion_hd95: float
    matched_lesion_nsd: float
    tp: int
    fp: int
    fn: int

    def __post_init__(self) -> None:
        lesions = self.tp + self.fp + self.fn
        if self.tp == 0:  # nothing matched: the matched values are BraTS's empty-region rule (1 / 0) or a miss
            dice, hd95 = self.matched_lesion_dice, self.matched_lesion_hd95
        else:
            dice = self.matched_lesion_dice * self.tp / lesions
            hd95 = (self.matched_lesion_hd95 * self.tp + MISSED_REGION_HD_MM * (self.fp + self.fn)) / lesions
        object.__setattr__(self, "ranking_lesion_dice", float(dice))
        object.__setattr__(self, "ranking_lesion_hd95", float(hd95))

    def as_dict(self) -> dict[str, float | int]:
        """The fields by name."""
        return asdict(self)


#: Scores of a region empty in both maps (BraTS's rule), and of one with nothing matched.
_BOTH_EMPTY = {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
_NOTHING_MATCHED = {"dice": 0.0, "hd95": MISSED_REGION_HD_MM, "nsd": 0.0}


def brats_lesion_evaluator() -> PanopticaEvaluator:
    """A panoptica evaluator configured like ``brats-evaluation``'s GLI configuration, for one binary region.

    The regions are made before (:func:`region_masks`) instead of by panoptica's class groups, so that the label
    values live in :mod:`kd_components.constants`; the global metrics are computed by :func:`score_region` (with
    the voxel spacing). Zero-match edge cases as in the official file: Dice and NSD 0, HD95 infinite.
    """

    def zero_tp(value: EdgeCaseResult) -> MetricZeroTPEdgeCaseHandling:
        return MetricZeroTPEdgeCaseHandling(
            no_instances_result=EdgeCaseResult.NAN,
            empty_prediction_result=value,
            empty_reference_result=value,
            normal=value,
        )

    return PanopticaEvaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC, matching_threshold=LESION_MATCHING_THRESHOLD),
        edge_case_handler=EdgeCaseHandler(
            listmetric_zeroTP_handling={
                Metric.DSC: zero_tp(EdgeCaseResult.ZERO),
                Metric.NSD: zero_tp(EdgeCaseResult.ZERO),
                Metric.HD95: zero_tp(EdgeCaseResult.INF),
            },
            empty_list_std=EdgeCaseResult.NAN,
        ),
        instance_metrics=[Metric.DSC, Metric.NSD, Metric.HD95],
        global_metrics=[],
        log_times=False,
        verbose=False,
    )


_EVALUATOR: PanopticaEvaluator | None = None
# panoptica prints a citation banner on stdout at its first evaluation, into tables and logs; docs/evaluation.md
# cites it instead.
disable_citation_reminder()


def _evaluator() -> PanopticaEvaluator:
    global _EVALUATOR
    if _EVALUATOR is None:
        _EVALUATOR = brats_lesion_evaluator()
    return _EVALUATOR


def _finite_or_missed(value: float) -> float:
    """A distance, with infinity or NaN (no surface to measure) written as the grid diagonal."""
    return float(value) if math.isfinite(value) else MISSED_REGION_HD_MM


def _bounding_box(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...]:
    """The box around ``mask``'s voxels, ``pad`` voxels wider on each side (within the array)."""
    coords = np.nonzero(mask)
    return tuple(
        slice(max(int(c.min()) - pad, 0), min(int(c.max()) + pad + 1, size))
        for c, size in zip(coords, mask.shape, strict=True)
    )


def _global_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Global Dice, HD95 (mm) and NSD of two non-empty binary masks."""
    overlap = int(np.count_nonzero(pred & ref))
    if overlap == 0:
        return dict(_NOTHING_MATCHED)
    dice = 2.0 * overlap / (int(np.count_nonzero(pred)) + int(np.count_nonzero(ref)))
    box = _bounding_box(pred | ref)  # distances need only the union's box; the zero margin keeps the borders
    p, r = pred[box].astype(np.uint8), ref[box].astype(np.uint8)
    spacing = tuple(float(s) for s in spacing)
    hd95 = Metric.HD95(r, p, voxelspacing=spacing)
    with warnings.catch_warnings():  # panoptica warns whenever the tolerance is 0.5, its default, as at 1 mm
        warnings.filterwarnings("ignore", message="The threshold is set to 0.5")
        nsd = Metric.NSD(r, p, voxelspacing=spacing, threshold=0.5 * min(spacing))
    return {"dice": dice, "hd95": _finite_or_missed(hd95), "nsd": float(nsd)}


def score_region(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> RegionScores:
    """BraTS metrics of one region: prediction and reference binary masks ``(H, W, D)``, voxel ``spacing`` in mm.

    Raises:
        ValueError: the masks differ in shape.
    """
    pred, ref = np.asarray(pred).astype(bool), np.asarray(ref).astype(bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference differ in shape: {pred.shape} vs {ref.shape}")
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return RegionScores(
            **_BOTH_EMPTY, **{f"matched_lesion_{k}": v for k, v in _BOTH_EMPTY.items()}, tp=0, fp=0, fn=0
        )
    spacing = tuple(float(s) for s in spacing)
    result = _evaluator().evaluate(
        pred.astype(np.uint8), ref.astype(np.uint8), voxelspacing=spacing, verbose=False, log_times=False
    )
    (region,) = result.values()
    tp, fp, fn = int(region.tp), int(region.fp), int(region.fn)
    if tp == 0:
        lesion = dict(_NOTHING_MATCHED)
    else:
        lesion = {
            "dice": float(region.sq_dsc),
            "hd95": _finite_or_missed(region.sq_hd95),
            "nsd": float(region.sq_nsd),
        }
    whole = dict(_NOTHING_MATCHED) if pred_empty or ref_empty else _global_scores(pred, ref, spacing)
    return RegionScores(**whole, **{f"matched_lesion_{k}": v for k, v in lesion.items()}, tp=tp, fp=fp, fn=fn)


def region_masks(
    labels: np.ndarray, et_label: int = ET_LABEL, regions: Sequence[str] = tuple(EVALUATION_REGIONS)
) -> dict[str, np.ndarray]:
    """Binary masks of the BraTS evaluation regions (:data:`~kd_components.constants.EVALUATION_REGIONS`) of a
    label map ``(H, W, D)`` whose ET is marked with ``et_label`` (3 or 4)."""
    allowed_labels(et_label)  # validates et_label
    labels = np.asarray(labels)
    return {
        name: np.isin(labels, [et_label if v == ET_LABEL else v for v in EVALUATION_REGIONS[name]]) for name in regions
    }


def score_label_maps(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    et_label: int = ET_LABEL,
    regions: Sequence[str] = tuple(EVALUATION_REGIONS),
) -> dict[str, RegionScores]:
    """BraTS metrics per region (TC, WT, ET, NETC, SNFH by default) of a predicted and a reference label map
    ``(H, W, D)`` on the same grid (voxel ``spacing`` in mm)."""
    pred_masks = region_masks(pred, et_label, regions)
    ref_masks = region_masks(ref, et_label, regions)
    return {name: score_region(pred_masks[name], ref_masks[name], spacing) for name in regions}


def mean_scores(cases: Sequence[Mapping[str, RegionScores]]) -> dict[str, dict[str, float]]:
    """Per region, the mean over cases of each score (``tp``/``fp``/``fn``: the sums)."""
    if not cases:
        return {}
    out: dict[str, dict[str, float]] = {}
    for region in cases[0]:
        values = [case[region].as_dict() for case in cases]
        out[region] = {
            key: float(np.sum([v[key] for v in values]))
            if key in ("tp", "fp", "fn")
            else float(np.mean([v[key] for v in values]))
            for key in values[0]
        }
    return out


def case_row(case_id: str, scores: Mapping[str, RegionScores]) -> dict[str, Any]:
    """One CSV row: ``case_id``, then per region (lower case) ``dice_tc, hd95_tc, nsd_tc, ranking_lesion_dice_tc,
    ranking_lesion_hd95_tc, matched_lesion_dice_tc, matched_lesion_hd95_tc, matched_lesion_nsd_tc, tp_tc, fp_tc,
    fn_tc``, ...; floats rounded to 6 decimals."""
    row: dict[str, Any] = {"case_id": case_id}
    for region, score in scores.items():
        for key, value in score.as_dict().items():
            row[f"{key}_{region.lower()}"] = value if isinstance(value, int) else round(float(value), 6)
    return row


def write_case_table(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Write ``rows`` (:func:`case_row`, the same keys in each) as a CSV at ``path``, atomically; nothing for no
    rows. Returns the path written."""
    if not rows:
        return None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
    return Path(path)
