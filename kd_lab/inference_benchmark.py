"""Inference cost of every network on every engine and precision, end-to-end ``brats-kd segment`` times, and the
agreement of each engine with PyTorch float32 (``scripts/benchmark_inference.py`` -> ``docs/inference.md``).

What is measured, all in one run on this machine:

- **Per patch**: one ``(1, 4, roi, roi, roi)`` patch through the engine, the median of ``repeats`` runs after
  one warm-up run (random weights: time does not depend on them).
- **Whole volume**: MONAI's sliding window (the student bundle's ROI and overlap, batch 1 per window, Gaussian
  blending) over one BraTS-size phantom, with and without the brain crop
  (:func:`~kd_components.segment.crop.brain_window_box`): the median of ``repeats`` runs where one run of the
  whole grid is expected to take at most ``volume_budget_s``, else not run (the table then gives the windows
  times the per-patch time, marked as such).
- **Peak memory**: every (network, engine, precision) runs in a fresh process; its maximum resident set size.
- **End to end**: ``brats-kd segment`` as a user runs it, on a folder of identical BraTS-size cases: the
  seconds per case it records (read four NIfTI, check, preprocess, network, postprocess, write the label map
  and the volumes), median over the cases after the first, and the wall time of the whole command with
  Python's start-up and the engine's load.
- **Agreement**: on held-out labelled phantoms with trained weights, the Dice of each engine/precision against
  the ground truth and against PyTorch float32's label maps, per region.
- **Physical reference**: the FLOP rate this CPU reaches on a large, compute-bound 3D convolution (PyTorch and
  OpenVINO, float32), and each network's FLOPs per patch divided by it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_components.constants import MODALITIES
from kd_lab.measure import peak_rss_gib
from kd_lab.segment_speed import copy_case, segment_command

__all__ = [
    "EngineConfig",
    "TimingVolume",
    "default_configs",
    "end_to_end",
    "engine_agreement",
    "flop_rate",
    "measure_config",
    "prepare_volume",
]


@dataclass(frozen=True)
class EngineConfig:
    """One row: a network (:func:`~kd_lab.measure.build_network` name), an engine, a precision."""

    network: str
    engine: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"


@dataclass(frozen=True)
class TimingVolume:
    """The BraTS-size phantom that the timings run on, preprocessed once (see :func:`prepare_volume`)."""

    case: Any  # kd_components.data.brats.BratsCase: its folder is the end-to-end runs' input
    volume_file: Path  # the preprocessed image (4, H, W, D), torch.save'd
    shape: tuple[int, ...]
    roi: int  # the student bundle's inference ROI (one side)
    overlap: float  # the student bundle's sliding-window overlap
    random_ckpt: Path  # the default student with random weights (seed 0)


def prepare_volume(out: Path) -> TimingVolume:
    """One BraTS-size phantom (``profile="brats"``, seed 7) in ``out/brats_size``, made once, preprocessed by the
    student bundle's inference preprocessing into ``out/volume.pt``; the bundle's ROI and overlap."""
    from monai.bundle import ConfigParser

    from kd_components.data.brats import discover_cases
    from kd_components.data.phantoms import make_phantom_dataset
    from kd_components.networks import build_student
    from kd_components.segment import Segmenter, default_bundle

    out.mkdir(parents=True, exist_ok=True)
    config = ConfigParser()
    config.read_config(str(default_bundle() / "configs" / "inference.json"))
    data = out / "brats_size"
    if not (data / "preview_done").exists():
        make_phantom_dataset(data, 1, seed=7, profile="brats", workers=1, progress=False)
        (data / "preview_done").write_text("")
    case = discover_cases(data)[0]
    random_ckpt = out / "random_student.pt"
    torch.manual_seed(0)
    torch.save(build_student().state_dict(), random_ckpt)
    image = Segmenter(ckpt=random_ckpt, engine="torch", device="cpu", log=lambda line: None).load(case)
    volume_file = out / "volume.pt"
    torch.save(image.as_tensor().clone(), volume_file)
    return TimingVolume(
        case, volume_file, tuple(image.shape), int(config["patch_size"][0]), float(config["sw_overlap"]), random_ckpt
    )


#: The engine/precision pairs measured for every network.
ENGINE_PRECISIONS: tuple[tuple[str, str], ...] = (
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)


def default_configs(networks: Sequence[str]) -> list[EngineConfig]:
    """Every network with every engine/precision of :data:`ENGINE_PRECISIONS`."""
    return [EngineConfig(n, e, p) for n in networks for e, p in ENGINE_PRECISIONS]


def _median_seconds(step: Any, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flop_rate(repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a large compute-bound 3D convolution (64 -> 64 channels, 3^3 kernel, 48^3 voxels, batch 2) in
    PyTorch and in OpenVINO, float32: what this CPU can reach, the reference for the networks' FLOP rates."""
    import openvino as ov

    conv = torch.nn.Conv3d(64, 64, 3, padding=1).eval()
    x = torch.randn(2, 64, 48, 48, 48)
    flops = 2 * 64 * 64 * 27 * x[:, 0].numel()
    with torch.no_grad():
        torch_s = _median_seconds(lambda: conv(x), repeats)
    model = ov.convert_model(conv, example_input=x)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    array = x.numpy()
    openvino_s = _median_seconds(lambda: request.infer({0: array}), repeats)
    return {"torch_gflops": flops / torch_s / 1e9, "openvino_gflops": flops / openvino_s / 1e9}


