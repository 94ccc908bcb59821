"""The benchmark's result collection: every run's test scores read back, aggregated per row, with bootstrap
statistics, into ``results.json``."""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_components.constants import REGIONS
from kd_components.handlers.branches import BRANCH_DIAGNOSTICS_FILE
from kd_lab.benchmark.plan import (
    BenchmarkSettings,
    held_out_datalist,
    row_schedule,
    row_seeds,
    run_dir,
    teacher_seed_for,
)
from kd_lab.benchmark.rows import selected_rows
from kd_lab.report import read_metrics, read_per_case, read_scalars
from kd_lab.statistics import (
    finite_mean,
    gap_closed_interval,
    mean_interval,
    paired_difference,
    teacher_lead_interval,
)

__all__ = [
    "BRATS_METRICS",
    "METRICS",
    "RESULTS_INDENT",
    "add_statistics",
    "collect_results",
    "environment",
    "held_out_cases",
    "jsonable",
    "read_brats_scores",
]

#: The test metrics of ``evaluate.json`` read per case (``<metric>_raw.csv``, column ``mean``: for
#: ``val_mean_dice`` the mean over the three regions of that case, NaN-skipping).
METRICS: tuple[str, ...] = (
    "val_dice_tc",
    "val_dice_wt",
    "val_dice_et",
    "val_mean_dice",
    "val_hd95_tc",
    "val_hd95_wt",
    "val_hd95_et",
)
#: The BraTS challenge scores read per case from the test stage (:func:`read_brats_scores`): for each prefix
#: (``""``: as the network outputs it, ``brats_metrics.csv``; ``"post_"``: after the bundle's post-processing,
#: ``brats_metrics_post.csv``) and each column of :data:`BRATS_COLUMNS`, one key per region
#: (``brats_dice_tc`` ... ``post_brats_ranking_lesion_hd95_et``) and, for Dice, the mean over the regions
#: (``brats_dice_mean``, ``brats_ranking_lesion_dice_mean``, ...). ``ranking_lesion_*``: lesion-wise as the BraTS
#: 2023 ranking counts (false-positive and missed lesions score 0); ``matched_lesion_dice``: the mean over matched
#: lesions only. ``fp``: false-positive lesions of the case.
BRATS_FILES: dict[str, str] = {"": "brats_metrics.csv", "post_": "brats_metrics_post.csv"}
BRATS_COLUMNS: tuple[str, ...] = ("dice", "ranking_lesion_dice", "ranking_lesion_hd95", "matched_lesion_dice", "fp")
BRATS_METRICS: tuple[str, ...] = tuple(
    f"{prefix}brats_{column}_{region}"
    for prefix in BRATS_FILES
    for column in BRATS_COLUMNS
    for region in (*(r.lower() for r in REGIONS), *(("mean",) if "dice" in column else ()))
)
#: ``results.json`` is written without indentation: with every per-case score of every row, indented, it passes 1 MiB.
RESULTS_INDENT: int | None = None


def held_out_cases(settings: BenchmarkSettings) -> list[str]:
    """The held-out test case ids, in the column order of every per-case array (``test_datalist.json``)."""
    return [entry["case_id"] for entry in json.loads(held_out_datalist(settings).read_text())["training"]]


def read_case_scores(evaluation_dir: Path, cases: Sequence[str]) -> dict[str, list[float]]:
    """Per metric of :data:`METRICS`: the values of ``cases`` (in that order) from ``<metric>_raw.csv``."""
    scores = {}
    for metric in METRICS:
        by_case = read_per_case(evaluation_dir, metric)
        missing = sorted(set(cases) - set(by_case))
        if missing:
            raise ValueError(f"{evaluation_dir / (metric + '_raw.csv')} has no row for test cases {missing}")
        scores[metric] = [by_case[c] for c in cases]
    return scores


def read_brats_scores(evaluation_dir: Path, cases: Sequence[str]) -> dict[str, list[float]]:
    """Per key of :data:`BRATS_METRICS`: the values of ``cases`` (in that order) from the test stage's
    ``brats_metrics.csv`` and ``brats_metrics_post.csv`` (:class:`~kd_components.handlers.CaseScoresWriter`)."""
    scores: dict[str, list[float]] = {}
    for prefix, filename in BRATS_FILES.items():
        path = evaluation_dir / filename
        with path.open(newline="") as f:
            by_case = {row["case_id"]: row for row in csv.DictReader(f)}
        missing = sorted(set(cases) - set(by_case))
        if missing:
            raise ValueError(f"{path} has no row for test cases {missing}")
        for column in BRATS_COLUMNS:
            per_region = {r: [float(by_case[c][f"{column}_{r}"]) for c in cases] for r in (x.lower() for x in REGIONS)}
            for region, values in per_region.items():
                scores[f"{prefix}brats_{column}_{region}"] = values
            if "dice" in column:
                scores[f"{prefix}brats_{column}_mean"] = [
                    statistics.fmean(v) for v in zip(*per_region.values(), strict=True)
                ]
    return scores


