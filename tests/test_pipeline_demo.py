"""The README's main job end to end, with a tiny budget (slow: about 5 minutes on 2 CPU cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_demo.py"
TINY = [
    "--num-cases",
    "7",
    "--unlabelled",
    "2",
    "--teacher-epochs",
    "1",
    "--student-epochs",
    "1",
    "--val-interval",
    "1",
]


def _run(output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--output-dir", str(output), *TINY, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_main_job_runs_end_to_end_and_a_rerun_reuses_it(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = _run(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = out / "report.md"
    assert f"Report: {report}" in first.stdout
    text = report.read_text()
    assert "| teacher | 4,356,519 |" in text and "| student | 1,177,170 |" in text
    for png in ("training_curves.png", "predictions.png", "data/preview.png"):
        assert (out / png).stat().st_size > 10_000, png
    unlabelled = sorted((out / "distilled_student" / "predictions" / "unlabelled").glob("BraTS-*.nii.gz"))
    assert len(unlabelled) == 2
    label_map = nib.load(unlabelled[0])
    assert set(np.unique(np.asarray(label_map.dataobj))) <= {0, 1, 2, 3}
    assert (out / "distilled_student" / "predictions" / "unlabelled" / "volumes.csv").exists()

    second = _run(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("up to date, reusing") == first.stdout.count("] done in")
