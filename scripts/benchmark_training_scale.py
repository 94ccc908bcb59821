#!/usr/bin/env python
"""What a default training costs at BraTS scale: memory per case, preprocessing, loader throughput, step time, peak
RAM against the number of cases, and the wall time of a BraTS 2023 training; writes docs/training_scale.md.

    python scripts/benchmark_training_scale.py [--work /tmp/brats_kd_scale] [--cases 8 16 32 64] \\
        [--workers 0 1 2] [--repeats 3] [--device cpu|cuda] [--output docs/training_scale.md]

The bundles' own train.json at its defaults (1 mm, 96^3 patches, batch 1 x 2 samples) on BraTS-size phantoms
(240 x 240 x 155, 1 mm; generated once under --work and reused). Each measurement runs in a fresh process
(kd_lab/training_scale.py). With --device cuda (on a GPU machine) the step times are the GPU's and the page adds
the GPU's utilisation while the real loader feeds the teacher, and the BraTS 2023 estimate is for that GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from kd_components.io import update_generated_part
from kd_lab.measure import cpu_description, run_in_fresh_process
from kd_lab.training_scale import (
    BRATS_2023_TRAINING_CASES,
    CaseCost,
    RamPoint,
    case_costs,
    default_settings,
    epoch_hours,
    gpu_training_busy,
    loader_throughput,
    peak_ram,
    prepare_cases,
    step_seconds,
    subset_datalist,
    validation_seconds,
)

SECTION_START = "<!-- training-scale:start (scripts/benchmark_training_scale.py writes this part) -->"
SECTION_END = "<!-- training-scale:end -->"
#: The share of the labelled cases a fold trains on (5 folds).
TRAINING_SHARE = 0.8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/brats_kd_scale"), help="phantoms and stores")
    parser.add_argument("--cases", type=int, nargs="+", default=[8, 16, 32, 64], help="data set sizes for peak RAM")
    parser.add_argument("--in-memory-cases", type=int, nargs="*", default=[8, 16, 32], help="sizes for the old cache")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader workers to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (medians)")
    parser.add_argument("--cost-cases", type=int, default=5, help="cases for the per-case costs")
    parser.add_argument("--device", default="cpu", help="device of the training steps (cpu or cuda)")
    parser.add_argument("--output", default="docs/training_scale.md", help="page to update ('' to print only)")
    return parser.parse_args(argv)


def _hours(value: float) -> str:
    return f"{value:.1f} h" if value < 48 else f"{value / 24:.1f} days"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for store_dir in args.work.glob("store*"):  # this script's own stores: every measurement starts cold
        shutil.rmtree(store_dir)
    load_before = os.getloadavg()
    full = prepare_cases(args.work, max(args.cases))
    store = args.work / "store"

    costs = run_in_fresh_process(case_costs, full, store, args.cost_cases)
    print(f"[scale] per case: {costs}", flush=True)
    throughput = {
        w: statistics.median(run_in_fresh_process(loader_throughput, full, store, w, 20) for _ in range(args.repeats))
        for w in args.workers
    }
    print(f"[scale] loader samples/s: {throughput}", flush=True)
    steps = {
        name: statistics.median(run_in_fresh_process(step_seconds, name, full, store, args.repeats, args.device))
        for name in ("teacher", "student")
    }
    print(f"[scale] step seconds ({args.device}): {steps}", flush=True)
    validation = {
        name: run_in_fresh_process(validation_seconds, name, full, store, args.device)
        for name in ("teacher", "student")
    }
    print(f"[scale] validation seconds per case ({args.device}): {validation}", flush=True)
    busy = None
    if args.device.startswith("cuda"):
        busy = run_in_fresh_process(gpu_training_busy, full, store, 4, 50)
        print(f"[scale] GPU busy: {busy}", flush=True)

    workers = default_settings("teacher", ("num_workers",))["num_workers"]  # a default training's loader
    points = []
    for count in sorted(args.cases):
        store_n = args.work / f"store{count}"
        points.append(run_in_fresh_process(peak_ram, subset_datalist(full, count), store_n, workers, 1))
        print(f"[scale] {points[-1]}", flush=True)
    old = []
    for count in sorted(args.in_memory_cases):
        store_n = args.work / "unused-store"
        old.append(run_in_fresh_process(peak_ram, subset_datalist(full, count), store_n, workers, 1, True))
    for point in old:
        print(f"[scale] in-memory cache: {point}", flush=True)
    load_after = os.getloadavg()

    measured = Measured(
        costs, throughput, steps, validation, busy, points, old, workers, (load_before[0], load_after[0])
    )
    lines = _render(args, argv, measured)
    print("\n".join(lines))
    if args.output:
        update_generated_part(args.output, "\n".join(lines), SECTION_START, SECTION_END)
        print(f"wrote {args.output}")
    return 0


@dataclass(frozen=True)
class Measured:
    """The measurements of one run, as the page shows them."""

    costs: CaseCost
    throughput: dict[int, float]  # loader workers -> samples/s
    steps: dict[str, float]  # bundle -> seconds per training iteration
    validation: dict[str, float]  # bundle -> seconds of sliding-window validation per case
    busy: tuple[float, float] | None  # GPU utilisation (%) and seconds per iteration, on a GPU
    points: list[RamPoint]  # peak RAM with the store
    old: list[RamPoint]  # peak RAM with the in-memory cache
    workers: int  # loader workers of the peak-RAM runs
    load: tuple[float, float]  # load average before and after


def _render(args: argparse.Namespace, argv: list[str] | None, m: Measured) -> list[str]:
    costs, throughput, steps, validation, busy = m.costs, m.throughput, m.steps, m.validation, m.busy
    points, old, workers = m.points, m.old, m.workers
    on_gpu = args.device.startswith("cuda")
    where = f"GPU: {torch.cuda.get_device_name(0)}" if on_gpu else "this CPU"
    settings = default_settings("teacher", ("epochs", "val_interval"))
    command = shlex.join(["python", "scripts/benchmark_training_scale.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        SECTION_START,
        f"Generated by `{command}` on {datetime.date.today().isoformat()}: {cpu_description()}"
        + (f", training steps on the {where}" if on_gpu else "")
        + f"; torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}; "
        f"load average {m.load[0]:.2f} before, {m.load[1]:.2f} after.",
        "",
        "### One case (BraTS size: 240 x 240 x 155 at 1 mm)",
        "",
        f"Medians over {args.cost_cases} phantoms; the cropped brain box: {' x '.join(map(str, costs.cropped_shape))}.",
        "",
        "| | value |",
        "|---|---:|",
        "| RAM per case in the in-memory cache before (`CacheDataset`, float32, whole grid) "
        f"| {costs.in_memory_uncropped_mb:.0f} MB |",
        f"| the same case cropped to the brain, float16 image, uint8 regions | {costs.in_memory_mb:.0f} MB |",
        "| RAM per case held by the training now (`PreprocessedDataset`: on disk) | 0 MB |",
        f"| file per case in the store | {costs.stored_mb:.0f} MB |",
        "| preprocessing per case, once (read 4 gzip NIfTI + label, reorient, 1 mm, normalise, crop, write) "
        f"| {costs.preprocess_s:.2f} s |",
        f"| reading a stored case back | {costs.read_s * 1000:.0f} ms |",
        "",
        "### Loader throughput (the teacher's `train#dataloader`, warm store)",
        "",
        f"Training samples (96^3 patches with their regions) per second, median of {args.repeats} runs of 20 batches "
        "after the first; each sample: read, random crop (`RandCropByPosNegLabeld`), flips, intensity augmentation.",
        "",
        "| workers | samples/s |",
        "|---:|---:|",
        *(f"| {w} | {v:.1f} |" for w, v in throughput.items()),
        "",
        f"### Training step and validation ({where})",
        "",
        "One iteration of the bundle's own `train#trainer` on a real batch (2 patches of 96^3; the student's with "
        f"its frozen teacher and the distillation losses), median of {args.repeats} after a warm-up; validation: "
        "the evaluator's sliding window over one cropped case, once.",
        "",
        "| bundle | training step (s) | validation per case (s) |",
        "|---|---:|---:|",
        *(f"| {name} | {steps[name]:.2f} | {validation[name]:.1f} |" for name in ("teacher", "student")),
    ]
    if busy is not None:
        lines += [
            "",
            f"GPU busy while the loader (4 workers) feeds the teacher: {busy[0]:.0f} % (median of NVML samples), "
            f"{busy[1]:.2f} s per iteration.",
        ]
    lines += [
        "",
        "### Peak RAM against the number of cases",
        "",
        "The teacher's default training: its datasets built, a first epoch of its loader with a cold store (every "
        f"training case preprocessed and written, every sample drawn, {workers} loader workers as `train.json` has "
        "them), a read of every validation case, and one training iteration; the largest summed proportional set "
        "size (PSS: a page shared by the forked workers counted once) of the process and its workers. Before: the "
        "same run with the pipeline `train.json` had before the store (MONAI's `CacheDataset`, `cache_rate` 1.0, "
        "of whole float32 cases, training and validation).",
        "",
        "| labelled cases | training cases (fold 0) | peak RAM now (GiB) | peak RAM before, in-memory cache (GiB) |",
        "|---:|---:|---:|---:|",
    ]
    before = {p.cases: f"{p.peak_gib:.2f}" for p in old}
    lines += [f"| {p.cases} | {p.training_cases} | {p.peak_gib:.2f} | {before.get(p.cases, '-')} |" for p in points]
    training = round(BRATS_2023_TRAINING_CASES * TRAINING_SHARE)
    held = BRATS_2023_TRAINING_CASES - training
    parallel = {w: v for w, v in throughput.items() if w > 0}
    fastest = max(parallel or throughput, key=(parallel or throughput).get)
    loader_s = 2 / throughput[fastest]  # one batch: 2 samples
    per_epoch = epoch_hours(steps["teacher"], training, loader_s, overlapped=fastest > 0)
    validations = settings["epochs"] // settings["val_interval"]
    validation_h = validations * held * validation["teacher"] / 3600
    total = per_epoch * settings["epochs"] + validation_h
    lines += [
        "",
        f"By arithmetic for BraTS 2023 ({BRATS_2023_TRAINING_CASES} labelled cases, {training} in a training fold): "
        f"the in-memory cache of every case (training and validation) would hold about "
        f"{BRATS_2023_TRAINING_CASES * costs.in_memory_uncropped_mb / 1024:.0f} GB; the store "
        f"holds {BRATS_2023_TRAINING_CASES * costs.stored_mb / 1024:.0f} GB on disk and the training's RAM stays as "
        "above.",
        "",
        f"### A default teacher training on BraTS 2023, estimated from the measured times ({where})",
        "",
        f"One epoch = {training} iterations (one per training case), each the slower of the measured step "
        f"({steps['teacher']:.2f} s) and the loader ({loader_s:.2f} s for 2 samples with {fastest} "
        f"workers here); `train.json` runs {settings['epochs']} epochs and validates every "
        f"{settings['val_interval']} ({validations} validations of {held} cases at {validation['teacher']:.1f} s).",
        "",
        "| | wall time |",
        "|---|---:|",
        f"| one epoch | {_hours(per_epoch)} |",
        f"| validations | {_hours(validation_h)} |",
        f"| full default training ({settings['epochs']} epochs) | {_hours(total)} |",
        SECTION_END,
    ]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
