"""The benchmark's cost columns: parameters, FLOPs and sliding-window inference time and memory of each network."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from kd_components.constants import MODALITIES
from kd_components.io import save_json_atomic
from kd_lab.benchmark.plan import BenchmarkSettings
from kd_lab.measure import build_network, count_flops, cpu_description, peak_rss_gib, run_in_fresh_process

__all__ = ["measure_costs", "measure_inference", "network_sizes"]


def network_sizes(networks: Sequence[str], roi: int) -> dict[str, dict[str, float]]:
    """Parameters and forward GFLOPs per ``roi``^3 patch of each network, counted on the meta device
    (no weights are allocated, nothing is timed): the size columns of the results table."""
    from kd_components.tracking import count_parameters

    sizes = {}
    for name in dict.fromkeys(networks):
        with torch.device("meta"):
            params = count_parameters(build_network(name, roi))
        sizes[name] = {"params": params, "gflops_patch": count_flops(name, roi)[0] / 1e9}
    return sizes


def measure_inference(network: str, shape: Sequence[int], roi: int, overlap: float) -> dict[str, Any]:
    """Parameters, FLOPs per ``roi``^3 patch, and sliding-window inference time and peak memory on one
    random ``(1, 4, *shape)`` volume with MONAI's ``SlidingWindowInferer`` (batch 1 per window, eval
    mode, ``torch.no_grad()``). Meant to run in a fresh process (:func:`~kd_lab.measure.run_in_fresh_process`)."""
    from monai.inferers import SlidingWindowInferer

    baseline = peak_rss_gib()
    size = network_sizes([network], roi)[network]
    torch.manual_seed(0)
    model = build_network(network, roi).eval()
    volume = torch.randn(1, len(MODALITIES), *shape)
    inferer = SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=1, overlap=overlap, mode="gaussian")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with torch.no_grad():
        output = inferer(volume, model)
    seconds = time.perf_counter() - start
    return {
        "network": network,
        **size,
        "inference_s": seconds,
        "peak_rss_gib": peak_rss_gib(),
        "baseline_rss_gib": baseline,
        "output_shape": list(output.shape),
        "load": (load, os.getloadavg()[0]),
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),
    }


def measure_costs(settings: BenchmarkSettings) -> list[dict[str, Any]]:
    """Time every network of ``settings.timing_networks`` (each in a fresh process) and save the list as
    ``OUTPUT_DIR/inference_cost.json``, which later ``--no-timing`` runs in that folder show."""
    costs = []
    for network in settings.timing_networks:
        print(f"[timing] sliding-window inference of {network} on 4x{'x'.join(map(str, settings.timing_shape))}")
        costs.append(
            run_in_fresh_process(
                measure_inference, network, settings.timing_shape, settings.timing_roi, settings.timing_overlap
            )
        )
        print(f"[timing] {network}: {costs[-1]['inference_s']:.1f} s")
    save_json_atomic(costs, settings.output_dir / "inference_cost.json")
    return costs
