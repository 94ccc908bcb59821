"""Batch inference faults: outputs named by case id, settings and output folder checked before any case,
non-finite weights and outputs never turned into empty label maps, a summary that survives an interruption."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from kd_components.checkpoints import (
    CheckedCheckpointLoader,
    CheckpointLoadError,
    TeacherCheckpointError,
    load_frozen_teacher,
)
from kd_components.constants import MODALITIES
from kd_components.handlers import InferenceSummary
from kd_components.io import OutputDirError, check_output_dir, save_nifti_atomic
from tests.conftest import REPO_ROOT, TEACHER_BUNDLE_TINY, build_tiny_teacher, bundle_command

CONFIGS = REPO_ROOT / "bundles" / "hybrid_teacher" / "configs"
SHAPE = (24, 20, 16)
AFFINE = np.diag([-2.0, -2.0, 2.0, 1.0])


def _write_plain_case(folder: Path, seed: int) -> list[str]:
    """A case whose files carry no case id: ``folder/{t1c,t1n,t2w,t2f}.nii.gz``; returns the four paths."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(SHAPE, np.float32)
    brain[4:20, 4:16, 3:13] = 1
    paths = []
    for modality in MODALITIES:
        path = folder / f"{modality}.nii.gz"
        save_nifti_atomic((brain * rng.uniform(50, 150, SHAPE)).astype(np.float32), AFFINE, path)
        paths.append(str(path))
    return paths


def _tiny_teacher_bundle(root: Path) -> Path:
    bundle = root / "bundle"
    (bundle / "models").mkdir(parents=True)
    torch.save(build_tiny_teacher().state_dict(), bundle / "models" / "model.pt")
    return bundle


def _run_inference(values: dict[str, object]) -> subprocess.CompletedProcess[str]:
    # the cases here are small boxes of noise, no brains: the plausibility checks (tests/test_plausibility.py) are off
    values = {"plausibility_check": False, **values}
    cmd = bundle_command([CONFIGS / "inference.json"], {**TEACHER_BUNDLE_TINY, **values}, run_id=None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


def test_label_maps_volumes_and_summary_are_named_by_case_id_not_by_file_name(tmp_path: Path) -> None:
    """Two cases whose files have the same names (``patient1/t1c.nii.gz``, ``patient2/t1c.nii.gz``) wrote one
    ``t1c.nii.gz`` over the other, with two volume rows called ``t1c``."""
    data = tmp_path / "data"
    entries = [
        {"case_id": "patient1", "image": _write_plain_case(data / "patient1", seed=1)},
        {"image": _write_plain_case(data / "patient2", seed=2)},  # no case_id: its folder names it
    ]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": entries}))
    out = tmp_path / "out"
    values = {"bundle_root": str(_tiny_teacher_bundle(tmp_path)), "dataset_dir": str(data), "output_dir": str(out)}
    result = _run_inference({**values, "data_list_file_path": str(datalist)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["patient1.nii.gz", "patient2.nii.gz"]
    for case in ("patient1", "patient2"):
        saved = nib.load(out / f"{case}.nii.gz")
        assert saved.shape == SHAPE and np.allclose(saved.affine, AFFINE)
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["written"] == ["patient1", "patient2"] and summary["complete"] is True
    volumes = json.loads((out / "volumes.json").read_text())
    assert [row["case_id"] for row in volumes] == ["patient1", "patient2"]


def test_inference_settings_and_output_folder_are_checked_before_any_case(tmp_path: Path) -> None:
    values = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "nowhere"), "output_dir": str(tmp_path / "o")}
    wrong = {"sw_batch_size": 0, "sw_overlap": 1.0, "num_workers": -1, "device": "cuda:7"}
    result = _run_inference({**values, **wrong})
    assert result.returncode != 0
    for line in (
        "--sw_batch_size 0 (int): expected a positive integer",
        "--sw_overlap 1.0 (float): expected a number in [0, 1)",
        "--num_workers -1 (int): expected a non-negative integer",
        "--device 'cuda:7' (str): expected an available device",
    ):
        assert line in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "o").exists()  # stopped before anything was written or read

    blocker = tmp_path / "a_file"
    blocker.write_text("in the way\n")
    result = _run_inference({**values, "output_dir": str(blocker)})
    assert result.returncode != 0
    assert f"output_dir {blocker} is a file, not a folder" in result.stderr
    assert "no BraTS case folders" not in result.stderr  # the folder was checked before the cases were read


