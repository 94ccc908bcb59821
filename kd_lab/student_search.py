"""The search for a student built for CPUs: Dice in the distillation benchmark regime against OpenVINO time per
volume on this CPU, and the Pareto front of the two (``scripts/benchmark_students.py`` -> ``docs/students.md``).

- **Dice** comes from a run of ``scripts/benchmark_kd.py`` with the candidates' rows (``soft_feature`` for the
  default student, ``kd_<name>`` for the others, :data:`~kd_components.networks.candidates.STUDENT_CANDIDATES`):
  its ``results.json`` holds every (seed, test case) score, so the paired difference of two candidates (same
  seeds, same cases, the same teacher per seed) gets a bootstrap interval
  (:func:`~kd_lab.statistics.paired_difference`).
- **Time** is measured here, each (candidate, precision) in a fresh process
  (:func:`~kd_lab.measure.run_in_fresh_process`): OpenVINO per 96^3 patch and per
  BraTS-size volume through MONAI's sliding window over the brain's box, at the bundle's ROI and overlap.
- **Pareto front**: a candidate is on it when no other candidate is both faster and higher in mean Dice.
  *Dice per second* is the mean Dice over the volume time, the issue's "best Dice per CPU second".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kd_components.networks.candidates import DEFAULT_CANDIDATE, STUDENT_CANDIDATES
from kd_lab.benchmark.graph import regime_rows
from kd_lab.inference_benchmark import EngineConfig, measure_config
from kd_lab.measure import count_flops, run_in_fresh_process
from kd_lab.statistics import paired_difference

__all__ = ["PRECISIONS", "candidate_row_key", "measure_candidates", "pareto_front", "search_table"]

#: OpenVINO precisions timed for every candidate.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")


def candidate_row_key(name: str) -> str:
    """The benchmark row (``scripts/benchmark_kd.py --rows``) that distils candidate ``name``."""
    return "soft_feature" if name == DEFAULT_CANDIDATE.name else f"kd_{name}"


def measure_candidates(
    names: Sequence[str], volume_file: str, roi: int, overlap: float, repeats: int, cache_dir: str
) -> list[dict[str, Any]]:
    """OpenVINO time per patch and per volume (crop) of every candidate at every precision of :data:`PRECISIONS`;
    one dict per (candidate, precision) as :func:`~kd_lab.inference_benchmark.measure_config`
    returns it, plus ``gflops_patch``; a configuration that fails is recorded with its ``error``."""
    rows = []
    for name in names:
        gflops = count_flops(name, roi)[0] / 1e9
        for precision in PRECISIONS:
            print(f"[{name}] openvino {precision} ...", flush=True)
            try:
                row = run_in_fresh_process(
                    measure_config,
                    EngineConfig(name, "openvino", precision),
                    volume_file,
                    roi,
                    overlap,
                    repeats,
                    cache_dir,
                    60.0,
                )
            except Exception as err:  # one configuration that cannot run does not stop the others
                row = {"network": name, "precision": precision, "error": f"{type(err).__name__}: {str(err)[:300]}"}
                print(f"  failed: {row['error']}")
            else:
                print(f"  {row['patch_s']:.3f} s/patch, volume (crop) {row['volume_crop_s']:.2f} s")
            rows.append({**row, "gflops_patch": gflops})
    return rows


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names of the points ``(seconds, dice)`` that no other point beats in both (faster and at least as good, or
    as fast and better)."""
    front = set()
    for name, (time, dice) in points.items():
        dominated = any(
            (t <= time and d >= dice) and (t < time or d > dice) for other, (t, d) in points.items() if other != name
        )
        if not dominated:
            front.add(name)
    return front


def _scores(row: dict[str, Any], metric: str = "val_mean_dice") -> np.ndarray:
    return np.array([[math.nan if v is None else v for v in seed] for seed in row["per_case"][metric]])


def search_table(
    kd_results: dict[str, Any],
    timings: Sequence[dict[str, Any]],
    precision: str,
    resamples: int,
    seed: int,
    rows_for: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One entry per candidate with a benchmark row: size, mean Dice [interval], the paired difference to the
    default student and to the earlier default (``segresnet8``) [intervals], OpenVINO seconds per patch and per
    volume at each precision, Dice per second of volume time at ``precision``, and whether it is on the Pareto
    front (volume time at ``precision`` against mean Dice). Candidates missing from ``kd_results`` are left out.
    ``rows_for`` names the benchmark row of a candidate where it is not :func:`candidate_row_key`'s (a run made
    when another candidate was the bundle's default, whose row was then ``soft_feature``)."""
    rows_for = rows_for or {}
    rows = regime_rows(kd_results)
    timed = {(t["network"], t["precision"]): t for t in timings if "error" not in t}
    entries = []
    for name, candidate in STUDENT_CANDIDATES.items():
        key = rows_for.get(name, candidate_row_key(name))
        if key not in rows:
            continue
        stats = rows[key]["statistics"]["val_mean_dice"]["mean"]
        entry: dict[str, Any] = {
            "name": name,
            "label": candidate.label,
            "row": key,
            "seeds": rows[key]["seeds"],
            "dice": stats,
            "differences": {},
            "patch_s": {p: timed[(name, p)]["patch_s"] for p in PRECISIONS if (name, p) in timed},
            "volume_s": {p: timed[(name, p)]["volume_crop_s"] for p in PRECISIONS if (name, p) in timed},
            "windows": next((timed[(name, p)]["windows"]["crop"] for p in PRECISIONS if (name, p) in timed), None),
            "gflops_patch": next((t.get("gflops_patch") for t in timings if t["network"] == name), None),
        }
        for other in (DEFAULT_CANDIDATE.name, "segresnet8"):
            other_key = rows_for.get(other, candidate_row_key(other))
            if other != name and other_key in rows and rows[other_key]["seeds"] == rows[key]["seeds"]:
                entry["differences"][other] = paired_difference(
                    _scores(rows[key]), _scores(rows[other_key]), resamples=resamples, seed=seed
                ).as_dict()
        seconds = entry["volume_s"].get(precision)
        entry["dice_per_s"] = stats["estimate"] / seconds if seconds else None
        entries.append(entry)
    points = {
        e["name"]: (e["volume_s"][precision], e["dice"]["estimate"]) for e in entries if precision in e["volume_s"]
    }
    front = pareto_front(points)
    for entry in entries:
        entry["pareto"] = entry["name"] in front
    return entries
