"""``brats-kd segment``: inputs, outputs on the input grid, bad cases skipped and named, engines that agree with
PyTorch, the brain crop, the export cache."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from kd_components.cli import main
from kd_components.constants import MODALITIES, case_file_name
from kd_components.data.brats import case_from_directory
from kd_components.geometry import write_training_geometry
from kd_components.handlers.metrics import label_map_dice
from kd_components.handlers.region_volumes import region_volumes_ml
from kd_components.io import LABEL_MAP_DESCRIPTION, save_nifti_atomic
from kd_components.networks.student import build_student
from kd_components.segment import (
    CaseFailed,
    Segmentation,
    Segmenter,
    brain_box,
    cached_export,
    resolve_inputs,
    window_count,
)
from kd_components.segment.engines import EngineError, build_engine
from kd_components.segment.inputs import open_case, open_cases
from kd_components.segment.report import PANEL_HEIGHT, tumour_centre, write_case_report
from tests.conftest import PHANTOM_PIXDIM, REPO_ROOT

pytestmark = [pytest.mark.phantoms(num_cases=3, unlabelled=0, teacher=False), pytest.mark.usefixtures("one_thread")]

#: A small sliding window keeps every test quick; the grid logic is the same at 96.
SMALL = {"patch_size": [32, 32, 32], "sw_batch_size": 2}
#: Most cases here are small random volumes, no brains: the plausibility checks are off for them (they have their own
#: tests, tests/test_plausibility.py).
NO_BRAIN = {"plausibility": False}


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the default student (random, seeded)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "model.pt"
    torch.save(build_student().state_dict(), path)
    return path


def _segmenter(ckpt: Path, tmp_path: Path, **kwargs) -> Segmenter:
    kwargs.setdefault("overrides", SMALL)
    kwargs.setdefault("plausibility", False)
    return Segmenter(ckpt=ckpt, cache_dir=tmp_path / "cache", log=lambda line: None, **kwargs)


def _segment(argv: list[str]) -> int:
    return main(["segment", "--no-progress", "--no-plausibility-check", *argv])


def test_a_folder_of_cases_one_case_folder_and_four_files(
    phantom_data: dict[str, Path], student_ckpt: Path, tmp_path: Path
) -> None:
    data = phantom_data["data"]
    ckpt = tmp_path / "weights" / "model.pt"  # weights "trained" on the 2 mm phantoms: run at 2 mm
    ckpt.parent.mkdir()
    shutil.copy(student_ckpt, ckpt)
    write_training_geometry(ckpt.parent, PHANTOM_PIXDIM, "LPS")
    common = ["--ckpt", str(ckpt), "--cache-dir", str(tmp_path / "cache"), "--engine", "onnxruntime"]
    assert _segment([str(data), "-o", str(tmp_path / "all"), *common]) == 0
    cases = sorted(p.name for p in data.iterdir() if p.is_dir())
    assert sorted(p.name for p in (tmp_path / "all").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    rows = list(csv.DictReader((tmp_path / "all" / "volumes.csv").open()))
    assert [r["case_id"] for r in rows] == cases
    assert set(rows[0]) == {"case_id", "NETC_ml", "SNFH_ml", "ET_ml", "TC_ml", "WT_ml", "seconds"}
    assert json.loads((tmp_path / "all" / "volumes.json").read_text())[0]["case_id"] == cases[0]
    for row in rows:  # the regions are unions of the labels
        assert float(row["TC_ml"]) == pytest.approx(float(row["NETC_ml"]) + float(row["ET_ml"]), abs=1e-3)
        assert float(row["WT_ml"]) == pytest.approx(float(row["TC_ml"]) + float(row["SNFH_ml"]), abs=1e-3)
    # the label map lies on the input's grid, with its affine
    source = nib.load(data / cases[0] / case_file_name(cases[0], "t1c"))
    out = nib.load(tmp_path / "all" / f"{cases[0]}.nii.gz")
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    assert out.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 3}

    assert _segment([str(data / cases[1]), "-o", str(tmp_path / "one"), *common]) == 0
    assert [p.name for p in (tmp_path / "one").glob("*.nii.gz")] == [f"{cases[1]}.nii.gz"]
    one = np.asarray(nib.load(tmp_path / "one" / f"{cases[1]}.nii.gz").dataobj)
    assert np.array_equal(one, np.asarray(nib.load(tmp_path / "all" / f"{cases[1]}.nii.gz").dataobj))

    files = [a for m in MODALITIES for a in (f"--{m}", str(data / cases[2] / case_file_name(cases[2], m)))]
    assert _segment([*files, "-o", str(tmp_path / "files"), *common]) == 0
    assert [p.name for p in (tmp_path / "files").glob("*.nii.gz")] == [f"{cases[2]}.nii.gz"]


def test_bad_cases_are_skipped_and_named_and_the_others_written(
    make_case: Callable[..., Path], student_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    make_case("BraTS-GLI-00001-000", shape=(40, 36, 34), root=root)
    missing = make_case("BraTS-GLI-00002-000", shape=(40, 36, 34), root=root)
    (missing / case_file_name("BraTS-GLI-00002-000", "t2f")).unlink()
    nan = np.random.default_rng(0).uniform(1, 100, (40, 36, 34)).astype(np.float32)
    nan[5, 5, 5] = np.nan
    make_case("BraTS-GLI-00003-000", shape=(40, 36, 34), root=root, overrides={"t1n": nan})
    corrupt = make_case("BraTS-GLI-00004-000", shape=(40, 36, 34), root=root)
    (corrupt / case_file_name("BraTS-GLI-00004-000", "t2w")).write_bytes(b"not a nifti file")
    shifted = make_case("BraTS-GLI-00005-000", shape=(40, 36, 34), root=root)
    moved = np.diag([-1.0, -1.0, 1.0, 1.0])
    moved[:3, 3] = 5.0
    t2w = np.random.default_rng(1).uniform(1, 100, (40, 36, 34)).astype(np.float32)
    save_nifti_atomic(t2w, moved, shifted / case_file_name("BraTS-GLI-00005-000", "t2w"))
    out = tmp_path / "out"
    argv = [str(root), "-o", str(out), "--ckpt", str(student_ckpt), "--cache-dir", str(tmp_path / "cache")]
    assert _segment(argv) == 1
    err = capsys.readouterr().err
    assert "4 problem(s); these were not segmented:" in err
    assert "BraTS-GLI-00002-000: BraTS-GLI-00002-000-t2f.nii.gz: missing modality 't2f'" in err
    assert "BraTS-GLI-00003-000: BraTS-GLI-00003-000-t1n.nii.gz" in err and "NaN" in err
    assert "BraTS-GLI-00004-000: BraTS-GLI-00004-000-t2w.nii.gz: cannot be read as NIfTI" in err
    assert "BraTS-GLI-00005-000: BraTS-GLI-00005-000-t2w.nii.gz" in err and "affine" in err
    assert [p.name for p in out.glob("*.nii.gz")] == ["BraTS-GLI-00001-000.nii.gz"]
    assert [r["case_id"] for r in csv.DictReader((out / "volumes.csv").open())] == ["BraTS-GLI-00001-000"]


def test_watch_segments_cases_as_they_arrive_and_stops_on_sigterm(
    phantom_data: dict[str, Path], student_ckpt: Path, tmp_path: Path
) -> None:
    data = phantom_data["data"]
    cases = sorted(p for p in data.iterdir() if p.is_dir())[:2]
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    shutil.copytree(cases[0], inbox / cases[0].name)
    (inbox / "notes").mkdir()
    (inbox / "notes" / "scan.nii.gz").write_bytes(b"")  # a folder that is not a case: reported, not fatal
    command = [sys.executable, "-m", "kd_components.cli", "segment", str(inbox), "-o", str(out), "--watch", "0.2"]
    command += ["--ckpt", str(student_ckpt), "--cache-dir", str(tmp_path / "cache"), "--engine", "onnxruntime"]
    command += ["--no-progress", "--no-plausibility-check"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        first, second = (out / f"{c.name}.nii.gz" for c in cases)
        _wait_for(first, process)
        partial = inbox / cases[1].name
        partial.mkdir()
        for modality in MODALITIES[:2]:  # half a case: waited for, not reported as missing modalities yet
            shutil.copy(cases[1] / case_file_name(cases[1].name, modality), partial)
        time.sleep(1.0)
        assert not second.exists()
        for modality in MODALITIES[2:]:
            shutil.copy(cases[1] / case_file_name(cases[1].name, modality), partial)
        _wait_for(second, process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1, err  # the folder that is not a case
    assert "stopped watching" in err and "2 case(s) written" in err and "notes" in err
    rows = list(csv.DictReader((out / "volumes.csv").open()))
    assert sorted(r["case_id"] for r in rows) == [c.name for c in cases]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``path`` exists (the watching ``process`` still running)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} not written in {timeout} s"
        time.sleep(0.1)


def test_usage_errors_say_what_is_missing(
    make_case: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _segment(["-o", str(tmp_path / "out")]) == 2
    assert "nothing to segment" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _segment([str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 1
    assert "holds no BraTS case folder" in capsys.readouterr().err
    case = make_case(root=tmp_path / "data")
    assert _segment([str(case), "-o", str(tmp_path / "out"), "--ckpt", str(tmp_path / "no.pt")]) == 2
    assert f"checkpoint {tmp_path / 'no.pt'} does not exist" in capsys.readouterr().err
    found = resolve_inputs(files={"t1c": tmp_path / "a-t1c.nii.gz"})
    assert [str(p) for p in found.cases[0].problems][:1] == ["a-t1c: --t1n not given: all four modalities are needed"]


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engines_agree_with_pytorch_on_a_volume_whose_sides_are_not_multiples_of_16(
    make_case: Callable[..., Path], student_ckpt: Path, tmp_path: Path, engine: str
) -> None:
    case = case_from_directory(make_case(shape=(50, 45, 38), root=tmp_path / "data"))
    reference = _segmenter(student_ckpt, tmp_path, engine="torch", device="cpu").segment(case)
    other = _segmenter(student_ckpt, tmp_path, engine=engine).segment(case)
    assert other.labels.shape == (50, 45, 38)
    assert min(label_map_dice(other.labels, reference.labels)) >= 0.99
    segmenter = _segmenter(student_ckpt, tmp_path, engine=engine)
    image = segmenter.load(case)
    expected = _segmenter(student_ckpt, tmp_path, engine="torch", device="cpu").logits(image)
    assert torch.allclose(segmenter.logits(image), expected, atol=1e-3)


def test_a_case_records_the_seconds_of_its_checks(
    make_case: Callable[..., Path], student_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plausibility checks are a stage of their own in a case's seconds (the volume table's ``seconds`` is their
    sum), not time that no stage counts."""
    import kd_components.segment.segmenter as segmenter_module

    def slow_check(*args: object) -> list[str]:
        time.sleep(0.3)
        return []

    monkeypatch.setattr(segmenter_module, "plausibility_problems", slow_check)
    case = case_from_directory(make_case(shape=(40, 40, 30), root=tmp_path / "data"))
    seconds = _segmenter(student_ckpt, tmp_path, plausibility=True).segment(case).seconds
    assert list(seconds) == ["read", "check", "network", "postprocess"]
    assert seconds["check"] >= 0.3


