"""``brats-kd segment`` end to end: one case stage by stage, a folder, the start-up, and the agreement of its label
maps with the path before the fast reading and inversion (``scripts/benchmark_inference.py`` -> the end-to-end
sections of ``docs/inference.md``).

- **One case** (:func:`case_latency`): in a fresh process, a :class:`~kd_components.segment.Segmenter` built once
  segments and writes one BraTS-size case ``repeats`` times after a warm-up; the median of each stage (read and
  preprocess, network, post-processing, write) and of the whole: the latency of a case in a process that is
  already running (``--watch``, the Deploy app's operator kept warm), without the start-up.
- **The path before** (:func:`use_reference_path`): the same segmenter with MONAI's ``NibabelReader`` (Python's
  gzip, one file after another), ``Spacingd`` in float64, and ``Invertd`` + ``AsDiscreted`` over the whole input
  grid: what ``brats-kd segment`` ran before :mod:`kd_components.niftiio` and :mod:`kd_components.invert`.
  Timed in the same run, and the reference of the agreement.
- **A folder** (:func:`folder_run`): the command a user types, ``brats-kd segment DIR -o OUT``, on ``copies``
  copies of the case (new case ids): the wall time with Python's start-up, the imports and the engine's load,
  and the sum of the per-case seconds it records (the cases' own stages: the wall time is lower where reading,
  network and writing of neighbouring cases overlap).
- **Start-up** (:func:`startup`): the command on one case, its wall time minus the seconds it records for the
  case.
- **Agreement** (:func:`path_agreement`): Dice per region between the label maps of this path and of the path
  before, per case.
"""

from __future__ import annotations

import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd_components.constants import MODALITIES
from kd_lab.measure import GIB

__all__ = [
    "case_latency",
    "copy_case",
    "folder_run",
    "path_agreement",
    "segment_command",
    "startup",
    "use_reference_path",
]

#: The stages of one case, in order (``Segmentation.seconds`` plus the write; *check*: the values and plausibility
#: checks on the preprocessed case).
STAGES = ("read", "check", "network", "postprocess", "write")


def use_reference_path(segmenter: Any) -> None:
    """Turn ``segmenter`` (a :class:`~kd_components.segment.Segmenter`) into the path before the fast reading and
    inversion: ``NibabelReader``, ``Spacingd`` in float64, ``Invertd`` + ``AsDiscreted`` (see the module docstring).
    """
    import torch
    from monai.data import NibabelReader
    from monai.transforms import AsDiscreted, Compose, Invertd, LoadImaged, Spacingd

    from kd_components.invert import InvertThresholdd

    for transform in segmenter.preprocessing.transforms:
        if isinstance(transform, LoadImaged):
            transform._loader.readers = []
            transform._loader.register(NibabelReader())
        if isinstance(transform, Spacingd):
            transform.dtype = (torch.float64,) * len(transform.keys)  # Spacingd's default
    post = []
    for transform in segmenter.postprocessing.transforms:
        if isinstance(transform, InvertThresholdd):
            post += [
                Invertd(
                    "pred",
                    transform=segmenter.preprocessing,
                    orig_keys="image",
                    nearest_interp=False,
                    to_tensor=True,
                    allow_missing_keys=True,
                ),
                AsDiscreted("pred", threshold=transform.threshold, allow_missing_keys=True),
            ]
        else:
            post.append(transform)
    segmenter.postprocessing = Compose(post)


def case_latency(
    ckpt: str, case_dir: str, repeats: int, reference: bool = False, precision: str = "fp32"
) -> dict[str, Any]:
    """One case segmented and written ``repeats`` times after a warm-up by one segmenter (the engine of
    ``--engine auto`` at ``precision``): the median seconds per stage and in all, and the runs' totals.
    ``reference``: the path before (:func:`use_reference_path`). Run it in a fresh process
    (``run_in_fresh_process``)."""
    import tempfile

    from kd_components.data.brats import case_from_directory
    from kd_components.segment import Segmenter

    segmenter = Segmenter(ckpt=ckpt, log=lambda line: None, precision=precision)
    if reference:
        use_reference_path(segmenter)
    case = case_from_directory(Path(case_dir))
    out = Path(tempfile.mkdtemp(prefix="brats-kd-latency-"))
    runs = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        segmentation = segmenter.segment(case)
        written = time.perf_counter()
        segmenter.write(segmentation, out)
        runs.append(
            {**segmentation.seconds, "write": time.perf_counter() - written, "total": time.perf_counter() - start}
        )
    shutil.rmtree(out, ignore_errors=True)
    runs = runs[1:]
    return {
        "engine": f"{segmenter.engine_name} {segmenter.precision}",
        "grid": [float(s) for s in segmenter.config.get_parsed_content("pixdim")],
        **{f"{stage}_s": statistics.median(r[stage] for r in runs) for stage in (*STAGES, "total")},
        "totals": [r["total"] for r in runs],
    }


