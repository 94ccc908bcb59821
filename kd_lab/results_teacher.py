"""The results page's section on the teachers' training: each teacher seed's validation curve, from the rows of the
benchmark's ``results.json`` (:func:`kd_lab.benchmark.collect_results`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["teacher_curve_section"]


def teacher_curve_section(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per teacher row and seed: the validation mean Dice at each validation of its training (``validation_curve``,
    ``[[epoch, Dice], ...]`` per seed), so that a reader sees whether the budget was long enough (the curve
    flattens) or not; nothing for a results.json without curves."""
    teachers = [(row, curves) for row in rows.values() if (curves := row.get("validation_curve")) and any(curves)]
    if not teachers:
        return []
    epochs = sorted({int(epoch) for _, curves in teachers for curve in curves for epoch, _ in curve})
    lines = [
        "## The teachers' training: validation mean Dice at each validation",
        "| teacher | seed | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
        "|---|---:|" + "---:|" * len(epochs),
    ]
    for row, curves in teachers:
        for seed, curve in zip(row["seeds"], curves, strict=True):
            by_epoch = {int(epoch): value for epoch, value in curve}
            cells = [f"{by_epoch[e]:.3f}" if e in by_epoch else "" for e in epochs]
            lines.append(f"| {row['label']} | {seed} | " + " | ".join(cells) + " |")
    return [
        *lines,
        "",
        "On the validation cases, with the training's sliding window (the test metrics above are on the held-out "
        "cases). The teacher's `model.pt` is the checkpoint of its best validation.",
    ]