def collect_results(settings: BenchmarkSettings, regime: str) -> dict[str, Any]:
    """Per row of ``regime`` (the teachers, shared by the regimes, and the students trained in it): the aggregated
    test metrics of each seed (``metrics.csv``), the per-(seed, case) scores of every metric (``*_raw.csv``), mean
    and standard deviation over seeds, the teachers' validation curves, and the bootstrap statistics
    (:func:`add_statistics`)."""
    cases = held_out_cases(settings)
    results: dict[str, Any] = {}
    for row in selected_rows(settings):
        seeds = row_seeds(settings, row)
        folders = {seed: run_dir(settings, row, seed, None if row.kind == "teacher" else regime) for seed in seeds}
        per_seed = {seed: read_metrics(folders[seed] / "test") for seed in seeds}
        per_case_by_seed = {
            seed: read_case_scores(folders[seed] / "test", cases) | read_brats_scores(folders[seed] / "test", cases)
            for seed in seeds
        }
        per_case = {"cases": cases} | {m: [per_case_by_seed[s][m] for s in seeds] for m in (*METRICS, *BRATS_METRICS)}
        diagnostics = [folders[seed] / "runs" / BRANCH_DIAGNOSTICS_FILE for seed in seeds]
        diagnostics = [json.loads(p.read_text()) for p in diagnostics if p.is_file()]
        probes = [folders[seed] / "probe" / "probe.json" for seed in seeds]
        probe = [json.loads(p.read_text()) for p in probes] if settings.probe_cases else None
        summary = {}
        for key in sorted(next(iter(per_seed.values()))):
            values = [per_seed[s][key] for s in seeds]
            finite = [v for v in values if math.isfinite(v)]
            summary[key] = {
                "mean": statistics.fmean(finite) if finite else float("nan"),
                "std": statistics.stdev(finite) if len(finite) > 1 else None,
                "n": len(finite),
                "values": values,
            }
            if key in METRICS:  # the same, from the per-case scores: per seed the mean over the test cases
                summary[key]["case_means"] = [finite_mean(v) for v in per_case[key]]
        epochs, _, per_epoch = row_schedule(settings, row, None if row.kind == "teacher" else regime)
        results[row.key] = {
            "label": row.label,
            "kind": row.kind,
            "network": row.network,
            "unlabelled": row.unlabelled,
            "epochs": epochs,
            "steps": epochs * per_epoch,
            "seeds": list(seeds),
            "teacher_seeds": [teacher_seed_for(settings, s) for s in seeds] if row.kind == "student" else None,
            "teacher": row.teacher if row.kind == "student" else None,
            "per_seed": per_seed,
            "per_case": per_case,
            "summary": summary,
            "probe": probe,
            "branch_diagnostics": diagnostics or None,
            # a teacher's validation mean Dice over its training, per seed: [[epoch, Dice], ...]
            "validation_curve": [read_scalars(folders[s] / "runs").get("val_mean_dice", []) for s in seeds]
            if row.kind == "teacher"
            else None,
        }
    return add_statistics(results, settings.bootstrap_resamples, settings.bootstrap_seed)


def add_statistics(
    rows: dict[str, Any], resamples: int, seed: int, base: str = "labels_only", teacher: str = "teacher"
) -> dict[str, Any]:
    """Add ``statistics`` to each row of ``rows`` (as :func:`collect_results` builds them, ``per_case`` holding
    a ``(seeds, cases)`` list per metric): per metric the mean with its bootstrap interval and, for every row
    trained on the same seeds as ``base`` (except ``base`` itself), the paired difference to ``base`` and the
    gap closed towards ``teacher`` (see :mod:`kd_lab.statistics`); for ``teacher``, ``lead``, its lead over ``base``
    (:func:`~kd_lab.statistics.teacher_lead_interval`); for a ``post_`` metric of
    :data:`BRATS_METRICS` also ``postprocessing_effect``, its paired difference to the same score without
    post-processing. Intervals are
    :meth:`~kd_lab.statistics.Interval.as_dict`; absent statistics are None. Returns ``rows``."""
    options = {"resamples": resamples, "seed": seed}

    def scores(key: str, metric: str) -> np.ndarray:
        return np.array([[math.nan if v is None else v for v in seed] for seed in rows[key]["per_case"][metric]])

    for key, row in rows.items():
        paired = key not in (base, teacher) and base in rows and row["seeds"] == rows[base]["seeds"]
        row["statistics"] = {}
        for metric in (*METRICS, *BRATS_METRICS):
            if metric not in row["per_case"]:
                continue
            own = scores(key, metric)
            entry: dict[str, Any] = {"mean": mean_interval(own, **options).as_dict(), "difference": None}
            entry["gap_closed"] = None
            if paired:
                reference = scores(base, metric)
                entry["difference"] = paired_difference(own, reference, **options).as_dict()
                if teacher in rows:
                    gap = gap_closed_interval(own, reference, scores(teacher, metric), **options)
                    entry["gap_closed"] = gap.as_dict()
            if key == teacher and base in rows:  # the teacher's lead over the label-only student, seeds of its own
                entry["lead"] = teacher_lead_interval(own, scores(base, metric), **options).as_dict()
            if metric.startswith("post_") and metric[len("post_") :] in row["per_case"]:
                # what the bundle's post-processing changes, paired over the same seeds and cases
                raw = scores(key, metric[len("post_") :])
                entry["postprocessing_effect"] = paired_difference(own, raw, **options).as_dict()
            row["statistics"][metric] = entry
    return rows


def environment(jobs: int) -> dict[str, Any]:
    """Where the trainings and evaluations of this run ran: CPU, GPU (None without CUDA), versions, parallel stages."""
    import monai

    from kd_lab.measure import cpu_description

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_description(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "jobs": jobs,
    }


def jsonable(value: Any) -> Any:
    """``value`` with string keys, lists for tuples, strings for paths and None for non-finite floats (JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