def test_crop_runs_fewer_windows_and_pastes_back_exactly(
    make_case: Callable[..., Path], student_ckpt: Path, tmp_path: Path
) -> None:
    shape, head = (120, 100, 90), (slice(50, 75), slice(40, 62), slice(35, 55))  # a "brain" in a zero background
    rng = np.random.default_rng(3)
    images = {}
    for modality in MODALITIES:
        images[modality] = np.zeros(shape, np.float32)
        images[modality][head] = rng.uniform(1, 100, images[modality][head].shape)
    case = case_from_directory(make_case(shape=shape, root=tmp_path / "data", overrides=images))
    cropped = _segmenter(student_ckpt, tmp_path, engine="torch", device="cpu")
    whole = _segmenter(student_ckpt, tmp_path, engine="torch", device="cpu", crop=False)
    image = cropped.load(case)
    box = brain_box(image)
    assert box == tuple(slice(s.start - 4, s.stop + 4) for s in head)  # the brain plus the margin
    roi = cropped.roi_size
    assert window_count(tuple(b.stop - b.start for b in box), roi, cropped.overlap) < window_count(shape, roi, 0.5)
    # a pointwise network (its output at a voxel does not depend on the window): identical labels, so the crop and
    # the paste are exact; a real network's windows differ at seams (docs/inference.md measures the effect)
    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(4, 3, 1)
    with torch.no_grad():
        pointwise.weight.mul_(3.0)
    for segmenter in (cropped, whole):
        segmenter.engine = pointwise.eval()
    a, b = cropped.logits(image), whole.logits(image)
    brain = np.asarray(image).any(axis=0)
    assert torch.allclose(a[:, brain], b[:, brain], atol=1e-5)
    labels_a, labels_b = cropped.segment(case).labels, whole.segment(case).labels
    assert labels_a[brain].any() and np.array_equal(labels_a[brain], labels_b[brain])
    outside = np.ones_like(brain)
    outside[box] = False
    assert not labels_a[outside].any()  # background outside the box