def copy_case(case_dir: Path, folder: Path, copies: int) -> Path:
    """``copies`` copies of a case folder in ``folder`` under new case ids (``BraTS-SYN-9xxxx-000``); ``folder``."""
    source = case_dir.name
    for i in range(copies):
        cid = f"BraTS-SYN-{90000 + i:05d}-000"
        target = folder / cid
        if not target.exists():
            target.mkdir(parents=True)
            for modality in MODALITIES:
                shutil.copy(case_dir / f"{source}-{modality}.nii.gz", target / f"{cid}-{modality}.nii.gz")
    return folder


def segment_command(data: Path, out: Path, options: Sequence[str] = ()) -> dict[str, Any]:
    """``brats-kd segment data -o out OPTIONS`` in a new process (``out`` emptied first): its wall time, the
    per-case seconds of its volume table and its peak resident memory; RuntimeError with its output's end if it
    fails."""
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "kd_components.cli", "segment", str(data), "-o", str(out), "--no-progress"]
    command += list(options)
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a long log cannot block the process
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise RuntimeError(f"brats-kd segment failed ({' '.join(command)}):\n{log.read()[-2000:]}")
    seconds = [float(row["seconds"]) for row in csv.DictReader((out / "volumes.csv").open())]
    return {"wall_s": wall, "case_seconds": seconds, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB}


def folder_run(
    ckpt: Path, case_dir: Path, copies: int, work: Path, repeats: int, options: Sequence[str] = ()
) -> dict[str, Any]:
    """``brats-kd segment`` (with ``options``) on a folder of ``copies`` copies of the case, ``repeats`` times:
    median wall time (start-up included), median sum of the per-case seconds, and every run's wall time."""
    data = copy_case(case_dir, work / f"folder{copies}", copies)
    runs = [segment_command(data, work / "out-folder", ["--ckpt", str(ckpt), *options]) for _ in range(repeats)]
    return {
        "cases": copies,
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "case_sum_s": statistics.median(sum(r["case_seconds"]) for r in runs),
        "walls": [r["wall_s"] for r in runs],
    }


def startup(ckpt: Path, case_dir: Path, work: Path, repeats: int, options: Sequence[str] = ()) -> dict[str, Any]:
    """``brats-kd segment`` (with ``options``) on one case, ``repeats`` times: median wall time, median seconds it
    records for the case, and the median of their difference (the start-up: Python, the imports, the engine's
    load)."""
    data = copy_case(case_dir, work / "folder1", 1)
    runs = [segment_command(data, work / "out-one", ["--ckpt", str(ckpt), *options]) for _ in range(repeats)]
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "case_s": statistics.median(r["case_seconds"][0] for r in runs),
        "startup_s": statistics.median(r["wall_s"] - r["case_seconds"][0] for r in runs),
    }


def path_agreement(ckpt: str, case_dirs: Sequence[str], precision: str = "fp32") -> list[dict[str, Any]]:
    """Per case: Dice per region [TC, WT, ET] between this path's label map (the network at ``precision``) and the
    path before's (float32), 1.0 where both are empty, and their whole-tumour volumes."""
    from kd_components.data.brats import case_from_directory
    from kd_components.handlers.metrics import label_map_dice
    from kd_components.segment import Segmenter

    # the plausibility checks are the same on both paths: a case they refuse would only leave the comparison
    new = Segmenter(ckpt=ckpt, log=lambda line: None, plausibility=False, precision=precision)
    old = Segmenter(ckpt=ckpt, log=lambda line: None, plausibility=False)
    use_reference_path(old)
    rows = []
    for folder in case_dirs:
        case = case_from_directory(Path(folder))
        a, b = new.segment(case), old.segment(case)
        rows.append(
            {
                "case_id": case.case_id,
                "dice": [float(d) for d in label_map_dice(a.labels, b.labels)],
                "differing_voxels": int(np.count_nonzero(a.labels != b.labels)),
                "wt_ml": [a.volumes["WT_ml"], b.volumes["WT_ml"]],
            }
        )
    return rows
