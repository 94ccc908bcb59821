"""``brats-kd segment`` loses nothing: no input is overwritten, nothing is written outside ``-o``, an output folder's
volume table keeps every case it holds (across runs and concurrent processes), and temporaries of a killed run are
cleaned by the next one."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_components.cli import main
from kd_components.constants import MODALITIES, case_file_name
from kd_components.geometry import write_training_geometry
from kd_components.handlers.region_volumes import update_volume_table
from kd_components.io import check_output_dir, clean_stale_temporaries
from kd_components.networks.student import build_student
from kd_components.segment.inputs import case_id_problem
from tests.conftest import PHANTOM_PIXDIM

pytestmark = [
    pytest.mark.phantoms(num_cases=2, unlabelled=0, num_folds=2, teacher=False),
    pytest.mark.usefixtures("one_thread"),
]

SMALL = ["--engine", "torch", "--device", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random (seeded) weights of the default student, "trained" at the phantoms' 2 mm."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    torch.save(build_student().state_dict(), folder / "model.pt")
    write_training_geometry(folder, PHANTOM_PIXDIM, "LPS")
    return folder / "model.pt"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _four_files(case: Path, folder: Path) -> list[str]:
    """The case's four scans copied into ``folder`` as ``t1c.nii.gz`` ... (a user's own naming); the CLI options."""
    folder.mkdir(parents=True, exist_ok=True)
    args = []
    for modality in MODALITIES:
        shutil.copy(case / case_file_name(case.name, modality), folder / f"{modality}.nii.gz")
        args += [f"--{modality}", str(folder / f"{modality}.nii.gz")]
    return args


def _segment(*argv: str) -> int:
    return main(["segment", "--no-progress", *SMALL, *argv])


def test_four_files_written_into_their_own_folder_keep_the_inputs(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o`` the scans' folder: the case is named after the folder (not ``t1c``) and every scan is unchanged;
    ``--case-id t1c`` is refused, since its label map would be written over ``t1c.nii.gz``."""
    case = next(p for p in sorted(phantom_data["data"].iterdir()) if p.is_dir())
    scans = tmp_path / "patient7"
    files = _four_files(case, scans)
    before = _digest(scans)
    assert _segment(*files, "-o", str(scans), "--ckpt", str(weights)) == 0
    after = _digest(scans)
    assert {k: after[k] for k in before} == before
    written = {p.name for p in scans.iterdir() if not p.name.startswith(".")}
    assert written == {*(f"{m}.nii.gz" for m in MODALITIES), "patient7.nii.gz", "volumes.csv", "volumes.json"}

    assert _segment(*files, "-o", str(scans), "--ckpt", str(weights), "--case-id", "t1c") == 1
    assert "would overwrite an input file" in capsys.readouterr().err
    assert {k: _digest(scans)[k] for k in before} == before


@pytest.mark.parametrize("case_id", ["../../x", "sub/dir", "..", ".hidden", "BraTS-GLI-00001-000.nii.gz"])
def test_a_case_id_that_is_no_plain_name_is_refused(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path, case_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(p for p in sorted(phantom_data["data"].iterdir()) if p.is_dir())
    files = _four_files(case, tmp_path / "scans")
    out = tmp_path / "deep" / "er" / "out"
    assert _segment(*files, "-o", str(out), "--ckpt", str(weights), "--case-id", case_id) == 1
    assert case_id_problem(case_id) in capsys.readouterr().err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "scans" not in p.parts]
    assert written == []  # nothing outside -o, nothing inside either