def test_export_is_cached_and_rebuilt_when_the_checkpoint_changes(student_ckpt: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    shutil.copy(student_ckpt, ckpt)
    network = build_student()
    network.load_state_dict(torch.load(ckpt, weights_only=True))
    lines: list[str] = []
    first = cached_export(network, ckpt, (32, 32, 32), log=lines.append)
    assert first.parent == tmp_path and first.name.startswith("model-") and first.suffix == ".onnx"
    stamp = first.stat().st_mtime_ns
    assert cached_export(network, ckpt, (32, 32, 32), log=lines.append) == first
    assert len(lines) == 1 and first.stat().st_mtime_ns == stamp  # reused, not exported again
    with torch.no_grad():
        next(network.parameters()).add_(1.0)
    torch.save(network.state_dict(), ckpt)
    second = cached_export(network, ckpt, (32, 32, 32), log=lines.append)
    assert second != first and len(lines) == 2


def test_export_of_another_patch_size_is_another_file_with_that_input_shape(student_ckpt: Path, tmp_path: Path) -> None:
    """The graph's spatial size is fixed to the patch: a cached export made for one sliding-window ROI must not be
    handed to a run with another (ONNX Runtime and OpenVINO refuse the patch)."""
    import onnx

    ckpt = tmp_path / "model.pt"
    shutil.copy(student_ckpt, ckpt)
    network = build_student()
    network.load_state_dict(torch.load(ckpt, weights_only=True))
    small = cached_export(network, ckpt, (32, 32, 32), log=lambda line: None)
    large = cached_export(network, ckpt, (48, 32, 64), log=lambda line: None)
    assert small != large and small.name.endswith("-32x32x32.onnx") and large.name.endswith("-48x32x64.onnx")
    for path, spatial in ((small, [32, 32, 32]), (large, [48, 32, 64])):
        dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[1:]] == [4, *spatial]
    engine = build_engine("onnxruntime", network, ckpt, (48, 32, 64), log=lambda line: None)
    assert engine(torch.zeros(1, 4, 48, 32, 64)).shape == (1, 3, 48, 32, 64)