def test_output_folder_check_names_each_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"  # created
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        check_output_dir(blocker)
    with pytest.raises(OutputDirError, match="cannot create output_dir"):
        check_output_dir(blocker / "under")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:  # a read-only folder (root ignores file modes, so the refusal is simulated)
        patch.setattr("kd_components.io.tempfile.NamedTemporaryFile", refuse)
        with pytest.raises(OutputDirError, match="is not writable: Permission denied"):
            check_output_dir(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr("kd_components.io.shutil.disk_usage", lambda p: type("U", (), {"free": 10 * 2**20})())
        with pytest.raises(OutputDirError, match=r"only 10 MB free under output_dir .*at least 100 MB"):
            check_output_dir(tmp_path)


def _nan_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = network.state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    return state


def test_checkpoints_with_non_finite_weights_are_refused(tmp_path: Path) -> None:
    """A checkpoint with NaN weights loaded ('Restored all variables') and gave 0 mL for every case."""
    network = build_tiny_teacher()
    path = tmp_path / "model.pt"
    torch.save(_nan_state(network), path)
    engine = Engine(lambda e, b: None)
    CheckedCheckpointLoader(load_path=str(path), load_dict={"model": network}).attach(engine)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(CheckpointLoadError, match=r"tensor\(s\) with NaN or Inf values") as info:
        engine.run([0])
    assert str(path) in str(info.value)
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in before.items())  # nothing was loaded
    with pytest.raises(TeacherCheckpointError, match=f"teacher checkpoint {path} holds non-finite weights"):
        load_frozen_teacher(build_tiny_teacher(), path)


def test_a_non_finite_network_output_is_not_saved_and_the_case_is_reported(tmp_path: Path) -> None:
    """NaN logits became an empty label map and 0 mL with exit status 0."""
    parser = ConfigParser()
    parser.read_config(CONFIGS / "inference.json")
    parser.update({"output_dir": str(tmp_path), "bundle_root": str(tmp_path)})
    postprocessing = parser.get_parsed_content("postprocessing")
    meta = {"affine": torch.as_tensor(AFFINE), "filename_or_obj": "x/t1c.nii.gz", "case_id": "bad_case"}
    logits = MetaTensor(torch.full((3, *SHAPE), float("nan")), meta=meta)
    out = postprocessing({"pred": logits, "image": MetaTensor(torch.zeros(4, *SHAPE), meta=dict(meta))})
    assert "pred" not in out and "non-finite value(s)" in out["problem"]
    assert not list(tmp_path.glob("*.nii.gz"))

    summary = InferenceSummary(tmp_path)
    engine = Engine(lambda e, batch: [batch])
    summary.attach(engine)
    engine.run([out, {"image": MetaTensor(torch.zeros(1), meta={"case_id": "good_case"})}])
    written = json.loads((tmp_path / "inference_summary.json").read_text())
    assert written["written"] == ["good_case"] and written["skipped"][0]["case_id"] == "bad_case"
    with pytest.raises(SystemExit, match="skipped 1 invalid case"):
        summary.exit_if_skipped()


def test_an_interrupted_run_leaves_the_summary_of_the_cases_it_finished(tmp_path: Path) -> None:
    summary = InferenceSummary(tmp_path)

    def step(engine: Engine, batch: dict) -> list[dict]:
        if engine.state.iteration == 3:
            raise KeyboardInterrupt
        return [batch]

    engine = Engine(step)
    summary.attach(engine)
    cases = [{"image": MetaTensor(torch.zeros(1), meta={"case_id": f"case{i}"})} for i in range(4)]
    with pytest.raises(KeyboardInterrupt):
        engine.run(cases)
    written = json.loads((tmp_path / "inference_summary.json").read_text())
    assert written == {**written, "complete": False, "written": ["case0", "case1"], "num_written": 2}
