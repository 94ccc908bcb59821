"""``brats-kd``: one command family. Each verb describes itself, and the verbs that had no test of their own as
scripts (choose-postprocessing, false-positives) are run end to end on small phantoms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from kd_components.cli import build_parser
from kd_components.commands import COMMANDS
from kd_components.constants import SEG_SUFFIX
from kd_components.data.brats import case_file_name
from kd_components.networks import build_student
from tests.conftest import REPO_ROOT, brats_kd, write_phantom_datalist

DEMO_OVERLAY = REPO_ROOT / "bundles" / "distilled_student" / "configs" / "demo.json"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_verb_prints_its_own_description(command, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command.name, "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse rewraps nothing (raw) but joins for the check
    own = " ".join(_first_line(command.load().__doc__).split())
    assert own in out
    for other in COMMANDS:  # the description of no other verb (segment --help printed evaluate's)
        if other.name != command.name:
            assert " ".join(_first_line(other.load().__doc__).split()) not in out


def test_the_installed_command_lists_every_verb() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kd_components.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in COMMANDS:
        assert command.name in result.stdout


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Five labelled phantoms and a datalist with two folds (fold 0: the validation cases)."""
    return write_phantom_datalist(tmp_path_factory.mktemp("cli"), 5, 0, 2, 0)


def _validation_ids(datalist: Path) -> list[str]:
    return [e["case_id"] for e in json.loads(datalist.read_text())["training"] if e["fold"] == 0]


def test_choose_postprocessing_removes_a_false_positive_speck(labelled: tuple[Path, Path], tmp_path: Path) -> None:
    """Predictions = the references plus a one-voxel ET speck far from the tumour: the chosen minimum component
    size removes it, and the JSON says which cases it was chosen on (the validation fold's only)."""
    data, datalist = labelled
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    validation = _validation_ids(datalist)
    for case_id in validation:
        seg = nib.load(data / case_id / case_file_name(case_id, SEG_SUFFIX))
        labels = np.asarray(seg.dataobj).astype(np.uint8)
        labels[1, 1, 1] = 3  # a corner voxel: outside the brain, never tumour
        nib.save(nib.Nifti1Image(labels, seg.affine), predictions / f"{case_id}.nii.gz")
    output = tmp_path / "chosen.json"
    args = ["--dataset-dir", str(data), "--datalist", str(datalist), "--predictions", f"net={predictions}"]
    assert brats_kd("choose-postprocessing", *args, "--output", str(output)) == 0
    report = json.loads(output.read_text())["net"]
    assert report["cases"] == validation
    assert max(report["chosen"]["postprocess_min_mm3"].values()) > 0
    for region in ("TC", "WT", "ET"):  # one speck per case: a false-positive lesion in every region, then none
        assert report["before"][region]["fp"] == len(validation) and report["after"][region]["fp"] == 0


def test_choose_postprocessing_without_predictions_says_so(
    labelled: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, datalist = labelled
    (tmp_path / "empty").mkdir()
    args = ["--dataset-dir", str(data), "--datalist", str(datalist), "--predictions", f"net={tmp_path / 'empty'}"]
    assert brats_kd("choose-postprocessing", *args, "--output", str(tmp_path / "x.json")) == 1
    err = capsys.readouterr().err
    assert "no validation case could be scored for net" in err and "no case folder or no prediction" in err
    assert not (tmp_path / "x.json").exists()


def test_false_positives_writes_a_report_and_names_a_network_it_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    torch.save(build_student().state_dict(), weights)
    out = tmp_path / "fp"
    args = ["--ckpt", f"student={weights}", "--overlay", f"student={DEMO_OVERLAY}", "--pixdim", "2", "2", "2"]
    args += ["--ckpt", f"missing={tmp_path / 'absent.pt'}", "--cases", "1", "--output-dir", str(out)]
    assert brats_kd("false-positives", *args) == 1  # one network could not be loaded
    err = capsys.readouterr().err
    assert "missing:" in err and "absent.pt" in err
    page = (out / "false_positives.md").read_text()
    assert "| student |" in page and "brats-kd false-positives --ckpt" in page
    rows = json.loads((out / "results.json").read_text())
    assert set(rows) == {"student"} and len(rows["student"]["healthy_wt_ml"]) == 1


def test_false_positives_rejects_a_bundle_for_no_network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--ckpt", f"a={tmp_path / 'a.pt'}", "--bundle", f"b={REPO_ROOT / 'bundles' / 'hybrid_teacher'}"]
    assert brats_kd("false-positives", *args, "--output-dir", str(tmp_path / "fp")) == 2
    assert "name networks without --ckpt: b" in capsys.readouterr().err
    assert not (tmp_path / "fp").exists()


def test_export_names_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = REPO_ROOT / "bundles" / "distilled_student"
    args = ["--bundle", str(bundle), "--ckpt", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "m.onnx")]
    assert brats_kd("export", *args) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_evaluate_with_cases_outside_the_datalist_split_says_so(
    labelled: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, datalist = labelled
    (tmp_path / "seg").mkdir()
    args = [str(tmp_path / "seg"), str(data), "--datalist", str(datalist), "--fold", "0", "--no-progress"]
    assert brats_kd("evaluate", *args, "--cases", "BraTS-GLI-99999-000") == 2
    assert "none of --cases is in the validation split (fold 0)" in capsys.readouterr().err
    # one case of the split with its reference as prediction, one case outside it: that one was dropped without a
    # word (exit 0); now it is named and the exit status is 1
    inside = _validation_ids(datalist)[0]
    seg = nib.load(data / inside / case_file_name(inside, SEG_SUFFIX))
    labels = np.asarray(seg.dataobj).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, seg.affine), tmp_path / "seg" / f"{inside}.nii.gz")
    outside = next(e["case_id"] for e in json.loads(datalist.read_text())["training"] if e["fold"] != 0)
    assert brats_kd("evaluate", *args, "--cases", inside, outside) == 1
    out, err = capsys.readouterr()
    assert "BraTS metrics of 1 case(s)" in out
    assert f"1 of --cases not in the validation split (fold 0) of {datalist}, not scored: {outside}" in err