def test_unsupported_precisions_are_named(student_ckpt: Path) -> None:
    network = build_student()
    with pytest.raises(EngineError, match="ONNX Runtime runs these networks in fp32 only"):
        build_engine("onnxruntime", network, None, (32, 32, 32), precision="bf16", log=lambda line: None)
    with pytest.raises(EngineError, match="int8 needs the OpenVINO engine"):
        build_engine("torch", network, None, (32, 32, 32), precision="int8")
    with pytest.raises(EngineError, match="unknown engine"):
        build_engine("tensorrt", network, None, (32, 32, 32))


def test_int8_is_quantized_once_and_stays_close_to_fp32(
    make_case: Callable[..., Path], student_ckpt: Path, tmp_path: Path
) -> None:
    pytest.importorskip("nncf", reason="int8 needs NNCF (installed by the test extra)")
    case = case_from_directory(make_case(shape=(48, 44, 40), root=tmp_path / "data"))
    lines: list[str] = []
    options = {"engine": "openvino", "calibration_cases": [case], "overrides": SMALL, **NO_BRAIN}
    int8 = Segmenter(ckpt=student_ckpt, precision="int8", cache_dir=tmp_path / "cache", log=lines.append, **options)
    assert sum("quantizing to int8" in line for line in lines) == 1
    assert list((tmp_path / "cache").glob("*-int8-*.xml")) and list((tmp_path / "cache").glob("*-int8-*.bin"))
    Segmenter(ckpt=student_ckpt, precision="int8", cache_dir=tmp_path / "cache", log=lines.append, **options)
    assert sum("quantizing to int8" in line for line in lines) == 1  # the quantized model is reused
    fp32 = _segmenter(student_ckpt, tmp_path, engine="openvino")
    image = fp32.load(case)
    a, b = int8.logits(image), fp32.logits(image)
    assert torch.isfinite(a).all() and a.shape == b.shape
    assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) > 0.95


