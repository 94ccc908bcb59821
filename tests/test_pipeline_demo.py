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
    "--healthy-share",
    "0",  # five tumour cases for five folds
    "--teacher-epochs",
    "1",
    "--student-epochs",
    "1",
    "--val-interval",
    "1",
    "--real-scans-dir",
    "",  # the main job alone: the same run whether or not ../shared/real_dev is there
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


def test_healthy_phantoms_join_the_main_job_but_leave_five_folds_of_tumours(tmp_path: Path) -> None:
    from kd_components.data.phantoms import is_healthy_case
    from kd_lab.demo import DemoSettings, demo_stages

    settings = DemoSettings(output_dir=tmp_path)
    phantoms = next(s for s in demo_stages(settings) if s.name == "phantoms").command
    assert phantoms[phantoms.index("--healthy-share") + 1] == str(settings.healthy_share) and settings.healthy_share > 0
    labelled = settings.num_cases - settings.unlabelled
    assert 0 < sum(is_healthy_case(settings.seed, i, settings.healthy_share) for i in range(labelled)) < labelled - 5
    assert is_healthy_case(0, 3, 0.06)  # so seven cases with two unlabelled leave four tumours for five folds
    with pytest.raises(ValueError, match="labelled cases with tumour"):
        DemoSettings(num_cases=7, unlabelled=2, healthy_share=0.06)
    DemoSettings(num_cases=7, unlabelled=2, healthy_share=0.0)
    with pytest.raises(ValueError, match="healthy_share"):
        DemoSettings(healthy_share=1.0)
