"""The sections of a benchmark page on the teacher's branches: the single-branch teachers and their students, the
students distilled from the branches' own features, and the hybrid teacher's branch diagnostics (scale weights,
fusion gates, the branch ablation), from the rows of ``results.json``
(:func:`kd_lab.benchmark.collect_results`).

Differences are paired: two teacher rows share the teacher seeds and the test cases, two student rows the student
seeds and the test cases (:func:`kd_lab.statistics.paired_difference`). A run without these rows
or without diagnostics leaves the sections out.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from kd_components.io import save_figure_atomic
from kd_components.networks.hybrid import FUSED_FEATURE_SCALES
from kd_lab.statistics import format_interval, paired_difference, row_interval

__all__ = [
    "branch_report_section",
    "branch_sections",
    "diagnostics_section",
    "plot_scale_weights",
    "plot_teacher_scale_weights",
]

#: The metrics of the comparison tables: (``per_case`` key, header, digits).
_METRICS: tuple[tuple[str, str, int], ...] = (
    ("val_mean_dice", "mean Dice", 3),
    ("brats_ranking_lesion_dice_mean", "mean lesion Dice (2023 ranking)", 3),
)
_SCALES = tuple(f"1/{scale}" for scale in FUSED_FEATURE_SCALES)


def _paired(row: Mapping[str, Any], base: Mapping[str, Any], metric: str, options: Mapping[str, int]) -> str:
    """``row - base`` on ``metric``, paired over their common seeds and cases, formatted with its interval."""
    if row.get("seeds") != base.get("seeds") or metric not in row["per_case"] or metric not in base["per_case"]:
        return "n/a"
    return format_interval(
        paired_difference(row["per_case"][metric], base["per_case"][metric], **options), 3, sign=True
    )


def _table(
    rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any], options: Mapping[str, int], against: str
) -> list[str]:
    header = " | ".join(f"{name} | vs {against}" for _, name, _ in _METRICS)
    lines = [f"| row | {header} | FP lesions WT |", "|---|" + "---:|" * (2 * len(_METRICS) + 1)]
    for row in [base, *rows]:
        cells = [row["label"]]
        for metric, _, digits in _METRICS:
            cells.append(format_interval(row_interval(row, metric), digits))
            cells.append("" if row is base else _paired(row, base, metric, options))
        cells.append(format_interval(row_interval(row, "brats_fp_wt"), 1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


#: How the branch section introduces each ablation teacher of :data:`kd_lab.benchmark.BRANCH_ROWS` it shows.
_TEACHER_DESCRIPTIONS: dict[str, str] = {
    "teacher_fusion_lr1": "the hybrid teacher with its fusion scale logits at the base learning rate "
    "(`--fusion_lr_factor 1`, as before they had a rate of their own)",
    "teacher_cnn": "the VGG-only teacher (`demo_cnn`: no ViT; each fused map is the projected VGG stage)",
    "teacher_vit": "the ViT-only teacher (`demo_vit`: no VGG; UNETR-like, its full-resolution skip a residual conv "
    "block on the input)",
}


def _sentence_list(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _capitalised(text: str) -> str:
    """``text`` with its first letter upper case (``str.capitalize`` would lower every other)."""
    return text[:1].upper() + text[1:]


def branch_sections(
    rows: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any], figure: str | None = None
) -> list[str]:
    """The single-branch teachers against the hybrid, their students against the hybrid's, and the feature sources."""
    options = {"resamples": settings.get("bootstrap_resamples", 10_000), "seed": settings.get("bootstrap_seed", 0)}
    lines: list[str] = []
    teachers = [rows[k] for k in ("teacher_fusion_lr1", "teacher_cnn", "teacher_vit") if k in rows]
    if teachers and "teacher" in rows:
        lines += [
            "## Teacher branches: the hybrid against each branch alone",
            _capitalised(_sentence_list([_TEACHER_DESCRIPTIONS[k] for k in _TEACHER_DESCRIPTIONS if k in rows]))
            + ", each trained in the regime of the hybrid with the same teacher seeds. *vs hybrid*: the row minus "
            "the hybrid teacher, paired over teacher seeds and test cases.",
            *_table(teachers, rows["teacher"], options, "hybrid"),
        ]
        students = [r for r in rows.values() if r.get("teacher") in ("teacher_cnn", "teacher_vit")]
        if students and "soft_feature" in rows:
            lines += [
                "",
                "Their students (soft-target + feature KD, labelled cases only), against the hybrid's student "
                "(paired over student seeds and test cases):",
                *_table(students, rows["soft_feature"], options, "hybrid's student"),
            ]
        lines.append("")
    sources = [r for key, r in rows.items() if key.startswith("features_")]
    if sources and "soft_feature" in rows:
        lines += [
            "## Feature distillation from the branches",
            "The hybrid teacher's student with feature pairs on the teacher's fused maps (the default, "
            '`feature_sources: ["fused"]`) and on the branches\' own features as well or instead: the VGG stages at '
            "the same scales (`cnn`) and the ViT hidden states (`vit`, 3D token maps at 1/16, each paired with the "
            "student's 1/16 level); each pair has its adapter, weighted by the teacher's scale weight of its scale. "
            "*vs fused*: paired over student seeds and test cases.",
            *_table(sources, rows["soft_feature"], options, "fused"),
            "",
        ]
    return lines + diagnostics_section(rows, figure)


