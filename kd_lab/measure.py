"""Measuring networks on this machine: building them by name, counting FLOPs, timing, peak memory in a fresh
process, describing the CPU.

Shared by every benchmark of the lab (``scripts/benchmark_*.py``): the one home of these helpers.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from kd_components.constants import MODALITIES
from kd_components.networks import build_teacher
from kd_components.networks.candidates import MODEL_ZOO_SEGRESNET, STUDENT_CANDIDATES

__all__ = [
    "GIB",
    "OTHER_NETWORKS",
    "build_network",
    "count_flops",
    "cpu_description",
    "peak_rss_gib",
    "run_in_fresh_process",
    "time_runs",
]

#: Bytes in a GiB, the unit of every memory column.
GIB = 1024**3
_T = TypeVar("_T")
#: Networks besides the teacher configurations: the student candidates (the default student first) and MONAI's
#: model-zoo BraTS SegResNet.
OTHER_NETWORKS: tuple[str, ...] = (*STUDENT_CANDIDATES, MODEL_ZOO_SEGRESNET.name)


def build_network(name: str, size: int) -> torch.nn.Module:
    """A teacher configuration (trained on ``size``^3 patches), a student candidate (``student`` is the default
    student), or ``segresnet16``, the model-zoo SegResNet (16 filters, blocks 1-2-2-4, group norm)."""
    if name in STUDENT_CANDIDATES:
        return STUDENT_CANDIDATES[name].build()
    if name == MODEL_ZOO_SEGRESNET.name:
        return MODEL_ZOO_SEGRESNET.build()
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


def time_runs(step: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and minimum wall-clock seconds of ``step()`` over ``repeats`` runs, after one warm-up run."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, in GiB (``getrusage``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def run_in_fresh_process(function: Callable[..., _T], *args: object) -> _T:
    """``function(*args)`` in a new (spawned) process, so that its peak memory (:func:`peak_rss_gib` inside it) and
    its allocator and thread state are its own; its result (picklable) or its exception comes back."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()