def test_int8_calibration_skips_cases_it_cannot_use(
    make_case: Callable[..., Path], student_ckpt: Path, tmp_path: Path
) -> None:
    from kd_components.segment.segmenter import calibration_patches

    root = tmp_path / "data"
    good = case_from_directory(make_case("BraTS-GLI-00001-000", shape=(40, 36, 34), root=root))
    nan = np.random.default_rng(0).uniform(1, 100, (40, 36, 34)).astype(np.float32)
    nan[3, 3, 3] = np.nan
    bad = case_from_directory(make_case("BraTS-GLI-00002-000", shape=(40, 36, 34), root=root, overrides={"t1c": nan}))
    broken_dir = make_case("BraTS-GLI-00003-000", shape=(40, 36, 34), root=root)
    (broken_dir / case_file_name("BraTS-GLI-00003-000", "t2w")).write_bytes(b"not a nifti file")
    broken = case_from_directory(broken_dir)
    segmenter = _segmenter(student_ckpt, tmp_path, engine="torch", device="cpu")
    patches = calibration_patches(segmenter, [bad, broken, good], per_case=2)
    assert len(patches) == 2 and all(p.shape == (1, 4, 32, 32, 32) and torch.isfinite(p).all() for p in patches)


def test_open_case_takes_one_case_and_names_what_is_wrong(make_case: Callable[..., Path], tmp_path: Path) -> None:
    """The single-case input of the Deploy application: the checks of ``brats-kd segment`` before any voxel."""
    root = tmp_path / "data"
    good = make_case("BraTS-GLI-00001-000", shape=(20, 18, 16), root=root)
    assert open_case(good).case_id == "BraTS-GLI-00001-000"
    assert open_case(root).case_id == "BraTS-GLI-00001-000"  # a folder holding one case folder
    make_case("BraTS-GLI-00002-000", shape=(20, 18, 16), root=root)
    with pytest.raises(CaseFailed, match=r"holds 2 case folders .*: give one case folder"):
        open_case(root)
    (good / case_file_name("BraTS-GLI-00001-000", "t2w")).unlink()
    with pytest.raises(CaseFailed, match=r"BraTS-GLI-00001-000-t2w\.nii\.gz: missing modality 't2w'"):
        open_case(good)
    (tmp_path / "notes").mkdir()
    with pytest.raises(CaseFailed, match="holds no BraTS case folder"):
        open_case(tmp_path / "notes")


