"""The MONAI Deploy application (``deploy/app.py``) run as a user runs it, in an environment with the App SDK
(``pip install -e ".[deploy]"``; ``make deploy-test`` makes one): the student exported with ``ckpt_export``, one
phantom case, the label map against ``brats-kd segment``'s, the report, and input it must refuse.

Marked ``deploy``: the default test run (no SDK) leaves these out; ``.ci/run`` runs them in their own venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from kd_components.constants import case_file_name
from kd_components.data.phantoms import lesion_plan, make_phantom_dataset
from kd_components.geometry import write_training_geometry
from kd_components.handlers.metrics import label_map_dice
from kd_components.handlers.region_volumes import region_volumes_ml
from tests.conftest import PHANTOM_PIXDIM, REPO_ROOT, fit_student_to_case, run_checked

pytestmark = pytest.mark.deploy

APP = REPO_ROOT / "deploy" / "app.py"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One phantom case, the fitted student's ``model.pt`` and its ``models/model.ts`` made with the documented
    ``ckpt_export`` command line."""
    root = tmp_path_factory.mktemp("deploy")
    # a typical glioblastoma (a necrotic core in an enhancing rim, core radius over 12 mm): with a network fitted for
    # a few steps, the small patches of a patchy or small tumour leave too few voxels for a stable per-region Dice
    seed = next(s for s in range(50) if (plan := lesion_plan(0, s))[0] == "necrotic_rim" and plan[3] > 12.0)
    make_phantom_dataset(root / "data", 1, seed=seed, profile="small", workers=1, progress=False)
    (case,) = sorted(p for p in (root / "data").iterdir() if p.is_dir())
    torch.save(fit_student_to_case(case).state_dict(), root / "model.pt")
    geometry = write_training_geometry(root, PHANTOM_PIXDIM, "LPS")  # as training writes it: fitted at 2 mm
    (root / "models").mkdir()
    bundle = REPO_ROOT / "bundles" / "distilled_student"
    model_ts = root / "models" / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(model_ts)]
    cmd += ["--ckpt_file", str(root / "model.pt"), "--meta_file", "configs/metadata.json"]
    cmd += ["--config_file", f"['configs/inference.json', '{geometry}']"]
    run_checked(cmd, cwd=bundle)
    return {"root": root, "case": case, "ckpt": root / "model.pt", "models": root / "models"}


def _run_app(case: Path, output: Path, model: Path, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(APP), "-i", str(case), "-o", str(output), "-m", str(model)]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)


def _segment(case: Path, output: Path, ckpt: Path, *options: str) -> np.ndarray:
    """``brats-kd segment``'s label map of ``case`` with the weights ``ckpt``."""
    command = [sys.executable, "-m", "kd_components.cli", "segment", str(case), "-o", str(output)]
    run_checked([*command, "--ckpt", str(ckpt), "--cache-dir", str(output / "cache"), "--no-progress", *options])
    return np.asarray(nib.load(output / f"{case.name}.nii.gz").dataobj)


