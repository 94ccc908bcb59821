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


def test_the_false_positive_probe_is_a_stage_of_the_main_job_unless_switched_off(tmp_path: Path) -> None:
    from kd_lab.demo import TEACHER_BUNDLE, DemoSettings, demo_stages

    stages = {stage.name: stage for stage in demo_stages(DemoSettings(output_dir=tmp_path))}
    probe = stages["false_positives"]
    command = probe.command
    # the demo teacher is built from demo.json: without that overlay its weights do not fit inference.json's network
    assert f"teacher={TEACHER_BUNDLE / 'configs' / 'demo.json'}" in command
    assert command[command.index("--cases") + 1] == "4"
    assert set(probe.depends_on) == {"teacher_train", "student_train"}
    assert "false_positives" not in {s.name for s in demo_stages(DemoSettings(output_dir=tmp_path, probe_cases=0))}
    with pytest.raises(ValueError, match="probe_cases"):
        DemoSettings(probe_cases=-1)
