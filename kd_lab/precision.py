"""Does bf16 autocast on the CPU cost accuracy? The demo's teacher and student trained in float32 and in bf16.

For each seed and precision, on the data of a finished main job (``outputs/demo``: its phantoms and
datalist), the four steps of the demo run with its settings (:class:`~kd_lab.demo.DemoSettings`)
and only ``cpu_bf16`` and ``seed`` changed: teacher training, its evaluation on the validation fold,
the student distilled from *that* teacher, its evaluation. A float32 student learns from a float32
teacher, a bf16 one from a bf16 teacher, so each column is what a user of that setting gets.

Runs are independent chains; ``jobs`` of them run at a time, each with ``cores // jobs`` threads. A
finished step (its output present) is not run again, so an interrupted comparison continues.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kd_lab.demo import STUDENT_BUNDLE, TEACHER_BUNDLE, DemoSettings, bundle_command
from kd_lab.report import read_metrics

__all__ = ["PRECISIONS", "SECTION_END", "SECTION_START", "ChainResult", "render_section", "run_chain"]

#: (label, value of the bundles' ``cpu_bf16`` setting)
PRECISIONS: tuple[tuple[str, str], ...] = (("float32", "false"), ("bf16 autocast", "true"))
SECTION_START = "<!-- precision-check:start (scripts/compare_precision.py writes this part) -->"
SECTION_END = "<!-- precision-check:end -->"
_TRAIN = ("train.json", "demo.json")


@dataclass(frozen=True)
class ChainResult:
    """Validation mean Dice and training wall time of one (precision, seed) chain."""

    precision: str
    seed: int
    teacher_dice: float
    student_dice: float
    teacher_seconds: float
    student_seconds: float


def _run(command: list[str], log: Path, threads: int) -> float:
    """Run ``command`` with its output in ``log``; its wall time in seconds. CalledProcessError names the log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise RuntimeError(f"a bundle command failed with status {done.returncode}; its output is in {log}")
    return time.perf_counter() - start


def run_chain(
    demo_dir: Path, out: Path, label: str, cpu_bf16: str, seed: int, settings: DemoSettings, threads: int
) -> ChainResult:
    """Teacher, its evaluation, student from it, its evaluation, for one precision and seed (see module doc)."""
    folder = out / f"{label.split()[0]}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    data = ["--dataset_dir", str(demo_dir / "data"), "--data_list_file_path", str(demo_dir / "datalist.json")]
    common = [*data, "--seed", str(seed), "--val_interval", str(settings.val_interval)]
    seconds: dict[str, float] = {}
    dice: dict[str, float] = {}
    for name, bundle, epochs, extra in (
        ("teacher", TEACHER_BUNDLE, settings.teacher_epochs, []),
        ("student", STUDENT_BUNDLE, settings.student_epochs, ["--teacher_ckpt", str(folder / "teacher" / "model.pt")]),
    ):
        models, evaluation = folder / name, folder / f"{name}_evaluation"
        args = [*common, "--epochs", str(epochs), *extra, "--ckpt_dir", str(models)]
        timing = folder / f"{name}_seconds.txt"
        if not (models / "model.pt").is_file():
            runs = ["--output_dir", str(folder / f"{name}_runs"), "--cpu_bf16", cpu_bf16]
            train = bundle_command(bundle, "training", _TRAIN, *args, *runs)
            timing.write_text(f"{_run(train, folder / f'{name}_train.log', threads):.1f}\n")
        if not (evaluation / "metrics.csv").is_file():
            evaluate = bundle_command(bundle, None, (*_TRAIN, "evaluate.json"), *args, "--output_dir", str(evaluation))
            _run(evaluate, folder / f"{name}_evaluate.log", threads)
        seconds[name] = float(timing.read_text()) if timing.is_file() else float("nan")
        dice[name] = read_metrics(evaluation)["val_mean_dice"]
    return ChainResult(label, seed, dice["teacher"], dice["student"], seconds["teacher"], seconds["student"])


def run_all(demo_dir: Path, out: Path, seeds: Sequence[int], settings: DemoSettings, jobs: int) -> list[ChainResult]:
    """Every (precision, seed) chain, ``jobs`` at a time, each with an equal share of the CPU cores."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    chains = [(label, value, seed) for seed in seeds for label, value in PRECISIONS]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_chain, demo_dir, out, *chain, settings, threads) for chain in chains]
        return [future.result() for future in futures]


def render_section(results: Sequence[ChainResult], settings: DemoSettings, header: str) -> str:
    """The page's generated part: per seed and precision the validation mean Dice, then the mean per precision.

    Args:
        results: one :class:`ChainResult` per (precision, seed).
        settings: the demo settings the chains ran with (epochs are quoted).
        header: the first line (command, date, machine).
    """
    lines = [
        SECTION_START,
        header,
        "",
        f"Teacher {settings.teacher_epochs} epochs, student {settings.student_epochs} epochs distilled from the "
        f"teacher of the same precision, validation fold 0 (`evaluate.json`), mean Dice over TC, WT, ET.",
        "",
        "| precision | seed | teacher Dice | student Dice | teacher training | student training |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r.seed, r.precision)):
        lines.append(
            f"| {r.precision} | {r.seed} | {r.teacher_dice:.3f} | {r.student_dice:.3f} "
            f"| {r.teacher_seconds / 60:.1f} min | {r.student_seconds / 60:.1f} min |"
        )
    for label, _ in PRECISIONS:
        rows = [r for r in results if r.precision == label]
        if rows:
            teacher = statistics.fmean(r.teacher_dice for r in rows)
            student = statistics.fmean(r.student_dice for r in rows)
            lines.append(f"| **{label}, mean** | {len(rows)} seeds | {teacher:.3f} | {student:.3f} | | |")
    lines.append(SECTION_END)
    return "\n".join(lines)