@pytest.fixture(scope="module")
def torchscript_run(deployed: dict[str, Path]) -> Path:
    """The output folder of the application with its default engine (MONAI Deploy's bundle operator)."""
    output = deployed["root"] / "app_torchscript"
    result = _run_app(deployed["case"], output, deployed["models"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


def test_the_app_writes_the_label_map_that_brats_kd_segment_writes(
    deployed: dict[str, Path], torchscript_run: Path
) -> None:
    case = deployed["case"]
    saved = nib.load(torchscript_run / f"{case.name}.nii.gz")
    labels = np.asarray(saved.dataobj)
    # the same weights through `brats-kd segment` (eager PyTorch, the whole grid as the bundle operator runs it)
    expected = _segment(case, deployed["root"] / "segment_torch", deployed["ckpt"], "--engine", "torch", "--no-crop")
    assert set(np.unique(expected)) == {0, 1, 2, 3}  # the fitted network finds every label: a real comparison
    np.testing.assert_array_equal(labels, expected)
    # on the input's grid, with its affine, as uint8 BraTS labels
    source = nib.load(case / case_file_name(case.name, "t1c"))
    assert saved.shape == source.shape
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-6)
    assert saved.get_data_dtype() == np.uint8

    report = json.loads((torchscript_run / f"{case.name}-volumes.json").read_text())
    assert report["case_id"] == case.name and report["engine"] == "torchscript"
    assert report["volumes_ml"] == region_volumes_ml(labels, saved.affine)
    assert report["labels_present"] == {"1": "NETC", "2": "SNFH", "3": "ET"}
    png = (torchscript_run / f"{case.name}-slices.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.fixture(scope="module")
def segment_openvino(deployed: dict[str, Path]) -> np.ndarray:
    """``brats-kd segment --engine openvino``'s label map of the case with the same weights."""
    return _segment(deployed["case"], deployed["root"] / "segment_ov", deployed["ckpt"], "--engine", "openvino")


def test_the_openvino_engine_is_brats_kd_segments_and_agrees_with_the_reference(
    deployed: dict[str, Path], torchscript_run: Path, segment_openvino: np.ndarray
) -> None:
    case = deployed["case"]
    output = deployed["root"] / "app_openvino"
    result = _run_app(case, output, deployed["models"] / "model.ts", BRATS_KD_ENGINE="openvino")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    labels = np.asarray(nib.load(output / f"{case.name}.nii.gz").dataobj)
    np.testing.assert_array_equal(labels, segment_openvino)
    assert json.loads((output / f"{case.name}-volumes.json").read_text())["engine"] == "openvino"
    reference = np.asarray(nib.load(torchscript_run / f"{case.name}.nii.gz").dataobj)
    # the brain crop moves the windows: voxels near the threshold differ (docs/inference.md: Dice 0.91-0.99 between
    # crop and whole grid with a trained student); a wrong grid or engine would be far below
    assert min(label_map_dice(labels, reference)) >= 0.9


def _copy_case(case: Path, folder: Path, case_id: str) -> Path:
    """``case`` copied into ``folder`` under the id ``case_id`` (folder and file names)."""
    copy = folder / case_id
    copy.mkdir(parents=True)
    for path in case.iterdir():
        shutil.copy(path, copy / path.name.replace(case.name, case_id))
    return copy


@pytest.mark.parametrize("engine", ["torchscript", "openvino"])
def test_a_folder_of_cases_runs_in_one_process_and_a_bad_case_is_named_and_left_out(
    deployed: dict[str, Path], torchscript_run: Path, segment_openvino: np.ndarray, tmp_path: Path, engine: str
) -> None:
    """Two copies of the case, one with a NaN voxel (refused once read; with OpenVINO once read and preprocessed, as
    brats-kd segment does) and one without its t2f (refused before): the two good ones get the single case's label
    map, the bad ones one error line each, and the exit status is 1."""
    case, folder = deployed["case"], tmp_path / "cases"
    good = [_copy_case(case, folder, f"BraTS-SYN-0090{i}-000") for i in (1, 2)]
    nan_case = _copy_case(case, folder, "BraTS-SYN-00903-000")
    nan_file = nan_case / case_file_name(nan_case.name, "t1n")
    scan = nib.load(nan_file)
    data = np.asarray(scan.dataobj, dtype=np.float32)
    data[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(data, scan.affine), nan_file)
    incomplete = _copy_case(case, folder, "BraTS-SYN-00904-000")
    (incomplete / case_file_name(incomplete.name, "t2f")).unlink()
    output = tmp_path / "out"
    result = _run_app(folder, output, deployed["models"], BRATS_KD_ENGINE=engine)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, result.stderr[-3000:]
    assert any(nan_file.name in line for line in errors) and any(
        case_file_name(incomplete.name, "t2f") in line for line in errors
    )
    assert "(2 case(s)" in result.stderr
    reference = (
        np.asarray(nib.load(torchscript_run / f"{case.name}.nii.gz").dataobj)
        if engine == "torchscript"
        else segment_openvino
    )
    for copy in good:
        np.testing.assert_array_equal(np.asarray(nib.load(output / f"{copy.name}.nii.gz").dataobj), reference)
        assert json.loads((output / f"{copy.name}-volumes.json").read_text())["case_id"] == copy.name
    assert sorted(p.name for p in output.glob("*.nii.gz")) == sorted(f"{c.name}.nii.gz" for c in good)


def _missing_modality(deployed: dict[str, Path], tmp: Path) -> tuple[Path, Path, str]:
    case = tmp / deployed["case"].name
    shutil.copytree(deployed["case"], case)
    (case / case_file_name(case.name, "t2f")).unlink()
    return case, deployed["models"], case_file_name(case.name, "t2f")


def _not_a_case(deployed: dict[str, Path], tmp: Path) -> tuple[Path, Path, str]:
    folder = tmp / "scans"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a scan")
    return folder, deployed["models"], str(folder)


def _nan_voxels(deployed: dict[str, Path], tmp: Path) -> tuple[Path, Path, str]:
    case = tmp / deployed["case"].name
    shutil.copytree(deployed["case"], case)
    path = case / case_file_name(case.name, "t1n")
    scan = nib.load(path)
    data = np.asarray(scan.dataobj, dtype=np.float32)
    data[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(data, scan.affine), path)
    return case, deployed["models"], path.name


def _no_embedded_configs(deployed: dict[str, Path], tmp: Path) -> tuple[Path, Path, str]:
    model = tmp / "model.ts"
    torch.jit.save(torch.jit.load(deployed["models"] / "model.ts"), model)  # the network only: configs dropped
    return deployed["case"], model, str(model)


def _renamed_model(deployed: dict[str, Path], tmp: Path) -> tuple[Path, Path, str]:
    model = tmp / "student.ts"
    shutil.copy(deployed["models"] / "model.ts", model)
    return deployed["case"], model, str(model)


def _resaved_model(deployed: dict[str, Path], model: Path, nan: bool = False, geometry: bool = True) -> Path:
    """The deployed ``model.ts`` saved again as ``model`` with its embedded configs, a NaN in its first weight
    (``nan``) and without its embedded training geometry (``geometry=False``)."""
    extra = {"metadata.json": "", "inference.json": "", "training_geometry.json": ""}
    network = torch.jit.load(deployed["models"] / "model.ts", _extra_files=extra)
    if nan:
        with torch.no_grad():
            next(iter(network.parameters())).view(-1)[0] = float("nan")
    if not geometry:
        del extra["training_geometry.json"]
    model.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(network, str(model), _extra_files=extra)
    return model


def _nan_weights(deployed: dict[str, Path], tmp: Path) -> tuple[Path, Path, str]:
    """A model.ts exported by ``monai.bundle ckpt_export`` from a diverged checkpoint (that command does not check
    the weights): the SDK's operator ran it and failed with ``KeyError: 'pred'`` and a traceback."""
    model = _resaved_model(deployed, tmp / "nan" / "model.ts", nan=True)
    return deployed["case"], model, f"{model}: holds non-finite weights"


BAD_INPUTS: dict[str, Any] = {
    "missing modality": _missing_modality,
    "not a case folder": _not_a_case,
    "NaN voxels": _nan_voxels,
    "model without embedded configs": _no_embedded_configs,
    "renamed model file": _renamed_model,
    "NaN weights": _nan_weights,
}


@pytest.mark.parametrize("bad", sorted(BAD_INPUTS))
def test_bad_input_exits_with_an_error_naming_the_file_and_writes_no_label_map(
    deployed: dict[str, Path], tmp_path: Path, bad: str
) -> None:
    case, model, named = BAD_INPUTS[bad](deployed, tmp_path)
    output = tmp_path / "out"
    result = _run_app(case, output, model)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0], result.stderr[-2000:]
    assert not output.exists() or not list(output.glob("*.nii.gz"))


def test_a_scan_in_another_voxel_order_comes_back_on_its_own_grid(
    deployed: dict[str, Path], torchscript_run: Path, tmp_path: Path
) -> None:
    """The embedded training grid (2 mm, LPS) is applied and inverted by the SDK's operator: a copy of the case
    stored in another voxel order (first axis flipped, last two swapped) gets the same labels, in its own order."""
    case = deployed["case"]
    flipped = tmp_path / case.name
    flipped.mkdir()
    for path in case.glob("*.nii.gz"):
        scan = nib.load(path)
        data = np.ascontiguousarray(np.flip(np.asarray(scan.dataobj), 0).transpose(0, 2, 1))
        flip, swap = np.eye(4), np.eye(4)[[0, 2, 1, 3]]
        flip[0, 0], flip[0, 3] = -1, scan.shape[0] - 1
        nib.save(nib.Nifti1Image(data, scan.affine @ flip @ swap), flipped / path.name)
    result = _run_app(flipped, tmp_path / "out", deployed["models"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = nib.load(tmp_path / "out" / f"{case.name}.nii.gz")
    source = nib.load(flipped / case_file_name(case.name, "t1c"))
    assert saved.shape == source.shape
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-6)
    back = np.flip(np.asarray(saved.dataobj).transpose(0, 2, 1), 0)
    np.testing.assert_array_equal(back, np.asarray(nib.load(torchscript_run / f"{case.name}.nii.gz").dataobj))


@pytest.mark.parametrize("engine", ["torchscript", "openvino"])
def test_a_model_without_its_training_grid_runs_with_a_warning_that_names_the_grid(
    deployed: dict[str, Path], tmp_path: Path, engine: str
) -> None:
    """A model.ts exported without training_geometry.json runs at the embedded inference.json's grid (1 mm) instead
    of the 2 mm it was trained at: the app ran it without a word (exit 0, a worse label map); now it warns on
    stderr, naming the file and the grid used, and still segments."""
    model = _resaved_model(deployed, tmp_path / "nogeo" / "model.ts", geometry=False)
    result = _run_app(deployed["case"], tmp_path / "out", model, BRATS_KD_ENGINE=engine)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    named = f"{model} has no training_geometry.json embedded"
    assert any(named in w and "pixdim [1.0, 1.0, 1.0]" in w for w in warnings), result.stderr[-3000:]
    assert (tmp_path / "out" / f"{deployed['case'].name}.nii.gz").is_file()


def test_a_file_of_the_users_named_like_the_label_map_is_kept(deployed: dict[str, Path], tmp_path: Path) -> None:
    """A copy of the case's reference kept in the output folder as ``<case>.nii.gz``: the app replaced it with its
    label map. Now the case is refused, naming the file, which is kept byte for byte."""
    case, output = deployed["case"], tmp_path / "out"
    output.mkdir()
    mine = output / f"{case.name}.nii.gz"
    shutil.copy(case / case_file_name(case.name, "seg"), mine)
    before = mine.read_bytes()
    result = _run_app(case, output, deployed["models"])
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{mine} exists and is not a label map brats-kd wrote" in errors[0], result.stderr
    assert mine.read_bytes() == before
