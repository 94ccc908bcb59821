"""Timing the MONAI Deploy application (``deploy/app.py``) beside ``brats-kd segment``, each engine in one run, on a
BraTS-size case and a folder of copies of it; the tables go into ``docs/deploy.md`` between two markers.

What is measured per application run (a new process each time):

- *command*: the wall time of ``python deploy/app.py -i INPUT -o OUT -m model.ts``: Python's start-up, the imports
  (Holoscan, MONAI, PyTorch, OpenVINO), the graph, writing the outputs;
- *set-up*: making the graph (the app's ``compose``: checking the cases and the model file, loading the model,
  compiling the OpenVINO engine);
- *segmentation*: running the graph once made: reading each case, preprocessing, the sliding window, the
  postprocessing, the label map and the report; *per case* is that over the number of cases.

One case per process (as a MAP runs one study) and a folder of ``cases`` copies in one process (the model loaded
once, the next case read while the last one's outputs are written). ``brats-kd segment`` alike: one case (the
seconds it records for it in a new process) and the folder (its wall time less its start-up, over the cases).
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from kd_components.handlers.metrics import label_map_dice
from kd_components.io import replace_between

__all__ = [
    "APP",
    "APP_CONFIGS",
    "SECTION_END",
    "SECTION_START",
    "export_model",
    "render_section",
    "replace_section",
    "run_app",
    "summarise",
]

APP = Path(__file__).resolve().parents[1] / "deploy" / "app.py"
#: The application's engine settings timed: (label, environment).
APP_CONFIGS: tuple[tuple[str, dict[str, str]], ...] = (
    ("torchscript (default)", {"BRATS_KD_ENGINE": "torchscript"}),
    ("openvino fp32", {"BRATS_KD_ENGINE": "openvino", "BRATS_KD_PRECISION": "fp32"}),
    ("openvino bf16", {"BRATS_KD_ENGINE": "openvino", "BRATS_KD_PRECISION": "bf16"}),
)
#: Markers of the generated part of ``docs/deploy.md``.
SECTION_START = "<!-- deploy-timing:start (scripts/benchmark_deploy.py writes this part) -->"
SECTION_END = "<!-- deploy-timing:end -->"
_DONE = re.compile(
    r"done: set up in (?P<setup>[\d.]+) s, segmented in (?P<segment>[\d.]+) s \((?P<cases>\d+) case\(s\)"
)


def export_model(ckpt: Path, models_dir: Path, bundle: Path) -> Path:
    """``models_dir/model.ts`` from ``ckpt`` with ``brats-kd export --format torchscript`` (MONAI's ``ckpt_export``
    with the bundle's metadata.json and inference.json embedded, and the ``training_geometry.json`` beside
    ``ckpt``), as docs/deploy.md says."""
    models_dir.mkdir(parents=True, exist_ok=True)
    model = (models_dir / "model.ts").resolve()
    command = [sys.executable, "-m", "kd_components.cli", "export", "--format", "torchscript", "--bundle", str(bundle)]
    command += ["--ckpt", str(ckpt.resolve()), "--output", str(model)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return model


def run_app(source: Path, output: Path, model: Path, env: Mapping[str, str], python: str = sys.executable) -> dict:
    """One run of the application in a new process on ``source`` (a case folder or a folder of them):
    ``command_s``, ``setup_s``, ``segment_s``, ``cases``, ``per_case_s`` and the first case's label map
    ``(H, W, D)``; RuntimeError with the end of its output if it fails."""
    if output.exists():
        shutil.rmtree(output)
    command = [python, str(APP), "-i", str(source), "-o", str(output), "-m", str(model)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=dict(env))
    wall = time.perf_counter() - start
    done = _DONE.search(result.stderr)
    if result.returncode != 0 or done is None:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    cases = int(done["cases"])
    first = sorted(output.glob("*.nii.gz"))[0]
    return {
        "command_s": wall,
        "setup_s": float(done["setup"]),
        "segment_s": float(done["segment"]),
        "cases": cases,
        "per_case_s": float(done["segment"]) / max(cases, 1),
        "labels": np.asarray(nib.load(first).dataobj),
    }


def summarise(runs: Sequence[dict[str, Any]], reference: np.ndarray | None) -> dict[str, Any]:
    """Medians of the timed ``runs`` of one setting (after its warm-up run) and the Dice ``[TC, WT, ET]`` of its
    label map against ``reference``'s."""
    keys = ("command_s", "setup_s", "segment_s", "per_case_s")
    row: dict[str, Any] = {key: statistics.median(r[key] for r in runs) for key in keys}
    row["runs"] = len(runs)
    row["dice_vs_reference"] = label_map_dice(runs[0]["labels"], reference) if reference is not None else None
    return row


def render_section(results: dict[str, Any]) -> str:
    """The generated part of docs/deploy.md: the application's times, ``brats-kd segment``'s on the same case and
    folder, and their ratio per case."""
    env = results["environment"]
    cases = results["folder_cases"]
    lines = [
        SECTION_START,
        f"Generated by `{env['command']}` on {env['date']}. CPU: {env['cpu']}; load average (1 min) "
        f"{results['load'][0][0]:.2f} before, {results['load'][1][0]:.2f} after. One BraTS-size phantom "
        f"({' x '.join(map(str, results['shape']))}, 1 mm), and a folder of {cases} copies of it; weights: "
        f"{env['weights']}. Medians of {results['repeats']} runs per setting after one warm-up run (the warm-up of "
        f"an OpenVINO setting also exports the model to ONNX once: {results['first_export_s']:.1f} s in that run).",
        "",
        f"| application engine | command, one case (s) | set-up (s) | one case (s) | folder of {cases}: per case (s) "
        "| Dice TC / WT / ET vs torchscript |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, row in results["app"].items():
        folder = results["app_folder"][label]
        dice = row["dice_vs_reference"]
        agreement = " / ".join(f"{d:.4f}" for d in dice) if dice is not None and "default" not in label else ""
        lines.append(
            f"| {label} | {row['command_s']:.1f} | {row['setup_s']:.1f} | {row['segment_s']:.2f} | "
            f"{folder['per_case_s']:.2f} | {agreement} |"
        )
    lines += [
        "",
        "`brats-kd segment` on the same case and folder in the same run: *one case*, the seconds it records for the "
        "case in a new process (read, checks, network, postprocess, write); *start-up*, that command's wall time "
        f"less them; *folder of {cases}: per case*, the folder command's wall time less the start-up, over the "
        "cases; *app / segment*, the application's per-case seconds over these (the OpenVINO engine's against the "
        "brain-crop row, TorchScript's against the whole-grid row):",
        "",
        f"| `brats-kd segment` | one case (s) | start-up (s) | folder of {cases}: per case (s) "
        "| app / segment, one case | app / segment, folder |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in results["segment"].items():
        app = results["app"][row["app"]]
        app_folder = results["app_folder"][row["app"]]
        lines.append(
            f"| {label} | {row['case_s']:.2f} | {row['startup_s']:.1f} | {row['folder_per_case_s']:.2f} | "
            f"{app['segment_s'] / row['case_s']:.2f} | {app_folder['per_case_s'] / row['folder_per_case_s']:.2f} |"
        )
    lines.append(SECTION_END)
    return "\n".join(lines)


def replace_section(page: str, section: str) -> str:
    """``page`` with its generated part (between the markers) replaced by ``section``; ValueError without both."""
    return replace_between(page, section, SECTION_START, SECTION_END)