def test_two_runs_into_one_folder_keep_both_cases_in_the_table(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    first, second = (p for p in sorted(phantom_data["data"].iterdir()) if p.is_dir())
    out = tmp_path / "out"
    assert _segment(str(first), "-o", str(out), "--ckpt", str(weights)) == 0
    assert _segment(str(second), "-o", str(out), "--ckpt", str(weights)) == 0
    rows = json.loads((out / "volumes.json").read_text())
    assert [r["case_id"] for r in rows] == [first.name, second.name]
    assert len((out / "volumes.csv").read_text().splitlines()) == 3
    # a case segmented again replaces its row; a row whose label map was removed is dropped
    (out / f"{first.name}.nii.gz").unlink()
    assert _segment(str(second), "-o", str(out), "--ckpt", str(weights)) == 0
    assert [r["case_id"] for r in json.loads((out / "volumes.json").read_text())] == [second.name]


def test_a_label_map_left_without_its_row_gets_one_on_the_next_run(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    """A run killed (or a disk filled) after a label map was written and before its row: the map stayed, listed by
    no table, whatever ran next. The next run's table adds it from its voxels (segment marks its label maps in the
    header); a scan, a user's label map and a text file in the folder are left out."""
    first, second = (p for p in sorted(phantom_data["data"].iterdir()) if p.is_dir())
    out = tmp_path / "out"
    assert _segment(str(first), "-o", str(out), "--ckpt", str(weights)) == 0
    listed = json.loads((out / "volumes.json").read_text())
    shutil.copy(out / f"{first.name}.nii.gz", out / "orphan.nii.gz")  # as the killed run left it: no row
    shutil.copy(first / f"{first.name}-t1c.nii.gz", out / "scan.nii.gz")  # a scan of the user's: no label map
    shutil.copy(first / f"{first.name}-seg.nii.gz", out / "reference.nii.gz")  # a label map segment did not write
    (out / "notes.nii.gz").write_text("not NIfTI")
    assert _segment(str(second), "-o", str(out), "--ckpt", str(weights)) == 0
    rows = {r["case_id"]: r for r in json.loads((out / "volumes.json").read_text())}
    assert sorted(rows) == sorted([first.name, second.name, "orphan"])
    volumes = {k: v for k, v in listed[0].items() if k.endswith("_ml")}
    assert volumes and {k: rows["orphan"][k] for k in volumes} == volumes  # the same map, the same volumes


def test_a_file_of_the_users_named_like_a_label_map_is_never_overwritten(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy of a case's reference segmentation kept in -o as ``<case_id>.nii.gz``: segment replaced it with its
    label map, exit 0. Now that case is refused and named, the file kept byte for byte, the other case segmented;
    a label map segment wrote itself is still replaced by a second run."""
    first, second = (p for p in sorted(phantom_data["data"].iterdir()) if p.is_dir())
    out = tmp_path / "out"
    out.mkdir()
    mine = out / f"{first.name}.nii.gz"
    shutil.copy(first / f"{first.name}-seg.nii.gz", mine)
    before = mine.read_bytes()
    assert _segment(str(phantom_data["data"]), "-o", str(out), "--ckpt", str(weights)) == 1
    err = capsys.readouterr().err
    assert f"{first.name}: {mine} exists and is not a label map brats-kd wrote" in err
    assert mine.read_bytes() == before
    assert [r["case_id"] for r in json.loads((out / "volumes.json").read_text())] == [second.name]
    written = (out / f"{second.name}.nii.gz").stat().st_mtime_ns
    assert _segment(str(second), "-o", str(out), "--ckpt", str(weights)) == 0
    assert (out / f"{second.name}.nii.gz").stat().st_mtime_ns != written


def test_an_output_folder_inside_the_input_folder_is_not_a_problem_on_the_second_run(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantom_data["data"], data)
    for _ in range(2):
        assert _segment(str(data), "-o", str(data / "seg"), "--ckpt", str(weights)) == 0
    assert "not taken as" not in capsys.readouterr().err


def _add_row(folder: str, case_id: str) -> None:
    (Path(folder) / f"{case_id}.nii.gz").write_bytes(b"label map")
    update_volume_table([{"case_id": case_id, "WT_ml": 1.0}], folder)


def test_concurrent_processes_add_their_rows_and_none_is_lost(tmp_path: Path) -> None:
    ids = [f"case{i:02d}" for i in range(12)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(_add_row, [(str(tmp_path), c) for c in ids])
    assert sorted(r["case_id"] for r in json.loads((tmp_path / "volumes.json").read_text())) == ids


def test_temporaries_of_a_killed_writer_are_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A SIGKILLed run leaves its atomic temporary; the next run's output check removes it. A temporary of a process
    that still runs (a concurrent run) stays."""
    code = (
        "import os, sys, signal\n"
        "from kd_components.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "case.nii.gz")], check=False)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".case.")]
    assert len(left) == 1 and left[0].stat().st_size == 0
    live = tmp_path / f".other.{os.getpid()}.pid-abcd.tmp.nii.gz"
    live.write_bytes(b"")
    check_output_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    assert clean_stale_temporaries(tmp_path) == []


@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "openvino"])
def test_every_engine_refuses_non_finite_weights(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path, engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One NaN weight gave a plausible-looking label map with exit 0 on OpenVINO; every engine refuses it at load."""
    state = torch.load(weights, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first].view(-1)[0] = float("nan")
    bad = tmp_path / "model.pt"
    torch.save(state, bad)
    shutil.copy(weights.parent / "training_geometry.json", tmp_path)
    out = tmp_path / "out"
    argv = ["segment", "--no-progress", str(phantom_data["data"]), "-o", str(out), "--ckpt", str(bad)]
    assert main([*argv, "--engine", engine, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert f"{bad} holds non-finite weights" in err and first in err
    assert not list(out.glob("*.nii.gz"))


@pytest.mark.parametrize("kind", ["teacher", "text", "torchscript"])
def test_a_checkpoint_that_is_not_the_students_is_named_in_one_message(
    phantom_data: dict[str, Path], tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The teacher's weights, a text file and an exported model.ts (which gave torch.load's advice to load it with
    weights_only=False, unsafe and beside the point) as --ckpt: one message naming the file and what it is."""
    from kd_components.networks import build_student, build_teacher

    ckpt = tmp_path / "model.pt"
    if kind == "teacher":
        torch.save(build_teacher("demo").state_dict(), ckpt)
        expected = "does not fit the network StridedSegResNet (is it the other bundle's checkpoint"
    elif kind == "text":
        ckpt.write_text("not weights")
        expected = "as PyTorch weights: not a file torch.save wrote"
    else:
        ckpt = tmp_path / "model.ts"
        torch.jit.save(torch.jit.script(build_student()), str(ckpt))
        expected = "is a TorchScript archive (an exported model.ts), not the weights a training saves"
    assert _segment(str(phantom_data["data"]), "-o", str(tmp_path / "out"), "--ckpt", str(ckpt)) == 2
    err = capsys.readouterr().err
    assert expected in err and str(ckpt) in err and "Traceback" not in err
    assert len(err.splitlines()) < 8  # a summary of the keys, not hundreds of them


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--device", "gpu"], "unknown device 'gpu': use cpu, cuda or cuda:N"),
        (["--threads", "-2"], "--threads -2: give a positive number of CPU threads"),
        pytest.param(
            ["--device", "cuda:0"],
            "--device cuda:0: CUDA is not available on this machine; use --device cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_a_wrong_device_or_thread_count_is_one_line(
    phantom_data: dict[str, Path],
    weights: Path,
    tmp_path: Path,
    option: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["segment", "--no-progress", str(phantom_data["data"]), "-o", str(tmp_path), "--ckpt", str(weights)]
    assert main([*argv, "--engine", "torch", *option]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_failed_write_is_named_and_the_next_cases_are_tried(
    phantom_data: dict[str, Path],
    weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A full disk raised a traceback and the later cases were never tried."""
    import errno

    from kd_components.segment import Segmenter

    first, second = (p.name for p in sorted(phantom_data["data"].iterdir()) if p.is_dir())
    original = Segmenter.write

    def full_once(self: Segmenter, segmentation, output_dir):
        if segmentation.case_id == first:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, segmentation, output_dir)

    monkeypatch.setattr(Segmenter, "write", full_once)
    assert _segment(str(phantom_data["data"]), "-o", str(tmp_path), "--ckpt", str(weights)) == 1
    assert f"{first}: cannot write to {tmp_path} (No space left on device)" in capsys.readouterr().err
    assert [r["case_id"] for r in json.loads((tmp_path / "volumes.json").read_text())] == [second]


def test_an_unwritable_export_cache_names_the_way_out(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the given cache folder nor the user cache (no writable HOME) can be written: a traceback became a
    message that says what to pass."""
    import kd_components.segment.engines as engines
    from kd_components.segment import EngineError, cached_export

    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folders would go")
    monkeypatch.setattr(engines, "USER_CACHE", blocked / "user-cache")
    with pytest.raises(EngineError, match="pass --cache-dir with a writable folder"):
        cached_export(build_student().eval(), weights, (32, 32, 32), blocked / "cache", log=lambda line: None)


def test_int8_calibration_passes_over_an_invalid_first_case(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    """An all-zero first case left the calibration without brain voxels, and the valid case was not segmented."""
    import nibabel as nib
    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(phantom_data["data"], data)
    empty = sorted(p for p in data.iterdir() if p.is_dir())[0]
    for scan in empty.glob("*.nii.gz"):
        image = nib.load(scan)
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.int16), image.affine), scan)
    argv = ["segment", "--no-progress", str(data), "-o", str(tmp_path / "out"), "--ckpt", str(weights)]
    argv += ["--engine", "openvino", "--precision", "int8", "--calibration-cases", "1", "--cache-dir", str(tmp_path)]
    assert main(argv) == 1  # the empty case is named; the other is segmented
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1


def test_a_truncated_scan_is_named_by_its_file(
    phantom_data: dict[str, Path], weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .nii.gz cut short after its header (a copy interrupted): ``cannot be read (EOFError: ...)`` named the case
    only; now the file too, and the other case is segmented."""
    data = tmp_path / "data"
    shutil.copytree(phantom_data["data"], data)
    first, second = sorted(p for p in data.iterdir() if p.is_dir())
    scan = first / f"{first.name}-t2f.nii.gz"
    scan.write_bytes(scan.read_bytes()[: scan.stat().st_size // 2])
    assert _segment(str(data), "-o", str(tmp_path / "out"), "--ckpt", str(weights)) == 1
    err = capsys.readouterr().err
    assert f"{first.name}: {scan}: cannot be read as NIfTI (" in err, err[-2000:]
    assert (tmp_path / "out" / f"{second.name}.nii.gz").is_file()


def test_a_checkpoint_path_that_is_no_file_says_so(
    phantom_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ckpt /dev/null`` (or a folder) was said not to exist."""
    case = str(next(p for p in sorted(phantom_data["data"].iterdir()) if p.is_dir()))
    for ckpt in ("/dev/null", str(tmp_path)):
        assert _segment(case, "-o", str(tmp_path / "out"), "--ckpt", ckpt) == 2
        assert f"checkpoint {ckpt} is not a file (a folder or a device)" in capsys.readouterr().err
