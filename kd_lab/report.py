"""The pipeline's report: metrics tables, training curves and prediction overlays, as Markdown plus PNGs.

Everything is read back from what the bundles wrote: TensorBoard event files (per-iteration
loss terms, per-epoch validation Dice), ``metrics.csv`` and ``*_raw.csv`` of ``evaluate.json``
(MONAI's ``MetricsSaver``) and the label maps of ``inference.json``. Figures use matplotlib's
object-oriented API and the Agg PNG writer (headless); every file is written atomically.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_components.constants import MODALITIES, REGIONS, SEG_SUFFIX
from kd_components.data.preview import axial_index, draw_overlay, find_volume, legend_handles, load_lps
from kd_components.io import atomic_path, save_figure_atomic
from kd_lab.stages import format_minutes

__all__ = [
    "ModelRun",
    "plot_overlays",
    "plot_training_curves",
    "read_metrics",
    "read_per_case",
    "read_scalars",
    "write_report",
]

#: Columns of the metrics table: (header, ``metrics.csv`` key).
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    *((f"Dice {r}", f"val_dice_{r.lower()}") for r in REGIONS),
    ("mean Dice", "val_mean_dice"),
    *((f"HD95 {r} (mm)", f"val_hd95_{r.lower()}") for r in REGIONS),
    *((f"lesion Dice {r} (2023 ranking)", f"ranking_lesion_dice_{r.lower()}") for r in REGIONS),
)


@dataclass(frozen=True)
class ModelRun:
    """What one trained network left on disk.

    Args:
        name: label in tables and figures (e.g. ``"teacher"``).
        runs_dir: TensorBoard folder of its training (``output_dir`` of ``train.json``).
        evaluation_dir: ``output_dir`` of ``evaluate.json`` (``metrics.csv``, ``*_raw.csv``).
        predictions_dir: label maps ``<case_id>.nii.gz`` on the validation cases.
        parameters: number of parameters of the network.
    """

    name: str
    runs_dir: Path
    evaluation_dir: Path
    predictions_dir: Path
    parameters: int


def read_scalars(runs_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files of ``runs_dir``: tag -> [(step, value)], sorted by step.

    A resumed run writes a second pair of event files; their points are merged, and where two
    files hold the same step the later file wins.
    """
    series: dict[str, dict[int, float]] = {}
    for path in sorted(Path(runs_dir).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            points = series.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                points[event.step] = event.value
    return {tag: sorted(points.items()) for tag, points in series.items()}


def read_metrics(evaluation_dir: str | os.PathLike[str]) -> dict[str, float]:
    """The aggregated metrics of ``evaluate.json`` (``metrics.csv``: one ``name,value`` row per metric)."""
    path = Path(evaluation_dir) / "metrics.csv"
    with path.open(newline="") as handle:
        return {row[0]: float(row[1]) for row in csv.reader(handle) if len(row) >= 2}


def read_per_case(evaluation_dir: str | os.PathLike[str], metric: str) -> dict[str, float]:
    """Per-case values of one metric (``<metric>_raw.csv``): case id -> value (NaN where undefined)."""
    path = Path(evaluation_dir) / f"{metric}_raw.csv"
    with path.open(newline="") as handle:
        return {row["filename"]: float(row["mean"]) for row in csv.DictReader(handle)}


def _loss_tags(scalars: Mapping[str, Sequence[tuple[int, float]]]) -> list[str]:
    return sorted((t for t in scalars if "loss" in t.lower()), key=lambda t: (t.lower() != "loss", t))


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over ``window`` points (shorter at the start)."""
    if len(values) == 0 or window <= 1:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values, dtype=float)
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out[i] = (cumulative[i + 1] - cumulative[lo]) / (i + 1 - lo)
    return out


def _plot_losses(axis: Axes, scalars: Mapping[str, Sequence[tuple[int, float]]], title: str) -> None:
    """Loss terms per iteration (faint) and their moving average (solid).

    Task-loss points equal to 0 come from unlabelled batches (which have no task term) and are
    left out of that curve.
    """
    for tag in _loss_tags(scalars):
        points = [(s, v) for s, v in scalars[tag] if math.isfinite(v)]
        if "task" in tag:
            points = [(s, v) for s, v in points if v != 0.0]
        if not points:
            continue
        steps, values = (np.asarray(x, dtype=float) for x in zip(*points, strict=True))
        (line,) = axis.plot(steps, _smooth(values, 10), label=tag, linewidth=1.5)
        axis.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("iteration")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)


def plot_training_curves(runs: Sequence[ModelRun], output_png: str | os.PathLike[str]) -> Path:
    """One PNG: the loss terms of each run, then the validation Dice (mean and per region) of all runs."""
    scalars = {run.name: read_scalars(run.runs_dir) for run in runs}
    figure = Figure(figsize=(5.0 * (len(runs) + 1), 4.0))
    axes = figure.subplots(1, len(runs) + 1, squeeze=False)[0]
    for axis, run in zip(axes, runs, strict=False):
        _plot_losses(axis, scalars[run.name], f"{run.name}: training loss terms")
    dice_axis = axes[-1]
    styles = {"val_mean_dice": "-", **{f"val_dice_{r.lower()}": ":" for r in REGIONS}}
    for run_index, run in enumerate(runs):
        colour = f"C{run_index}"
        for tag, style in styles.items():
            points = scalars[run.name].get(tag)
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            label = f"{run.name} {tag.removeprefix('val_').replace('_', ' ')}"
            width = 2.0 if tag == "val_mean_dice" else 1.0
            dice_axis.plot(steps, values, style, color=colour, marker="o", markersize=3, linewidth=width, label=label)
    dice_axis.set_title("validation Dice", fontsize=10)
    dice_axis.set_xlabel("epoch")
    dice_axis.set_ylim(0, 1)
    dice_axis.legend(fontsize=7, ncol=2)
    dice_axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure_atomic(figure, output_png)


def plot_overlays(
    dataset_dir: str | os.PathLike[str],
    case_ids: Sequence[str],
    runs: Sequence[ModelRun],
    output_png: str | os.PathLike[str],
) -> Path:
    """One row per case: t2f with the ground truth, then with each run's prediction, on the tumour's central slice.

    The Dice of each prediction (mean over regions, from ``val_mean_dice_raw.csv``) is in its title.
    """
    if not case_ids:
        raise ValueError("no cases to draw")
    per_case = {run.name: read_per_case(run.evaluation_dir, "val_mean_dice") for run in runs}
    figure = Figure(figsize=(3.0 * (len(runs) + 1), 3.1 * len(case_ids) + 0.5))
    axes = figure.subplots(len(case_ids), len(runs) + 1, squeeze=False)
    for row, case_id in zip(axes, case_ids, strict=True):
        folder = Path(dataset_dir) / case_id
        t2f_path = find_volume(folder, MODALITIES[-1])
        seg_path = find_volume(folder, SEG_SUFFIX)
        if t2f_path is None or seg_path is None:
            raise FileNotFoundError(f"{case_id}: t2f or segmentation not found in {folder}")
        t2f, (dx, dy) = load_lps(t2f_path)
        seg = load_lps(seg_path)[0].astype(np.int16)
        z = axial_index(seg, seg.shape[2])
        aspect = dy / dx
        draw_overlay(row[0], t2f[:, :, z].T, seg[:, :, z].T, aspect, title="ground truth")
        row[0].set_ylabel(case_id, fontsize=8)
        for axis, run in zip(row[1:], runs, strict=True):
            prediction_path = Path(run.predictions_dir) / f"{case_id}.nii.gz"
            prediction = load_lps(prediction_path)[0].astype(np.int16)
            dice = per_case[run.name].get(case_id, float("nan"))
            draw_overlay(axis, t2f[:, :, z].T, prediction[:, :, z].T, aspect, title=f"{run.name} (Dice {dice:.2f})")
    figure.legend(handles=legend_handles(), loc="lower center", ncol=3, frameon=False)
    figure.tight_layout(rect=(0, 0.5 / (3.1 * len(case_ids) + 0.5), 1, 1))
    return save_figure_atomic(figure, output_png)


def metrics_table(runs: Sequence[ModelRun]) -> str:
    """Markdown table: one row per run with its parameters, Dice and HD95 per region."""
    header = ["network", "parameters", *(h for h, _ in METRIC_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for run in runs:
        metrics = read_metrics(run.evaluation_dir)
        cells = [run.name, f"{run.parameters:,}"]
        for heading, key in METRIC_COLUMNS:
            value = metrics.get(key, float("nan"))
            cells.append(f"{value:.1f}" if heading.startswith("HD95") else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    output_dir: str | os.PathLike[str],
    runs: Sequence[ModelRun],
    dataset_dir: str | os.PathLike[str],
    overlay_cases: Sequence[str],
    intro: str,
    timings: Mapping[str, float] | None = None,
    extra_sections: Sequence[str] = (),
) -> Path:
    """Write ``output_dir/report.md``, with ``training_curves.png`` and ``predictions.png`` beside it."""
    output = Path(output_dir)
    plot_training_curves(runs, output / "training_curves.png")
    plot_overlays(dataset_dir, overlay_cases, runs, output / "predictions.png")
    parts = [
        "# BraTS-KD report",
        intro.strip(),
        "## Validation metrics",
        "Dice and HD95 (mm) per region on the validation fold, from `evaluate.json` of each bundle "
        "(HD95 is undefined, and left out of the mean, where a case has no voxel of a region), and the BraTS "
        "challenge's lesion-wise Dice (mean over matched lesions; a region empty in the reference scores 1 when the "
        "prediction is empty too, else 0; `brats_metrics.csv` beside `metrics.csv` has every score per case, "
        "`docs/evaluation.md` says how they are computed).",
        metrics_table(runs),
        "## Training",
        "Loss terms per iteration (faint) with a 10-point moving average, and validation Dice per epoch.",
        "![training curves](training_curves.png)",
        "## Predictions",
        "Axial slice through the tumour centre of validation cases: ground truth, then each network.",
        "![predictions](predictions.png)",
        *extra_sections,
    ]
    if timings:
        rows = ["| stage | time |", "|---|---:|"]
        rows += [f"| {name} | {format_minutes(seconds)} |" for name, seconds in timings.items()]
        rows.append(f"| **total** | **{format_minutes(sum(timings.values()))}** |")
        parts += ["## Time per stage", "Stages reused from an earlier run show 0 s.", "\n".join(rows)]
    path = output / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n\n".join(parts) + "\n")
    return path
