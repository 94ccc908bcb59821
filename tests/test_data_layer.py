"""Case discovery, validation (one test per kind of bad case) and datalists."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from kd_components.constants import MODALITIES, SEG_SUFFIX, case_file_name
from kd_components.data.brats import InvalidCaseError, discover_cases, validate_case, validate_cases
from kd_components.data.datalist import assign_folds, build_datalist, load_datalist_split, split_fold
from kd_components.io import save_nifti_atomic
from tests.conftest import TINY_SHAPE, brats_kd, tiny_label

MakeCase = Callable[..., Path]


def _scan(shape: tuple[int, ...] = TINY_SHAPE) -> np.ndarray:
    """A scan with contrast (a constant one is a problem of its own)."""
    return np.random.default_rng(3).uniform(1, 100, shape).astype(np.float32)


def _problems(folder: Path, **kwargs) -> list[str]:
    (case,) = [c for c in discover_cases(folder.parent) if c.case_id == folder.name]
    return [str(p) for p in validate_case(case, **kwargs).problems]


def test_discovery_finds_all_tasks_at_any_depth(make_case: MakeCase, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for task in ("GLI", "MEN", "MET", "PED", "SSA", "SYN"):
        make_case(f"BraTS-{task}-00002-001")
    make_case("BraTS-GLI-00003-000", root=root / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", labelled=False)
    (root / "notes").mkdir()
    (root / "BraTS-XYZ-00000-000").mkdir()  # not a BraTS task: not a case
    cases = discover_cases(root)
    assert [c.case_id for c in cases] == sorted(c.case_id for c in cases)
    assert {c.task for c in cases} == {"GLI", "MEN", "MET", "PED", "SSA", "SYN"}
    nested = next(c for c in cases if c.case_id == "BraTS-GLI-00003-000")
    assert nested.label is None and list(nested.images) == list(MODALITIES)
    assert all(not c.problems for c in cases)


def test_discovery_errors(make_case: MakeCase, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_cases(tmp_path / "nowhere")
    make_case("BraTS-GLI-00001-000")
    make_case("BraTS-GLI-00001-000", root=tmp_path / "data" / "copy")
    with pytest.raises(ValueError, match="duplicate case id BraTS-GLI-00001-000"):
        discover_cases(tmp_path / "data")


def test_valid_case_has_no_problem_and_label_counts(make_case: MakeCase) -> None:
    folder = make_case()
    (case,) = discover_cases(folder.parent)
    report = validate_case(case)
    assert report.ok, report.problems
    assert report.shape == TINY_SHAPE and report.spacing == (1.0, 1.0, 1.0)
    values, counts = np.unique(tiny_label(), return_counts=True)
    assert report.label_counts == dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_missing_modality(make_case: MakeCase) -> None:
    folder = make_case()
    (folder / case_file_name(folder.name, "t2f")).unlink()
    (problem,) = _problems(folder)
    assert folder.name in problem and "-t2f.nii.gz" in problem and "missing modality 't2f'" in problem
    assert "files present" in problem


def test_ambiguous_extension(make_case: MakeCase) -> None:
    folder = make_case()
    save_nifti_atomic(np.ones(TINY_SHAPE), np.eye(4), folder / case_file_name(folder.name, "t1n", ".nii"))
    (problem,) = _problems(folder)
    assert "ambiguous" in problem and "t1n" in problem


def test_shape_mismatch_between_modalities(make_case: MakeCase) -> None:
    folder = make_case(overrides={"t2w": _scan((12, 10, 9))})
    (problem,) = _problems(folder)
    assert "-t2w.nii.gz" in problem and "shape (12, 10, 9) differs from" in problem and "-t1c.nii.gz" in problem


def test_affine_mismatch_between_modalities(make_case: MakeCase) -> None:
    folder = make_case()
    shifted = np.diag([-1.0, -1.0, 1.0, 1.0])
    shifted[0, 3] = 5.0
    save_nifti_atomic(_scan(), shifted, folder / case_file_name(folder.name, "t1n"))
    (problem,) = _problems(folder)
    assert "-t1n.nii.gz" in problem and "affine differs" in problem and "5 mm" in problem
    # a difference below the tolerance is accepted
    shifted[0, 3] = 1e-5
    save_nifti_atomic(_scan(), shifted, folder / case_file_name(folder.name, "t1n"))
    assert _problems(folder) == []


@pytest.mark.parametrize("shape", [(12, 10), (12, 10, 8, 2)])
def test_volume_that_is_not_3d(make_case: MakeCase, shape: tuple[int, ...]) -> None:
    folder = make_case(overrides={"t1c": np.ones(shape, np.float32)})
    (problem,) = _problems(folder)
    assert "-t1c.nii.gz" in problem and f"expected a 3D volume, got {len(shape)}D" in problem


def test_nan_and_inf_voxels(make_case: MakeCase) -> None:
    data = np.ones(TINY_SHAPE, np.float32)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.nan, np.inf
    folder = make_case(overrides={"t2w": data})
    (problem,) = _problems(folder)
    assert "-t2w.nii.gz" in problem and "non-finite voxels (2 NaN, 1 Inf)" in problem


def test_all_zero_scan(make_case: MakeCase) -> None:
    folder = make_case(overrides={"t1n": np.zeros(TINY_SHAPE, np.float32)})
    (problem,) = _problems(folder)
    assert "-t1n.nii.gz" in problem and "all voxels are zero" in problem


@pytest.mark.parametrize("bad", [4, 7])
def test_unknown_label_values(make_case: MakeCase, bad: int) -> None:
    seg = tiny_label()
    seg[0, 0, 0] = bad
    folder = make_case(seg=seg)
    (problem,) = _problems(folder)
    assert "-seg.nii.gz" in problem and f"unknown label values [{bad}]" in problem
    assert ("et_label=4" in problem) == (bad == 4)


def test_legacy_et_label_accepted_when_asked(make_case: MakeCase) -> None:
    folder = make_case(seg=tiny_label(et=4))
    assert _problems(folder, et_label=4) == []
    assert "unknown label values [4]" in _problems(folder)[0]


def test_non_integer_segmentation(make_case: MakeCase) -> None:
    seg = tiny_label().astype(np.float32)
    seg[0, 0, 0] = 0.5
    folder = make_case(seg=seg)
    (problem,) = _problems(folder)
    assert "-seg.nii.gz" in problem and "non-integer" in problem


def test_segmentation_shape_differs_from_images(make_case: MakeCase) -> None:
    folder = make_case(seg=np.zeros((12, 10, 7), np.uint8))
    (problem,) = _problems(folder)
    assert "-seg.nii.gz" in problem and "shape (12, 10, 7) differs" in problem


def test_truncated_gzip(make_case: MakeCase) -> None:
    folder = make_case()
    path = folder / case_file_name(folder.name, "t2f")
    path.write_bytes(path.read_bytes()[:200])
    (problem,) = _problems(folder)
    assert "-t2f.nii.gz" in problem and "cannot be read as NIfTI" in problem


def test_empty_file_and_not_nifti(make_case: MakeCase) -> None:
    folder = make_case()
    (folder / case_file_name(folder.name, "t1c")).write_bytes(b"")
    with gzip.open(folder / case_file_name(folder.name, SEG_SUFFIX), "wb") as f:
        f.write(b"this is a text file, not an image\n" * 20)
    problems = _problems(folder)
    assert len(problems) == 2
    assert all("cannot be read as NIfTI" in p for p in problems)
    assert any("-t1c.nii.gz" in p for p in problems) and any("-seg.nii.gz" in p for p in problems)


def test_all_problems_of_a_case_are_reported_together(make_case: MakeCase) -> None:
    seg = tiny_label()
    seg[0, 0, 0] = 7
    folder = make_case(seg=seg, overrides={"t1n": np.zeros(TINY_SHAPE, np.float32)})
    (folder / case_file_name(folder.name, "t2w")).unlink()
    problems = _problems(folder)
    assert len(problems) == 3


def _labelled_tree(make_case: MakeCase, n_labelled: int, n_unlabelled: int) -> Path:
    for i in range(n_labelled):
        seg = tiny_label()
        if i % 3 == 0:
            seg[seg == 3] = 1  # no enhancing tumour
        folder = make_case(f"BraTS-SYN-{i:05d}-000", seg=seg, seed=i)
    for i in range(n_labelled, n_labelled + n_unlabelled):
        folder = make_case(f"BraTS-SYN-{i:05d}-000", labelled=False, seed=i)
    return folder.parent


def test_datalist_loads_with_monai_and_paths_are_relative(make_case: MakeCase, tmp_path: Path) -> None:
    root = _labelled_tree(make_case, 10, 3)
    out = tmp_path / "lists" / "datalist.json"
    args = ["--dataset-dir", str(root), "--output", str(out), "--num-folds", "5", "--quiet", "--workers", "1"]
    assert brats_kd("datalist", *args) == 0
    raw = json.loads(out.read_text())
    assert raw["numTraining"] == 10 and raw["numTest"] == 3 and raw["invalid"] == []
    first = raw["training"][0]
    assert set(first) == {"case_id", "image", "label", "fold"}
    assert first["image"] == [f"{first['case_id']}/{first['case_id']}-{m}.nii.gz" for m in MODALITIES]
    assert all("label" not in e and "fold" not in e for e in raw["testing"])
    loaded = load_decathlon_datalist(out, data_list_key="training", base_dir=root)
    assert all(Path(p).exists() for e in loaded for p in [*e["image"], e["label"]])
    assert sorted(e["fold"] for e in loaded) == sorted([0, 1, 2, 3, 4] * 2)
    val = split_fold(loaded, 2, validation=True)
    train = split_fold(loaded, 2)
    assert len(val) == 2 and len(train) == 8 and not {e["case_id"] for e in val} & {e["case_id"] for e in train}
    with pytest.raises(ValueError, match="fold 7 is not in the datalist"):
        split_fold(loaded, 7)


def test_folds_are_deterministic_and_stratified(make_case: MakeCase) -> None:
    root = _labelled_tree(make_case, 12, 0)
    reports = validate_cases(discover_cases(root), workers=1)
    first = assign_folds(reports, 3, seed=0)
    assert first == assign_folds(reports, 3, seed=0)
    assert first != assign_folds(reports, 3, seed=1)
    no_et = [r.case.case_id for r in reports if 3 not in (r.label_counts or {})]
    assert len(no_et) == 4
    # each fold has the same number of cases and the cases without ET are spread over the folds
    assert sorted(list(first.values()).count(k) for k in range(3)) == [4, 4, 4]
    assert len({first[c] for c in no_et}) == 3
    with pytest.raises(ValueError, match="cannot make 20 folds from 12 labelled cases with tumour"):
        assign_folds(reports, 20)


def test_invalid_cases_stop_the_run_or_are_skipped_and_listed(
    make_case: MakeCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _labelled_tree(make_case, 6, 1)
    (root / "BraTS-SYN-00001-000" / case_file_name("BraTS-SYN-00001-000", "t1n")).unlink()
    seg = tiny_label()
    seg[0, 0, 0] = 4
    save_nifti_atomic(
        seg, np.diag([-1.0, -1.0, 1.0, 1.0]), root / "BraTS-SYN-00004-000" / "BraTS-SYN-00004-000-seg.nii.gz"
    )
    out = tmp_path / "datalist.json"
    args = ["--dataset-dir", str(root), "--output", str(out), "--num-folds", "2", "--quiet", "--workers", "1"]
    assert brats_kd("datalist", *args) == 1
    err = capsys.readouterr().err
    assert "2 of 7 cases are invalid" in err
    assert "BraTS-SYN-00001-000: BraTS-SYN-00001-000-t1n.nii.gz: missing modality 't1n'" in err
    assert "BraTS-SYN-00004-000: BraTS-SYN-00004-000-seg.nii.gz: unknown label values [4]" in err
    assert not out.exists()

    assert brats_kd("datalist", *args, "--skip-invalid") == 0
    captured = capsys.readouterr()
    assert "skipped 2 invalid case(s)" in captured.err and "BraTS-SYN-00004-000" in captured.err
    raw = json.loads(out.read_text())
    kept = {e["case_id"] for e in raw["training"] + raw["testing"]}
    assert "BraTS-SYN-00001-000" not in kept and "BraTS-SYN-00004-000" not in kept and len(kept) == 5
    assert {p["case_id"] for p in raw["invalid"]} == {"BraTS-SYN-00001-000", "BraTS-SYN-00004-000"}


def test_empty_dataset_and_all_invalid(make_case: MakeCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert brats_kd("datalist", "--dataset-dir", str(tmp_path / "empty"), "--output", str(tmp_path / "x.json")) == 1
    assert "no BraTS case folders" in capsys.readouterr().err
    folder = make_case(overrides={"t1c": np.zeros(TINY_SHAPE, np.float32)})
    reports = validate_cases(discover_cases(folder.parent), workers=1)
    with pytest.raises(InvalidCaseError, match="all voxels are zero"):
        build_datalist(reports, folder.parent)
    with pytest.raises(ValueError, match="no usable BraTS case"):
        build_datalist(reports, folder.parent, skip_invalid=True)


def test_parallel_validation_matches_serial(make_case: MakeCase) -> None:
    root = _labelled_tree(make_case, 4, 1)
    cases = discover_cases(root)
    serial = validate_cases(cases, workers=1)
    parallel = validate_cases(cases, workers=2)
    assert [(r.case.case_id, r.label_counts, r.problems) for r in serial] == [
        (r.case.case_id, r.label_counts, r.problems) for r in parallel
    ]


def test_load_datalist_split(make_case: MakeCase, tmp_path: Path) -> None:
    root = _labelled_tree(make_case, 6, 2)
    out = tmp_path / "datalist.json"
    assert brats_kd("datalist", "--dataset-dir", str(root), "--output", str(out), "--num-folds", "3", "--quiet") == 0
    train = load_datalist_split(out, root, "train", fold=1)
    val = load_datalist_split(out, root, "validation", fold=1)
    test = load_datalist_split(out, root, "testing")
    assert len(train) == 4 and len(val) == 2 and len(test) == 2
    assert len(load_datalist_split(out, root, "labelled")) == 6
    assert all(Path(p).is_absolute() and Path(p).exists() for e in train + test for p in e["image"])
    with pytest.raises(ValueError, match="unknown split"):
        load_datalist_split(out, root, "everything")
    raw = json.loads(out.read_text())
    raw["training"][0]["label"] = "../../etc/passwd"
    out.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="escapes the data set root"):
        load_datalist_split(out, root, "labelled")
    raw["training"][0]["label"] = raw["training"][1]["label"]
    raw["training"][1]["case_id"] = raw["training"][0]["case_id"]
    out.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"duplicate case ids in 'training': {raw['training'][0]['case_id']}"):
        load_datalist_split(out, root, "labelled")
    out.write_text(json.dumps(raw | {"training": [], "testing": []}))
    for split in ("labelled", "testing"):
        with pytest.raises(ValueError, match=f"split '{split}' .* is empty"):
            load_datalist_split(out, root, split)


def test_atomic_writes_leave_no_temporary_file_and_use_normal_permissions(tmp_path: Path) -> None:
    from kd_components.io import atomic_path

    target = tmp_path / "out" / "case.nii.gz"
    save_nifti_atomic(tiny_label(), np.eye(4), target)
    assert [p.name for p in target.parent.iterdir()] == ["case.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as if opened normally, not mkstemp's 0600
    with pytest.raises(RuntimeError, match="boom"), atomic_path(tmp_path / "out" / "other.json") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert [p.name for p in target.parent.iterdir()] == ["case.nii.gz"]