def test_open_cases_takes_a_folder_of_cases_and_leaves_out_what_is_wrong(
    make_case: Callable[..., Path], tmp_path: Path
) -> None:
    """The Deploy application's input: one case, or a folder of cases whose bad ones are named and left out; an
    output folder inside the input folder (the label maps of an earlier run) is not named as a folder that is not
    a case."""
    root = tmp_path / "data"
    one = make_case("BraTS-GLI-00001-000", shape=(20, 18, 16), root=root)
    assert [c.case_id for c in open_cases(one).cases] == ["BraTS-GLI-00001-000"]
    output = root / "out"
    output.mkdir()
    earlier = output / "BraTS-GLI-00001-000.nii.gz"  # the label map of an earlier run, as a brats-kd run marks it
    save_nifti_atomic(np.zeros((20, 18, 16)), np.eye(4), earlier, dtype=np.uint8, description=LABEL_MAP_DESCRIPTION)
    assert open_cases(root, output_dir=output).problems == []  # one case, and the earlier run's output
    assert "out: not taken as a case" in open_cases(root).problems[0]  # an output folder elsewhere: named
    incomplete = make_case("BraTS-GLI-00002-000", shape=(20, 18, 16), root=root)
    (incomplete / case_file_name(incomplete.name, "t2f")).unlink()
    make_case("BraTS-GLI-00003-000", shape=(20, 18, 16), root=root)
    batch = open_cases(root, output_dir=output)
    assert [c.case_id for c in batch.cases] == ["BraTS-GLI-00001-000", "BraTS-GLI-00003-000"]
    assert len(batch.problems) == 1 and "BraTS-GLI-00002-000-t2f.nii.gz: missing modality 't2f'" in batch.problems[0]
    with pytest.raises(CaseFailed, match="missing modality 't2f'"):
        open_cases(incomplete)  # the one case given is wrong: an error
    (tmp_path / "notes").mkdir()
    with pytest.raises(CaseFailed, match="holds no BraTS case folder"):
        open_cases(tmp_path / "notes")
    # a file there that no brats-kd run wrote (a copy of a scan of the user's) is kept: its case is left out
    earlier.write_bytes((one / case_file_name(one.name, "t1c")).read_bytes())
    batch = open_cases(root, output_dir=output)
    assert [c.case_id for c in batch.cases] == ["BraTS-GLI-00003-000"]
    assert any(f"{earlier} exists and is not a label map brats-kd wrote" in p for p in batch.problems)


def test_check_values_refuses_a_constant_scan_as_read_and_as_normalised() -> None:
    image = torch.rand(4, 6, 6, 6) + 1
    Segmenter.check_values("c", image, plausibility=False)
    image[2] = 7.0  # constant but not zero: only its normalised form would be all zeros
    with pytest.raises(CaseFailed, match="c: t2w: constant scan"):
        Segmenter.check_values("c", image, plausibility=False)
    image[2] = 0.0
    with pytest.raises(CaseFailed, match="c: t2w: constant scan"):
        Segmenter.check_values("c", image, plausibility=False)