def _mean_list(lists: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.fmean(values) for values in zip(*lists, strict=True)]


def _weights(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


#: What the diagnostics table says about its columns.
_DIAGNOSTICS_TEXT = (
    "*Scale weights*: the fusion's learned weights of the scales 1/2, 1/4, 1/8, 1/16 (uniform 0.25 at the start), "
    "after the first epoch and after the last. *Gate*: the CNN's share `g` of each fused voxel and channel "
    "(`g * cnn + (1 - g) * vit`) at the last validation, mean per scale. *Without the ViT / CNN*: validation mean "
    "Dice with that encoder's features replaced by zeros at inference (the network unchanged otherwise), against "
    "the same network whole."
)
_DIAGNOSTICS_HEADER = (
    "| teacher | scale weights, first epoch | scale weights, last epoch | gate: CNN share per scale | "
    "mean Dice | without the ViT | without the CNN |",
    "|---|---|---|---|---:|---:|---:|",
)


def _diagnostics_row(label: str, records: Sequence[Mapping[str, Any]]) -> str:
    """One table row from the ``branch_diagnostics.json`` records of a teacher's trainings (mean over them)."""
    # epoch 1 of every training that recorded it (a training resumed with an older handler lacks its first epochs)
    firsts = [r["scale_weights"][0]["weights"] for r in records if r["scale_weights"][0]["epoch"] == 1]
    last = _mean_list([r["scale_weights"][-1]["weights"] for r in records])
    gated = [r["gates"][-1]["scales"] for r in records if r.get("gates")]
    gates = _weights(_mean_list([[s["mean"] for s in scales] for scales in gated])) if gated else "no gates"
    ablated = [r["ablation"]["dice"] for r in records if r.get("ablation")]
    dice = {k: statistics.fmean(a[k][-1] for a in ablated) for k in ("full", "vit", "cnn")} if ablated else {}
    cells = [
        label,
        _weights(_mean_list(firsts)) if firsts else "n/a",
        _weights(last),
        gates,
        *(f"{dice[k]:.3f}" if k in dice else "n/a" for k in ("full", "vit", "cnn")),
    ]
    return "| " + " | ".join(cells) + " |"


def diagnostics_section(rows: Mapping[str, Mapping[str, Any]], figure: str | None = None) -> list[str]:
    """The teachers' branch diagnostics (``branch_diagnostics.json`` of their trainings), mean over seeds, and the
    scale weights' trajectories (``figure``, from :func:`plot_teacher_scale_weights`)."""
    diagnosed = [r for r in rows.values() if r.get("branch_diagnostics")]
    if not diagnosed:
        return []
    return [
        "## Branch diagnostics of the teachers (validation cases, after training; mean over teacher seeds)",
        "From each teacher training's `branch_diagnostics.json` (`kd_components.handlers.BranchDiagnostics`). "
        + _DIAGNOSTICS_TEXT,
        *_DIAGNOSTICS_HEADER,
        *(_diagnostics_row(r["label"], r["branch_diagnostics"]) for r in diagnosed),
        "",
        *([f"![the fusion's scale weights over training]({figure})", ""] if figure else []),
    ]


def _scale_weight_lines(axis: Any, record: Mapping[str, Any], labelled: bool, **style: Any) -> None:
    """One line per scale (colour ``C<i>``) on ``axis``: the fusion's scale weights after each epoch of a
    ``branch_diagnostics.json`` record; ``labelled``: name the lines in the legend."""
    epochs = [e["epoch"] for e in record["scale_weights"]]
    for i, scale in enumerate(_SCALES):
        values = [e["weights"][i] for e in record["scale_weights"]]
        axis.plot(epochs, values, color=f"C{i}", label=scale if labelled else None, **style)


def plot_teacher_scale_weights(rows: Mapping[str, Mapping[str, Any]], output_png: str | os.PathLike[str]) -> Path:
    """The fusion's scale weights after every epoch, one panel per teacher row with diagnostics, one colour per
    scale and one line style per seed."""
    diagnosed = [r for r in rows.values() if r.get("branch_diagnostics")]
    figure = Figure(figsize=(4.2 * len(diagnosed), 3.4))
    axes = figure.subplots(1, len(diagnosed), squeeze=False)[0]
    for axis, row in zip(axes, diagnosed, strict=True):
        for seed_index, record in enumerate(row["branch_diagnostics"]):
            _scale_weight_lines(axis, record, seed_index == 0, linestyle=("-", "--", ":", "-.")[seed_index % 4])
        axis.axhline(0.25, color="grey", linewidth=0.8, linestyle=":")
        axis.set_title(row["label"], fontsize=8)
        axis.set_xlabel("epoch")
        axis.set_ylim(0, 0.6)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("scale weight (line style: teacher seed)")
    axes[0].legend(fontsize=7, title="scale", title_fontsize=7)
    figure.tight_layout()
    return save_figure_atomic(figure, output_png)


def plot_scale_weights(record: Mapping[str, Any], output_png: str | os.PathLike[str]) -> Path:
    """The fusion's scale weights after each epoch (one line per scale) and, per validation, the gates' mean CNN
    share per scale: one PNG from a ``branch_diagnostics.json`` record."""
    figure = Figure(figsize=(10.0, 3.6))
    weights_axis, gates_axis = figure.subplots(1, 2)
    _scale_weight_lines(weights_axis, record, True, marker="o", ms=3)
    gates = record.get("gates") or []
    for i, scale in enumerate(_SCALES if gates else ()):
        gate_epochs = [g["epoch"] for g in gates]
        gates_axis.plot(gate_epochs, [g["scales"][i]["mean"] for g in gates], marker="o", ms=3, label=scale)
    weights_axis.axhline(0.25, color="grey", linewidth=0.8, linestyle=":")
    weights_axis.set_title("fusion scale weights (uniform start: 0.25)", fontsize=10)
    gates_axis.set_title("gates: the CNN's mean share per scale (validation)", fontsize=10)
    gates_axis.set_ylim(0, 1)
    for axis in (weights_axis, gates_axis):
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, title="scale", title_fontsize=7)
    figure.tight_layout()
    return save_figure_atomic(figure, output_png)


def branch_report_section(diagnostics: str | os.PathLike[str], output_png: str | os.PathLike[str]) -> str:
    """The main job report's section on the teacher's branches, from its training's ``branch_diagnostics.json``
    (with the trajectory plot written to ``output_png``); empty when the training wrote none."""
    path = Path(diagnostics)
    if not path.is_file():
        return ""
    record = json.loads(path.read_text())
    plot_scale_weights(record, output_png)
    return "\n\n".join(
        [
            "## The teacher's branches",
            "What the VGG and the ViT branch of the hybrid teacher contribute, from its training's "
            f"`{path.name}` (`kd_components.handlers.BranchDiagnostics`). " + _DIAGNOSTICS_TEXT,
            "\n".join([*_DIAGNOSTICS_HEADER, _diagnostics_row("hybrid teacher", [record])]),
            f"![scale weights and gates]({Path(output_png).name})",
        ]
    )
