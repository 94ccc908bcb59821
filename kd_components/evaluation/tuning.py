"""Choosing the post-processing thresholds (:mod:`kd_components.postprocess`) on validation predictions.

The label maps a network made of the validation fold's cases, with its post-processing off, are post-processed with
candidate thresholds and scored with the BraTS metrics (:mod:`kd_components.evaluation.lesions`). One threshold at a
time, outermost region first (the WT, TC and ET minimum component volumes, then the ET -> NETC volume), the value
with the best objective is kept, ties going to the lower mean lesion-wise HD95 (ranking form) and then to the smaller
threshold (the smallest change). Each threshold is chosen with the ones before it fixed.

The objective is the lesion-wise Dice that also counts the lesions not matched, as the BraTS 2023 ranking did
(:attr:`RegionScores.ranking_lesion_dice`: per case and region the sum of the matched lesions' Dice over TP + FP +
FN, 1 for a region empty in both maps), averaged over the cases and TC, WT, ET. The mean over matched lesions
(``brats-evaluation``'s ``lesionwise_dsc_mean``) cannot see a false-positive lesion next to a found one, which is
exactly what removing small components corrects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kd_components.constants import ET_LABEL, REGIONS
from kd_components.evaluation.folder import SUMMARY_COLUMNS
from kd_components.evaluation.lesions import RegionScores, mean_scores, score_label_maps
from kd_components.postprocess import PostprocessSettings, postprocess_label_map

__all__ = [
    "DEFAULT_ET_TO_NETC_MM3",
    "DEFAULT_MIN_COMPONENT_MM3",
    "TuningCase",
    "TuningResult",
    "choose_postprocessing",
    "comparison_table",
]

#: Candidate minimum component volumes (mm³) for each region.
DEFAULT_MIN_COMPONENT_MM3: tuple[float, ...] = (0, 10, 25, 50, 100, 250, 500, 1000, 2000)
#: Candidate ET -> NETC volumes (mm³).
DEFAULT_ET_TO_NETC_MM3: tuple[float, ...] = (0, 25, 50, 100, 200, 300, 500, 1000, 2000)


@dataclass(frozen=True)
class TuningCase:
    """One validation case: the network's label map, the reference, both ``(H, W, D)``, and the voxel spacing (mm)."""

    case_id: str
    prediction: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, ...]


@dataclass
class TuningResult:
    """The chosen thresholds, the metrics before and after (per region, means over cases), and every trial.

    Attributes:
        settings: the chosen :class:`PostprocessSettings`.
        before, after: region -> score -> mean over cases (TP, FP, FN: sums), without and with the chosen settings.
        trials: one entry per candidate tried: ``{"setting", "value", "objective", "ranking_lesion_hd95"}``.
    """

    settings: PostprocessSettings
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    trials: list[dict[str, float | str]] = field(default_factory=list)

    def config_values(self) -> dict[str, object]:
        """The chosen values as the ``inference.json`` settings."""
        return {
            "postprocess_min_mm3": {r: _plain(v) for r, v in self.settings.min_component_mm3.items()},
            "postprocess_et_to_netc_mm3": _plain(self.settings.et_to_netc_mm3),
        }


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


class _Scorer:
    """BraTS scores of the ranked regions for post-processed cases, cached by the resulting label map."""

    def __init__(self, cases: Sequence[TuningCase], et_label: int) -> None:
        self.cases = list(cases)
        self.et_label = et_label
        self._cache: dict[tuple[str, str], dict[str, RegionScores]] = {}

    def __call__(self, settings: PostprocessSettings) -> list[dict[str, RegionScores]]:
        out = []
        for case in self.cases:
            labels = postprocess_label_map(case.prediction, case.spacing, settings, self.et_label)
            key = (case.case_id, hashlib.sha1(labels.tobytes()).hexdigest())
            if key not in self._cache:
                self._cache[key] = score_label_maps(labels, case.reference, case.spacing, self.et_label, REGIONS)
            out.append(self._cache[key])
        return out


def _objective(scores: Sequence[Mapping[str, RegionScores]]) -> tuple[float, float]:
    """(mean ranking-form lesion-wise Dice, mean ranking-form lesion-wise HD95) over the cases and TC, WT, ET."""
    dice = float(np.mean([s[r].ranking_lesion_dice for s in scores for r in REGIONS]))
    hd95 = float(np.mean([s[r].ranking_lesion_hd95 for s in scores for r in REGIONS]))
    return dice, hd95


def choose_postprocessing(
    cases: Sequence[TuningCase],
    min_component_mm3: Sequence[float] = DEFAULT_MIN_COMPONENT_MM3,
    et_to_netc_mm3: Sequence[float] = DEFAULT_ET_TO_NETC_MM3,
    et_label: int = ET_LABEL,
    log: Callable[[str], None] = lambda line: None,
) -> TuningResult:
    """Choose the thresholds on ``cases`` (see the module's docstring)."""
    if not cases:
        raise ValueError("no validation case to choose the post-processing on")
    score = _Scorer(cases, et_label)
    sizes: dict[str, float] = {r: 0.0 for r in REGIONS}
    et_volume = 0.0
    trials: list[dict[str, float | str]] = []
    baseline = score(PostprocessSettings(sizes, et_volume))
    for setting in ("WT", "TC", "ET", "et_to_netc"):
        candidates = et_to_netc_mm3 if setting == "et_to_netc" else min_component_mm3
        best: tuple[float, float, float] | None = None
        for value in sorted(float(v) for v in candidates):
            trial_sizes = {**sizes, setting: value} if setting != "et_to_netc" else sizes
            trial = PostprocessSettings(trial_sizes, value if setting == "et_to_netc" else et_volume)
            dice, hd95 = _objective(score(trial))
            name = "et_to_netc_mm3" if setting == "et_to_netc" else f"min_mm3_{setting}"
            trials.append({"setting": name, "value": value, "objective": dice, "ranking_lesion_hd95": hd95})
            # rounded so that float noise does not pick a larger threshold; ties keep the smaller value
            if best is None or (round(dice, 6), -round(hd95, 4)) > (round(best[0], 6), -round(best[1], 4)):
                best = (dice, hd95, value)
        assert best is not None
        log(f"{setting}: {best[2]:g} mm³ (detection-weighted lesion Dice {best[0]:.4f}, lesion HD95 {best[1]:.2f} mm)")
        if setting == "et_to_netc":
            et_volume = best[2]
        else:
            sizes[setting] = best[2]
    chosen = PostprocessSettings(sizes, et_volume)
    return TuningResult(chosen, mean_scores(baseline), mean_scores(score(chosen)), trials)


#: Columns of :func:`comparison_table`: (header, score, format): those of ``brats-kd evaluate``'s summary but NSD.
COMPARISON_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(c for c in SUMMARY_COLUMNS if c[1] != "nsd")


def comparison_table(results: Mapping[str, TuningResult]) -> str:
    """Markdown table: per network and region, each score without -> with the chosen post-processing."""
    header = ["network", "region", *(h for h, _, _ in COMPARISON_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for name, result in results.items():
        for region in result.before:
            cells = [name, region]
            for _, key, fmt in COMPARISON_COLUMNS:
                before, after = format(result.before[region][key], fmt), format(result.after[region][key], fmt)
                cells.append(before if before == after else f"{before} → {after}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
