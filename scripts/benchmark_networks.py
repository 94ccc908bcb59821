#!/usr/bin/env python
"""Benchmark the teacher configurations and the students on this machine and write a markdown report.

    python scripts/benchmark_networks.py [--configs demo default student segresnet16] [--size 96]
                                         [--repeats 5] [--default-repeats 2] [--output docs/networks.md]

Networks: the HybridTeacher configurations (``kd_components.networks.TEACHER_CONFIGS``), the default
distillation ``student`` (``kd_components.networks.build_student``) and ``segresnet16``, MONAI's
model-zoo BraTS SegResNet (init_filters 16, blocks 1-2-2-4). For each it reports the parameter
count (total and trainable), the FLOPs of one patch (convolutions and matrix products, counted on
the meta device by ``torch.utils.flop_counter``, so nothing is computed), and the wall-clock time per
``size``^3 patch at batch 1: forward (eval mode, ``torch.no_grad()``) and forward + backward (train
mode), each the median of ``repeats`` runs after one warm-up run. Every configuration is measured in
a fresh process so that its peak resident memory (``getrusage``) is its own. The table is printed
and written atomically to ``--output``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from typing import Any

import torch

from kd_components.constants import MODALITIES, REGIONS
from kd_components.io import atomic_path
from kd_components.networks import TEACHER_CONFIGS, build_student, build_teacher, trainable_parameters

_GIB = 1024**3
#: Networks besides the teacher configurations.
OTHER_NETWORKS: tuple[str, ...] = ("student", "segresnet16")


def build_network(name: str, size: int) -> torch.nn.Module:
    """A teacher configuration (trained on ``size``^3 patches), the default student, or the model-zoo SegResNet."""
    if name == "student":
        return build_student()
    if name == "segresnet16":
        from monai.networks.nets import SegResNet

        return SegResNet(
            spatial_dims=3,
            in_channels=len(MODALITIES),
            out_channels=len(REGIONS),
            init_filters=16,
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
        )
    return build_teacher(name, img_size=(size, size, size))


def cpu_description() -> str:
    """The CPU model (from /proc/cpuinfo where available) and the number of cores this process may use."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def count_flops(config: str, size: int) -> tuple[float, float]:
    """FLOPs (forward, forward + backward) of one ``size``^3 patch at batch 1, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_network(config, size)
        x = torch.empty(1, len(MODALITIES), size, size, size)
    with FlopCounterMode(display=False) as forward:
        model(x)
    with FlopCounterMode(display=False) as training:
        model(x).mean().backward()
    return float(forward.get_total_flops()), float(training.get_total_flops())


def _time_runs(step: Any, repeats: int) -> tuple[float, float]:
    """Median and minimum wall-clock seconds of ``step()`` over ``repeats`` runs, after one warm-up run."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def measure(config: str, size: int, repeats: int) -> dict[str, Any]:
    """Parameters, FLOPs, timings and peak memory of one configuration (run in a fresh process)."""
    baseline_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB  # Python + torch + MONAI
    torch.manual_seed(0)
    flops_forward, flops_training = count_flops(config, size)
    model = build_network(config, size)
    x = torch.randn(1, len(MODALITIES), size, size, size)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model(x).mean().backward()

    load_start = os.getloadavg()[0]
    model.eval()
    forward_s, forward_min_s = _time_runs(forward, repeats)
    model.train()
    training_s, training_min_s = _time_runs(forward_backward, repeats)
    return {
        "config": config,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable_parameters(model)),
        "gflops_forward": flops_forward / 1e9,
        "gflops_training": flops_training / 1e9,
        "forward_s": forward_s,
        "forward_min_s": forward_min_s,
        "training_s": training_s,
        "training_min_s": training_min_s,
        "load": (load_start, os.getloadavg()[0]),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB,
        "baseline_rss_gib": baseline_gib,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def measure_in_fresh_process(config: str, size: int, repeats: int) -> dict[str, Any]:
    """:func:`measure` in a new (spawned) process, so peak memory is per configuration."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, config, size, repeats).result()


def render_markdown(rows: list[dict[str, Any]], size: int, command: str) -> str:
    """The report: header (hardware, versions, command), configuration values, results table."""
    import monai

    threads = rows[0]["threads"] if rows else torch.get_num_threads()
    lines = [
        "# Networks: size and speed",
        "",
        f"Generated by `{command}` on {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"- Hardware: {cpu_description()} (torch uses {threads} threads); CPU only, float32.",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}, MONAI {monai.__version__}.",
        f"- Input: one {size}x{size}x{size} patch with 4 channels (batch 1). Forward: eval mode under "
        "`torch.no_grad()`; forward+backward: train mode, `mean()` of the logits as the loss. Times are "
        "the median (and the minimum) of the given number of runs after one warm-up run. The machine may be "
        "shared: the 1-minute load average at the start and end of the timing is given; a load above the "
        "number of cores means other processes competed for the CPU and the medians are pessimistic.",
        "- FLOPs: convolutions and matrix products as counted by `torch.utils.flop_counter.FlopCounterMode` "
        "(a multiply-add counts as 2; norms and activations are not counted).",
        "- Peak RSS: `getrusage` maximum resident set of the measuring process (a fresh process per "
        "configuration); the baseline is the same before the model is built (Python, torch, MONAI).",
        "- Trainable parameters leave out MONAI's unused cross-attention LayerNorms (2 x hidden per ViT block), "
        "which `ViTEncoder3d` freezes.",
        "",
        "## Results",
        "",
        "| config | parameters | trainable | GFLOPs forward | GFLOPs fwd+bwd | forward (s) median / min "
        "| fwd+bwd (s) median / min | peak RSS (GiB) | baseline RSS (GiB) | runs | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params']:,} | {r['trainable']:,} | {r['gflops_forward']:.1f} "
            f"| {r['gflops_training']:.1f} | {r['forward_s']:.2f} / {r['forward_min_s']:.2f} "
            f"| {r['training_s']:.2f} / {r['training_min_s']:.2f} | {r['peak_rss_gib']:.2f} "
            f"| {r['baseline_rss_gib']:.2f} | {r['repeats']} | {r['load'][0]:.1f} -> {r['load'][1]:.1f} |"
        )
    names = [r["config"] for r in rows if r["config"] in TEACHER_CONFIGS]
    if not names:
        return "\n".join([*lines, ""])
    keys = sorted({k for n in names for k in TEACHER_CONFIGS[n]}, key=list(TEACHER_CONFIGS[names[0]]).index)
    lines += [
        "",
        "## Configurations (`kd_components.networks.TEACHER_CONFIGS`)",
        "",
        "| argument | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in keys:
        values = [str(TEACHER_CONFIGS[n].get(key, "")) for n in names]
        lines.append(f"| `{key}` | " + " | ".join(values) + " |")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[*TEACHER_CONFIGS, *OTHER_NETWORKS],
        choices=sorted([*TEACHER_CONFIGS, *OTHER_NETWORKS]),
    )
    parser.add_argument("--size", type=int, default=96, help="edge of the cubic patch (default 96)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument(
        "--default-repeats", type=int, default=2, help="timed runs for the slow 'default' configuration (default 2)"
    )
    parser.add_argument("--output", default="docs/networks.md", help="markdown report (default docs/networks.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write the report; returns the exit status."""
    args = parse_args(argv)
    if args.size % 16 or args.repeats < 1 or args.default_repeats < 1:
        print("--size must be divisible by 16 and the repeats positive", file=sys.stderr)
        return 2
    rows = []
    for config in args.configs:
        repeats = args.default_repeats if config == "default" else args.repeats
        print(f"measuring {config} ({repeats} runs) ...", file=sys.stderr, flush=True)
        rows.append(measure_in_fresh_process(config, args.size, repeats))
    command = shlex.join(["python", "scripts/benchmark_networks.py", *(sys.argv[1:] if argv is None else argv)])
    report = render_markdown(rows, args.size, command)
    print(report)
    with atomic_path(args.output) as tmp:
        tmp.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
