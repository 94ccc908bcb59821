"""The sections of the results pages (``docs/results_<regime>.md``) on the BraTS challenge metrics, the
post-processing and the false-positive probe, from the rows of the benchmark's ``results.json``
(:func:`kd_lab.benchmark.collect_results`).

A ``results.json`` written before these were measured has no ``brats_*`` scores or ``probe``: the sections are then
left out, not filled with blanks.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from kd_components.constants import MISSED_REGION_HD_MM, REGIONS
from kd_lab.statistics import format_interval, row_interval

__all__ = ["challenge_sections", "postprocessing_section", "probe_section"]

_REGIONS = [r.lower() for r in REGIONS]


def _cell(row: Mapping[str, Any], metric: str, digits: int, which: str = "mean", sign: bool = False) -> str:
    return format_interval(row_interval(row, metric, which), digits, sign=sign)


def challenge_sections(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The BraTS challenge metrics of every row as the network outputs them (no post-processing)."""
    scored = [r for r in rows.values() if "brats_ranking_lesion_dice_mean" in r.get("statistics", {})]
    if not scored:
        return []
    lines = [
        "## BraTS challenge metrics (mean over seeds and test cases [95 % bootstrap interval])",
        "Scored as the BraTS 2023 evaluation scores (panoptica, the official GLI configuration; "
        "`docs/evaluation.md`): a region empty in the reference scores Dice 1 if the prediction is empty too, "
        f"else 0 (and HD95 0 or {MISSED_REGION_HD_MM} mm), so every case counts in every region. *Lesion-wise*: "
        "each connected component is a lesion, matched to the reference's by Dice; as the BraTS 2023 ranking "
        f"counts, every false-positive or missed lesion scores Dice 0 and HD95 {MISSED_REGION_HD_MM} mm (sum over "
        "TP + FP + FN). *Matched-lesion Dice*: the mean over matched lesions only (`lesionwise_dsc_mean`), blind "
        "to false-positive and missed lesions. *FP lesions WT*: predicted whole-tumour components that match no "
        "reference lesion, per case. The predictions as the network outputs them; the bundles' post-processing is "
        "the next section.",
        "| row | Dice TC | Dice WT | Dice ET | mean Dice | lesion Dice TC | lesion Dice WT | lesion Dice ET | "
        "mean lesion Dice | lesion HD95 TC (mm) | lesion HD95 WT (mm) | lesion HD95 ET (mm) | "
        "mean matched-lesion Dice | FP lesions WT |",
        "|---|" + "---:|" * 13,
    ]
    for row in scored:
        cells = [
            row["label"],
            *(_cell(row, f"brats_dice_{r}", 3) for r in [*_REGIONS, "mean"]),
            *(_cell(row, f"brats_ranking_lesion_dice_{r}", 3) for r in [*_REGIONS, "mean"]),
            *(_cell(row, f"brats_ranking_lesion_hd95_{r}", 1) for r in _REGIONS),
            _cell(row, "brats_matched_lesion_dice_mean", 3),
            _cell(row, "brats_fp_wt", 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def postprocessing_section(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What each bundle's post-processing (its ``inference.json`` thresholds) changes, paired per seed and case."""
    scored = [r for r in rows.values() if "post_brats_ranking_lesion_dice_mean" in r.get("statistics", {})]
    if not scored:
        return []
    lines = [
        "## Post-processing (the bundles' thresholds; change paired over seeds and test cases)",
        "Each network's test predictions scored again after its bundle's post-processing (`inference.json`: "
        "components below a volume per region removed, ET below a volume relabelled NETC; thresholds chosen on "
        "the main job's validation fold by `brats-kd choose-postprocessing`, never on these test cases; "
        "`brats-kd segment` applies it by default). *Change*: post-processed minus as output, the same seed and "
        "case, with its 95 % bootstrap interval.",
        "| row | mean Dice | change | mean lesion Dice | change | lesion HD95 WT (mm) | change | FP lesions WT | "
        "change |",
        "|---|" + "---:|" * 8,
    ]
    for row in scored:
        cells = [row["label"]]
        for metric, digits in (
            ("brats_dice_mean", 3),
            ("brats_ranking_lesion_dice_mean", 3),
            ("brats_ranking_lesion_hd95_wt", 1),
            ("brats_fp_wt", 1),
        ):
            cells += [
                _cell(row, f"post_{metric}", digits),
                _cell(row, f"post_{metric}", digits, "postprocessing_effect", sign=True),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _spread(values: Sequence[float], digits: int) -> str:
    """Mean over seeds, with the lowest and highest seed: ``mean (low-high)``."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def probe_section(rows: Mapping[str, Mapping[str, Any]], cases: int) -> list[str]:
    """Predicted tumour on healthy phantoms and Dice on an unseen generator seed, per row (over its seeds)."""
    from kd_components.evaluation.false_positives import HEALTHY_SEED, UNSEEN_SEED

    probed = [r for r in rows.values() if r.get("probe")]
    if not probed:
        return []
    lines = [
        "## Normal anatomy and an unseen phantom seed",
        f"Every trained run segments {cases} tumour-free phantoms (seed {HEALTHY_SEED}: every voxel it calls tumour "
        f"is a false positive) and {cases} tumour phantoms of a generator seed no network is trained on "
        f"(seed {UNSEEN_SEED}), with `brats-kd segment`'s engine and its post-processing "
        "(`kd_components/evaluation/false_positives.py`). Mean over the seeds of a row (lowest-highest seed in "
        "brackets); per seed, the mean over the cases.",
        "| row | healthy: mean WT predicted (mL) | healthy: largest (mL) | unseen seed: Dice TC | Dice WT | Dice ET |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in probed:
        probes = row["probe"]
        cells = [
            row["label"],
            _spread([p["healthy_wt_ml_mean"] for p in probes], 1),
            f"{max(p['healthy_wt_ml_max'] for p in probes):.1f}",
            *(_spread([p["unseen_dice_mean"][r] for p in probes], 3) for r in REGIONS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