def measure_config(
    config: EngineConfig,
    volume_file: str,
    roi: int,
    overlap: float,
    repeats: int,
    cache_dir: str,
    volume_budget_s: float,
) -> dict[str, Any]:
    """Per-patch and whole-volume seconds, windows and peak memory of one :class:`EngineConfig` (run it in a fresh
    process: :func:`~kd_lab.measure.run_in_fresh_process`). ``volume_file`` holds the preprocessed BraTS-size image
    ``(4, H, W, D)`` (``torch.save``)."""
    from monai.inferers import SlidingWindowInferer

    from kd_components.segment.crop import brain_box, window_count
    from kd_components.segment.engines import build_engine
    from kd_lab.measure import build_network

    torch.manual_seed(0)
    network = build_network(config.network, roi).eval()
    # written every time (seeded, so the same network gives the same weights and the export cache, keyed by the
    # file's hash, is reused; a network changed under the same name gets a new file instead of failing to load)
    ckpt = Path(cache_dir) / f"{config.network}.pt"
    torch.save(network.state_dict(), ckpt)
    image = torch.load(volume_file, weights_only=True)
    box = brain_box(image)
    assert box is not None
    patches = [image[(slice(None), *(slice(b.start, b.start + roi) for b in box))][None].contiguous()]
    start = time.perf_counter()
    engine = build_engine(
        config.engine, network, ckpt, (roi,) * 3, config.precision, "cpu", cache_dir, calibration=lambda: patches * 4
    )
    load_s = time.perf_counter() - start
    patch = torch.randn(1, len(MODALITIES), roi, roi, roi)
    per_patch = _median_seconds(lambda: engine(patch), repeats)
    inferer = SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=1, overlap=overlap, mode="gaussian")
    windows = {
        "full": window_count(image.shape[1:], (roi,) * 3, overlap),
        "crop": window_count(tuple(b.stop - b.start for b in box), (roi,) * 3, overlap),
    }
    result: dict[str, Any] = {
        "network": config.network,
        "engine": config.engine,
        "precision": config.precision,
        "load_s": load_s,
        "patch_s": per_patch,
        "windows": windows,
        "threads": torch.get_num_threads(),
    }
    for name, region in (("full", image), ("crop", image[(slice(None), *box)])):
        if per_patch * windows["full"] <= volume_budget_s:
            with torch.no_grad():
                result[f"volume_{name}_s"] = _median_seconds(lambda r=region: inferer(r[None], engine), repeats)
        else:
            result[f"volume_{name}_s"] = None
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def end_to_end(
    case_dir: Path,
    copies: int,
    engine: str,
    precision: str,
    ckpt: Path | None,
    crop: bool = True,
    work_dir: Path | None = None,
    overlap: float | None = None,
) -> dict[str, Any]:
    """``brats-kd segment`` on ``copies`` copies of one case folder (new case ids): the seconds per case it
    records (median over the copies after the first), the command's wall time and its peak memory."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="brats-kd-e2e-"))
    data, out = work / "data", work / f"out-{engine}-{precision}-{'crop' if crop else 'full'}-{overlap}"
    copy_case(case_dir, data, copies)
    options = ["--engine", engine, "--precision", precision] + (["--ckpt", str(ckpt)] if ckpt else [])
    options += ([] if crop else ["--no-crop"]) + ([] if overlap is None else ["--sw-overlap", str(overlap)])
    run = segment_command(data, out, options)
    seconds = run["case_seconds"]
    return {
        "engine": engine,
        "precision": precision,
        "crop": crop,
        "overlap": overlap,
        "case_s": statistics.median(seconds[1:] if len(seconds) > 1 else seconds),
        "first_case_s": seconds[0],
        "command_s": run["wall_s"],
        "cases": len(seconds),
        "peak_rss_gib": run["peak_rss_gib"],
    }


def engine_agreement(
    cases: Sequence[Any], ckpt: Path, configs: Sequence[tuple[str, str, bool, float | None]], cache_dir: Path
) -> dict[str, Any]:
    """Per (engine, precision, crop, overlap; ``None``: the bundle's): mean Dice per region against the ground
    truth over ``cases`` (BraTS cases with a label), and against the label maps of the first config."""
    import nibabel as nib

    from kd_components.handlers.metrics import label_map_dice as dice
    from kd_components.segment import Segmenter

    reference: dict[str, np.ndarray] = {}
    results = {}
    for engine, precision, crop, overlap in configs:
        segmenter = Segmenter(
            ckpt=ckpt,
            engine=engine,
            precision=precision,
            device="cpu",
            crop=crop,
            overrides={"sw_overlap": overlap} if overlap is not None else None,
            cache_dir=cache_dir,
            calibration_cases=cases[:4] if precision == "int8" else (),
            log=lambda line: None,
            plausibility=False,  # the same for every engine: a case it refuses would only leave the comparison
        )
        truth, agree = [], []
        for case in cases:
            labels = segmenter.segment(case).labels
            truth.append(dice(labels, np.asarray(nib.load(case.label).dataobj).astype(np.uint8)))
            if (engine, precision, crop, overlap) == tuple(configs[0]):
                reference[case.case_id] = labels
            agree.append(dice(labels, reference[case.case_id]))
        name = (
            f"{engine} {precision}"
            + ("" if crop else ", no crop")
            + ("" if overlap is None else f", overlap {overlap}")
        )
        results[name] = {
            "dice_truth": np.mean(truth, axis=0).tolist(),
            "mean_dice_truth": float(np.mean(truth)),
            "dice_vs_torch_fp32": np.mean(agree, axis=0).tolist(),
            "min_dice_vs_torch_fp32": float(np.min(agree)),
        }
    return results
