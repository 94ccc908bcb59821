#!/usr/bin/env python
"""Time one training step of the demo teacher and the distilled student in float32 and in bf16 autocast.

    python scripts/benchmark_training.py [--repeats 5] [--batch 4] [--size 64] [--output docs/training_speed.md]

One step is what the bundles' trainers do per batch at the demo settings (``configs/demo.json``: batch 2 x 2
patches of 64^3): the teacher's forward, DiceCE loss, backward and AdamW step; for the student also the
frozen teacher's forward and the soft-target and feature losses (``DistillationLoss`` as the student's
``train.json`` declares it). Each variant is timed as the median of ``--repeats`` steps after one warm-up
step, the variants interleaved so that a change in machine load hits them alike. The load average before
and after is printed with the table, and the table is written atomically to ``--output``.

The allocator table times the student + KD step (bf16 where the CPU has it, as the bundles run it) with
glibc's default malloc settings and with :func:`kd_components.allocator.tune_malloc`, each in a fresh
process (malloc's state is per process), alternated ``--allocator-rounds`` times; it gives the step's
wall time, its system (kernel) time and its minor page faults, medians over the rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys

import torch
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss

from kd_components.allocator import tune_malloc
from kd_components.constants import MODALITIES, REGIONS
from kd_components.inferers import AutocastInferer, cpu_bf16_supported
from kd_components.io import update_generated_part
from kd_components.losses import (
    DistillationInputs,
    DistillationLoss,
    FeatureTerm,
    SoftTargetKDLoss,
    SoftTargetTerm,
    TaskTerm,
    build_feature_kd_loss,
)
from kd_components.memory_layout import to_layout, use_channels_last
from kd_components.networks import build_student, build_teacher, trainable_parameters
from kd_components.networks.student import feature_pairs
from kd_lab.measure import cpu_description, time_runs

SECTION_START = "<!-- training-step:start (scripts/benchmark_training.py writes this part) -->"
SECTION_END = "<!-- training-step:end -->"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--batch", type=int, default=4, help="patches per step (demo: batch_size 2 x num_samples 2)")
    parser.add_argument("--size", type=int, default=64, help="patch side (demo: 64)")
    parser.add_argument("--output", default="docs/training_speed.md", help="page to update ('' to print only)")
    parser.add_argument("--allocator-rounds", type=int, default=2, help="fresh processes per malloc setting")
    parser.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _teacher_step(size: int, batch: int, bf16: bool, channels_last: bool):
    torch.manual_seed(0)
    network = to_layout(build_teacher("demo", img_size=(size,) * 3), channels_last)
    optimizer = torch.optim.AdamW(trainable_parameters(network), lr=1e-3)
    loss = DiceCELoss(sigmoid=True)
    inferer = AutocastInferer(SimpleInferer(), enabled=bf16)
    x = torch.randn(batch, len(MODALITIES), size, size, size)
    y = (torch.rand(batch, len(REGIONS), size, size, size) > 0.9).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(inferer(x, network), y).backward()
        optimizer.step()

    return step


def _student_step(size: int, batch: int, bf16: bool, channels_last: bool):
    torch.manual_seed(0)
    teacher = build_teacher("demo", img_size=(size,) * 3).eval().requires_grad_(False)
    student = build_student()
    for network in (teacher, student):
        to_layout(network, channels_last)
    feature = build_feature_kd_loss(student, teacher, feature_pairs(student), probe_size=(size,) * 3)
    terms = {
        "task": TaskTerm(DiceCELoss(sigmoid=True)),
        "soft": SoftTargetTerm(SoftTargetKDLoss(4.0)),
        "feature": FeatureTerm(feature, weight=0.1),
    }
    objective = DistillationLoss(terms)
    optimizer = torch.optim.AdamW([*student.parameters(), *objective.parameters()], lr=1e-3)
    inferer = AutocastInferer(SimpleInferer(), enabled=bf16)
    x = torch.randn(batch, len(MODALITIES), size, size, size)
    y = (torch.rand(batch, len(REGIONS), size, size, size) > 0.9).float()
    from kd_components.hooks import FeatureHooks

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with FeatureHooks(student, objective.student_paths) as s, FeatureHooks(teacher, objective.teacher_paths) as t:
            with torch.no_grad():
                teacher_logits = inferer(x, teacher)
            logits = inferer(x, student)
            inputs = DistillationInputs(
                logits,
                teacher_logits,
                y,
                mask=(x != 0).any(1, keepdim=True),
                student_features=dict(zip(objective.student_paths, s.features(), strict=True)),
                teacher_features=dict(zip(objective.teacher_paths, t.features(), strict=True)),
                teacher=teacher,
            )
            objective(inputs)["loss"].backward()
        optimizer.step()

    return step


def _allocator_child(setting: str, size: int, batch: int, repeats: int) -> dict[str, float]:
    """One process's student + KD steps under ``setting``: median seconds, system seconds and minor faults per step."""
    if setting == "tuned" and not tune_malloc():
        raise SystemExit("tune_malloc() did not apply here (not glibc, or BRATS_KD_MALLOC=default)")
    step = _student_step(size, batch, cpu_bf16_supported(), use_channels_last("auto", "cpu"))
    step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [time_runs(step, 1)[0] for _ in range(repeats)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": sorted(times)[len(times) // 2],
        "system": (after.ru_stime - before.ru_stime) / repeats,
        "minor_faults": (after.ru_minflt - before.ru_minflt) / repeats,
    }