def test_case_report_has_the_volumes_and_slices_through_the_tumour(tmp_path: Path) -> None:
    labels = np.zeros((30, 28, 26), np.uint8)
    labels[5:15, 6:16, 7:17] = 2  # a hollow tumour: its centre of mass is not a tumour voxel
    labels[8:12, 9:13, 10:14] = 0
    labels[5:7, 6:8, 7:9] = 3
    assert labels[tuple(round(c) for c in (9.5, 10.5, 11.5))] == 0
    centre = tumour_centre(labels)
    assert centre is not None and labels[centre] > 0
    assert tumour_centre(np.zeros_like(labels)) is None
    affine = np.diag([-1.0, -1.2, 2.0, 1.0])
    background = np.random.default_rng(0).uniform(0, 100, labels.shape).astype(np.float32)
    segmentation = Segmentation("BraTS-GLI-00001-000", labels, affine, region_volumes_ml(labels, affine))
    paths = write_case_report(segmentation, background, tmp_path, engine="openvino")
    report = json.loads(paths["volumes"].read_text())
    assert report["volumes_ml"]["ET_ml"] == pytest.approx(8 * 2.4 / 1000)
    assert report["voxel_size_mm"] == [1.0, 1.2, 2.0] and report["labels_present"] == {"2": "SNFH", "3": "ET"}
    as_int16 = Segmentation("BraTS-GLI-00003-000", labels.astype(np.int16), affine, segmentation.volumes)
    as_int16_report = json.loads(write_case_report(as_int16, background, tmp_path)["volumes"].read_text())
    assert as_int16_report["labels_present"] == report["labels_present"]  # counted (uint8) or sorted: the same
    assert paths["slices"].name == "BraTS-GLI-00001-000-slices.png"
    assert paths["slices"].read_bytes().startswith(b"\x89PNG")
    empty = Segmentation("BraTS-GLI-00002-000", np.zeros_like(labels), affine, region_volumes_ml(labels * 0, affine))
    assert write_case_report(empty, background, tmp_path)["slices"].is_file()  # no tumour: the middle slices

    def greenish(path: Path) -> int:
        """Pixels where SNFH's green shows through the grey: green well above red and blue."""
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int(((rgb[..., 1] - rgb[..., 0] > 40) & (rgb[..., 1] - rgb[..., 2] > 40)).sum())

    with Image.open(paths["slices"]) as picture:
        assert picture.height > PANEL_HEIGHT
    assert greenish(paths["slices"]) > 100  # the oedema is drawn over the slices (and in the legend's swatch)
    assert greenish(tmp_path / "BraTS-GLI-00002-000-slices.png") < greenish(paths["slices"]) / 10  # the swatch only


def test_watch_keeps_a_file_of_the_users_where_a_label_map_would_go(
    make_case: Callable[..., Path], tmp_path: Path
) -> None:
    """A case whose ``<case_id>.nii.gz`` in -o is a file of the user's was taken as done, without a word; now it is
    reported once, and neither segmented nor overwritten. A label map a brats-kd run wrote still means done."""
    from kd_components.segment.watch import FolderWatch

    case = make_case("BraTS-GLI-00001-000", shape=(20, 18, 16), root=tmp_path / "inbox")
    out = tmp_path / "out"
    out.mkdir()
    mine = out / f"{case.name}.nii.gz"
    mine.write_bytes((case / case_file_name(case.name, "t1c")).read_bytes())
    watch = FolderWatch([tmp_path / "inbox"], out)
    assert watch.poll() == ([], [])  # seen once: not yet settled
    ready, problems = watch.poll()
    assert ready == [] and len(problems) == 1 and f"{mine} exists and is not a label map brats-kd wrote" in problems[0]
    assert watch.poll() == ([], [])  # reported once
    save_nifti_atomic(np.zeros((20, 18, 16)), np.eye(4), mine, dtype=np.uint8, description=LABEL_MAP_DESCRIPTION)
    fresh = FolderWatch([tmp_path / "inbox"], out)
    assert fresh.poll() == ([], []) and fresh.poll() == ([], [])  # done by an earlier run: nothing to do