def _allocator_table(args: argparse.Namespace) -> list[str]:
    """Markdown rows comparing glibc's defaults with tune_malloc(), from fresh processes alternated."""
    runs: dict[str, list[dict[str, float]]] = {"default": [], "tuned": []}
    for _ in range(args.allocator_rounds):
        for setting in runs:
            env = {**os.environ, "BRATS_KD_MALLOC": "default"} if setting == "default" else dict(os.environ)
            command = [sys.executable, __file__, "--child", setting, "--size", str(args.size)]
            command += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
            done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def median(setting: str, key: str) -> float:
        values = sorted(run[key] for run in runs[setting])
        return values[len(values) // 2]

    rows = ["| malloc | step (s) | system time per step (s) | minor page faults per step |", "|---|---:|---:|---:|"]
    for setting, label in (("default", "glibc defaults"), ("tuned", "`tune_malloc()`")):
        rows.append(
            f"| {label} | {median(setting, 'seconds'):.2f} | {median(setting, 'system'):.2f} "
            f"| {median(setting, 'minor_faults'):,.0f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(_allocator_child(args.child, args.size, args.batch, args.repeats)))
        return 0
    load_before = os.getloadavg()
    builders = {"teacher (demo)": _teacher_step, "student + KD": _student_step}
    variants = [(n, b, cl) for n in builders for cl in (False, True) for b in (False, True)]
    steps = {(n, b, cl): builders[n](args.size, args.batch, b, cl) for n, b, cl in variants}
    for step in steps.values():  # warm-up of every variant first
        step()
    times: dict[tuple[str, bool, bool], list[float]] = {key: [] for key in steps}
    for _ in range(args.repeats):
        for key, step in steps.items():
            times[key].append(time_runs(step, 1)[0])
    allocator_rows = _allocator_table(args) if args.allocator_rounds > 0 else []
    load_after = os.getloadavg()
    medians = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
    lines = [
        SECTION_START,
        f"Generated by `python {' '.join(['scripts/benchmark_training.py', *(argv or sys.argv[1:])])}` on "
        f"{datetime.date.today().isoformat()}: {cpu_description()}, native bf16: {cpu_bf16_supported()}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        "",
        f"One step at batch {args.batch} x {args.size}^3 (the demo's 2 x 2 patches): median of {args.repeats} "
        f"steps after a warm-up, the {len(steps)} variants interleaved. *Layout*: the networks' weights stored "
        "channels-first (PyTorch's default) or channels-last (`torch.channels_last_3d`, what the bundles' "
        "`channels_last: auto` does on a CPU, `kd_components.memory_layout`); *speed-up* is float32 over bf16 in "
        "one layout, *channels-last* the channels-first time over the channels-last one in one precision.",
        "",
        "| network | layout | float32 (s) | bf16 autocast (s) | speed-up | channels-last, float32 "
        "| channels-last, bf16 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in builders:
        for cl in (False, True):
            fp32, bf16 = medians[(name, False, cl)], medians[(name, True, cl)]
            gains = " | ".join(
                f"{medians[(name, b, False)] / medians[(name, b, True)]:.2f}x" if cl else "" for b in (False, True)
            )
            layout = "channels-last" if cl else "channels-first"
            lines.append(f"| {name} | {layout} | {fp32:.2f} | {bf16:.2f} | {fp32 / bf16:.2f}x | {gains} |")
    if args.allocator_rounds > 0:
        lines += [
            "",
            f"malloc: the student + KD step ({'bf16' if cpu_bf16_supported() else 'float32'}) with glibc's defaults "
            "and with `kd_components.allocator.tune_malloc()` (what the bundles' `initialize` calls), each in a "
            f"fresh process, alternated {args.allocator_rounds} times; medians over the processes of each one's "
            f"median of {args.repeats} steps.",
            "",
            *allocator_rows,
        ]
    lines.append(SECTION_END)
    text = "\n".join(lines)
    print(text)
    if args.output:
        update_generated_part(args.output, text, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
