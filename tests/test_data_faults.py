"""Data-layer faults users hit, each made on purpose on small hand-made files: folders that discovery does not
take, numbers that overflow float32, files of unusual types, channel order, datalist schema errors and output
name collisions in batch inference."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from kd_components.constants import MAX_ABS_INTENSITY, MODALITIES, case_file_name
from kd_components.data import brats
from kd_components.data.brats import discover_cases, find_cases, validate_case
from kd_components.data.datalist import load_datalist_split
from kd_components.data.screening import screen_inference_cases
from kd_components.io import save_nifti_atomic
from tests.conftest import TINY_SHAPE, brats_kd

MakeCase = Callable[..., Path]
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def _screen(*args: object, **kwargs: object):
    """:func:`screen_inference_cases` on the small synthetic cases here, which are no brains: the plausibility checks
    (tests/test_plausibility.py) are off."""
    return screen_inference_cases(*args, plausibility=False, **kwargs)


def _prepare(root: Path, out: Path, *extra: str) -> int:
    args = ["--dataset-dir", str(root), "--output", str(out), "--num-folds", "2", "--quiet", "--workers", "1"]
    return brats_kd("datalist", *args, *extra)


def _problems_of(folder: Path) -> list[str]:
    (case,) = [c for c in discover_cases(folder.parent) if c.case_id == folder.name]
    return [str(p) for p in validate_case(case).problems]


# --- 1. folders that discovery does not take -------------------------------------------------------------------


def _renamed_case(make_case: MakeCase, root: Path, cid: str, folder_name: str) -> Path:
    """A valid case ``cid`` (files named for ``cid``) in a folder renamed to ``folder_name``."""
    folder = make_case(cid, root=root.parent / "staging")
    target = root / folder_name
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)
    return target


def _tree_with_odd_folders(make_case: MakeCase, tmp_path: Path) -> Path:
    """Seven case folders: two plain ones, three with names that are not case ids, one in lower case (lower-case
    files too) and one under a symlinked sub-folder."""
    root = tmp_path / "data"
    for i in (1, 2):
        make_case(f"BraTS-SYN-0000{i}-000", seed=i)
    _renamed_case(make_case, root, "BraTS-SYN-00009-000", "BraTS-SYN-00009-000 ")
    _renamed_case(make_case, root, "BraTS-SYN-00010-000", "BraTS-SYN-00010-000 (copy)")
    _renamed_case(make_case, root, "BraTS-GLI-00012-000", "BraTS-GLI-00012-000_ü")
    make_case("brats-syn-00011-000", seed=11)
    elsewhere = tmp_path / "elsewhere"
    make_case("BraTS-SYN-00013-000", root=elsewhere, seed=13)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    return root


def test_prepare_datalist_names_every_folder_it_does_not_take(
    make_case: MakeCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _tree_with_odd_folders(make_case, tmp_path)
    out = tmp_path / "datalist.json"
    assert _prepare(root, out) == 1
    err = capsys.readouterr().err
    assert "3 folder(s) under" in err and "not taken as cases" in err
    assert "'BraTS-SYN-00009-000 '" in err and "did you mean 'BraTS-SYN-00009-000'?" in err
    assert "'BraTS-SYN-00010-000 (copy)'" in err and "did you mean 'BraTS-SYN-00010-000'?" in err
    assert "'BraTS-GLI-00012-000_ü'" in err and "did you mean 'BraTS-GLI-00012-000'?" in err
    assert "BraTS-<TASK>-<5 digits>-<3 digits>" in err
    assert not out.exists()

    assert _prepare(root, out, "--skip-invalid") == 0
    captured = capsys.readouterr()
    raw = json.loads(out.read_text())
    taken = {e["case_id"] for e in raw["training"] + raw["testing"]}
    assert taken == {"BraTS-SYN-00001-000", "BraTS-SYN-00002-000", "brats-syn-00011-000", "BraTS-SYN-00013-000"}
    assert sorted(p["folder"] for p in raw["not_cases"]) == sorted(
        ["BraTS-SYN-00009-000 ", "BraTS-SYN-00010-000 (copy)", "BraTS-GLI-00012-000_ü"]
    )
    assert all("is not a BraTS case id" in p["problem"] for p in raw["not_cases"])
    assert "3 folder(s) not taken as cases" in captured.out and "3 folder(s) under" in captured.err
    linked = next(e for e in raw["training"] if e["case_id"] == "BraTS-SYN-00013-000")
    assert linked["image"][0] == "linked/BraTS-SYN-00013-000/BraTS-SYN-00013-000-t1c.nii.gz"
    lower = next(e for e in raw["training"] if e["case_id"] == "brats-syn-00011-000")
    assert lower["image"][0] == "brats-syn-00011-000/brats-syn-00011-000-t1c.nii.gz"
    # the written datalist loads, paths through the symlink included
    assert len(load_datalist_split(out, root, "labelled")) == 4


def test_batch_inference_without_a_datalist_reports_folders_not_taken(make_case: MakeCase, tmp_path: Path) -> None:
    root = _tree_with_odd_folders(make_case, tmp_path)
    screened = _screen(root, "")
    assert {i["case_id"] for i in screened.items} == {
        "BraTS-SYN-00001-000",
        "BraTS-SYN-00002-000",
        "brats-syn-00011-000",
        "BraTS-SYN-00013-000",
    }
    skipped = {p.case_id: p.problem for p in screened.skipped}
    assert set(skipped) == {"BraTS-SYN-00009-000 ", "BraTS-SYN-00010-000 (copy)", "BraTS-GLI-00012-000_ü"}
    assert "did you mean 'BraTS-SYN-00010-000'?" in skipped["BraTS-SYN-00010-000 (copy)"]


def test_brats_file_names_match_case_insensitively(make_case: MakeCase) -> None:
    folder = make_case("BraTS-GLI-00001-000")
    for path in list(folder.iterdir()):
        path.rename(folder / path.name.upper().replace(".NII.GZ", ".nii.gz"))
    lower = make_case("brats-men-00002-000", labelled=False)
    cases = {c.case_id: c for c in discover_cases(folder.parent)}
    assert set(cases) == {"BraTS-GLI-00001-000", "brats-men-00002-000"}
    assert all(not c.problems for c in cases.values()), [c.problems for c in cases.values()]
    assert cases["brats-men-00002-000"].task == "MEN" and cases["BraTS-GLI-00001-000"].label is not None
    assert _problems_of(folder) == [] and _problems_of(lower) == []


def test_symlinked_case_folder_is_followed_and_loops_are_not(
    make_case: MakeCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    make_case("BraTS-GLI-00001-000")
    outside = make_case("BraTS-GLI-00002-000", root=tmp_path / "outside")
    (root / "BraTS-GLI-00002-000").symlink_to(outside, target_is_directory=True)
    (root / "loops").mkdir()
    (root / "loops" / "back").symlink_to(root, target_is_directory=True)
    discovery = find_cases(root)
    assert [c.case_id for c in discovery.cases] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]
    assert discovery.not_cases == [] and any("loops/back" in n for n in discovery.notes)
    out = tmp_path / "datalist.json"
    assert _prepare(root, out) == 0, capsys.readouterr().err
    raw = json.loads(out.read_text())
    assert raw["training"][1]["label"] == "BraTS-GLI-00002-000/BraTS-GLI-00002-000-seg.nii.gz"
    assert {e["case_id"] for e in load_datalist_split(out, root, "labelled")} == {
        "BraTS-GLI-00001-000",
        "BraTS-GLI-00002-000",
    }


def test_datalist_root_check_is_lexical(make_case: MakeCase, tmp_path: Path) -> None:
    """A symlink inside the data set root may point anywhere; a ``../`` path still escapes."""
    root = tmp_path / "data"
    root.mkdir()
    outside = make_case("BraTS-GLI-00003-000", root=tmp_path / "outside")
    (root / "link").symlink_to(outside.parent, target_is_directory=True)
    entry = {
        "case_id": "BraTS-GLI-00003-000",
        "image": [f"link/BraTS-GLI-00003-000/{case_file_name('BraTS-GLI-00003-000', m)}" for m in MODALITIES],
        "label": "link/BraTS-GLI-00003-000/BraTS-GLI-00003-000-seg.nii.gz",
        "fold": 0,
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [entry]}))
    (item,) = load_datalist_split(path, root, "labelled")
    assert item["label"] == str(root / entry["label"])
    path.write_text(json.dumps({"training": [entry | {"label": "../outside/BraTS-GLI-00003-000/x-seg.nii.gz"}]}))
    with pytest.raises(ValueError, match="escapes the data set root"):
        load_datalist_split(path, root, "labelled")


def test_folder_with_nifti_files_but_no_case_name(make_case: MakeCase, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_case("BraTS-GLI-00001-000")
    _renamed_case(make_case, root, "BraTS-GLI-00002-000", "patient7")
    (root / "notes").mkdir()  # no NIfTI files: nothing to report
    discovery = find_cases(root)
    (problem,) = discovery.not_cases
    assert problem.case_id == "patient7" and "'patient7' is not a BraTS case id" in problem.problem
    assert "holds 5 NIfTI file(s)" in problem.problem and "did you mean" not in problem.problem


# --- 2. numbers that overflow float32, and other values the pipeline cannot use ---------------------------------


def _save_with_header(path: Path, data: np.ndarray, sform: np.ndarray = AFFINE, slope: float | None = None) -> None:
    """Save ``data`` with ``sform`` as the only affine (even a singular one) and an optional ``scl_slope``."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_sform(sform, code=1)
    img = nib.Nifti1Image(data, None, header)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))


def _float64_huge() -> np.ndarray:
    return np.random.default_rng(0).uniform(1, 100, TINY_SHAPE) * 1e300


def _int16_ramp() -> np.ndarray:
    return np.arange(int(np.prod(TINY_SHAPE)), dtype=np.int16).reshape(TINY_SHAPE)


def _float32_beyond_bound() -> np.ndarray:
    return np.random.default_rng(0).uniform(1, 100, TINY_SHAPE).astype(np.float32) * np.float32(1e35)


VALUE_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "float64 scaled by 1e300": (
        lambda p: _save_with_header(p, _float64_huge()),
        "values overflow float32",
    ),
    "int16 with scl_slope 1e38": (
        lambda p: _save_with_header(p, _int16_ramp(), slope=1e38),
        "values overflow float32",
    ),
    "float32 beyond the intensity bound": (
        lambda p: _save_with_header(p, _float32_beyond_bound()),
        f"exceeds {MAX_ABS_INTENSITY:.0e}",
    ),
    "constant non-zero scan": (
        lambda p: _save_with_header(p, np.full(TINY_SHAPE, 7.0, np.float32)),
        "all voxels have the same value 7 (constant scan",
    ),
    "values that round to zero in float32": (
        lambda p: _save_with_header(p, np.full(TINY_SHAPE, 1e-300) * np.arange(1, 961).reshape(TINY_SHAPE)),
        "all voxels are zero in float32",
    ),
    "complex-valued image": (
        lambda p: _save_with_header(p, np.ones(TINY_SHAPE, np.complex64)),
        "complex-valued voxels",
    ),
    "zero voxel spacing": (
        lambda p: _save_with_header(p, np.ones(TINY_SHAPE, np.float32), sform=np.diag([-1.0, 0.0, 1.0, 1.0])),
        "singular affine: voxel spacing (1, 0, 1)",
    ),
    "non-finite affine": (
        lambda p: _save_with_header(p, np.ones(TINY_SHAPE, np.float32), sform=np.diag([-1.0, np.nan, 1.0, 1.0])),
        "affine has non-finite values",
    ),
    "RGB24 voxels": (
        lambda p: _save_with_header(p, np.zeros(TINY_SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])),
        "voxels are not scalars",
    ),
}


@pytest.mark.parametrize("fault", list(VALUE_FAULTS))
def test_image_values_the_pipeline_cannot_use_are_rejected(make_case: MakeCase, fault: str) -> None:
    write, expected = VALUE_FAULTS[fault]
    folder = make_case()
    t2w = case_file_name(folder.name, "t2w")
    write(folder / t2w)
    problems = _problems_of(folder)
    mine = [p for p in problems if t2w in p and expected in p]
    assert mine and all(p.startswith(f"{folder.name}: ") for p in mine), problems


def test_scl_slope_is_named_in_the_overflow_message(make_case: MakeCase) -> None:
    folder = make_case()
    _save_with_header(folder / case_file_name(folder.name, "t1n"), _int16_ramp(), slope=1e38)
    (problem,) = _problems_of(folder)
    assert "scl_slope 1e+38" in problem and "-t1n.nii.gz" in problem


def test_values_within_the_bound_and_integer_scans_pass(make_case: MakeCase) -> None:
    folder = make_case()
    _save_with_header(folder / case_file_name(folder.name, "t1n"), _int16_ramp(), slope=2.0)
    big = np.random.default_rng(1).uniform(1, 100, TINY_SHAPE).astype(np.float32) * np.float32(1e17)
    _save_with_header(folder / case_file_name(folder.name, "t2f"), big)
    assert _problems_of(folder) == []


# --- 3. one unusual file must not stop everything ---------------------------------------------------------------


def _rgb_t1c(folder: Path) -> None:
    rgb = np.zeros(TINY_SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, AFFINE), str(folder / case_file_name(folder.name, "t1c")))


def test_rgb_file_is_a_problem_of_its_case_and_the_others_go_on(
    make_case: MakeCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_case("BraTS-GLI-00001-000", seed=1)
    make_case("BraTS-GLI-00002-000", seed=2)
    bad = make_case("BraTS-GLI-00003-000", seed=3)
    _rgb_t1c(bad)
    root, out = bad.parent, tmp_path / "datalist.json"
    assert _prepare(root, out) == 1
    err = capsys.readouterr().err
    assert "BraTS-GLI-00003-000: BraTS-GLI-00003-000-t1c.nii.gz: voxels are not scalars" in err
    assert _prepare(root, out, "--skip-invalid") == 0
    raw = json.loads(out.read_text())
    assert {e["case_id"] for e in raw["training"]} == {"BraTS-GLI-00001-000", "BraTS-GLI-00002-000"}
    assert [p["file"] for p in raw["invalid"]] == ["BraTS-GLI-00003-000-t1c.nii.gz"]

    screened = _screen(root, "")
    assert [i["case_id"] for i in screened.items] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]
    assert [(p.case_id, p.file) for p in screened.skipped] == [
        ("BraTS-GLI-00003-000", "BraTS-GLI-00003-000-t1c.nii.gz")
    ]


@pytest.mark.parametrize("check", ["_check_image", "_check_segmentation", "_check_geometry"])
def test_any_error_in_a_file_check_is_reported_for_that_file(
    make_case: MakeCase, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    folder = make_case()

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(brats, check, boom)
    problems = _problems_of(folder)
    assert problems and all("could not be checked (RuntimeError: unexpected)" in p for p in problems)
    assert all(p.startswith(f"{folder.name}: {folder.name}-") for p in problems)


# --- 4. channel order -------------------------------------------------------------------------------------------


def _entry(cid: str, order: tuple[str, ...] = MODALITIES, labelled: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {"case_id": cid, "image": [f"{cid}/{case_file_name(cid, m)}" for m in order]}
    if labelled:
        entry |= {"label": f"{cid}/{case_file_name(cid, 'seg')}", "fold": 0}
    return entry


def _write_datalist(path: Path, **lists: list[Any]) -> Path:
    path.write_text(json.dumps(lists))
    return path


def test_channel_order_by_file_names_is_checked_for_training(make_case: MakeCase, tmp_path: Path) -> None:
    root = make_case("BraTS-GLI-00001-000").parent
    path = _write_datalist(tmp_path / "dl.json", training=[_entry("BraTS-GLI-00001-000", ("t2f", "t2w", "t1n", "t1c"))])
    with pytest.raises(ValueError) as err:
        load_datalist_split(path, root, "labelled")
    message = str(err.value)
    assert str(path) in message and "'training' entry 0 (BraTS-GLI-00001-000)" in message
    assert "[t2f, t2w, t1n, t1c]" in message and "expected [t1c, t1n, t2w, t2f]" in message


def test_same_file_for_every_modality_is_refused(make_case: MakeCase, tmp_path: Path) -> None:
    root = make_case("BraTS-GLI-00001-000").parent
    entry = _entry("BraTS-GLI-00001-000", ("t1c",) * 4)
    path = _write_datalist(tmp_path / "dl.json", training=[entry])
    with pytest.raises(ValueError, match=r"'training' entry 0 \(BraTS-GLI-00001-000\): 'image' lists the same file"):
        load_datalist_split(path, root, "labelled")


def test_channel_order_in_batch_inference_skips_the_case(make_case: MakeCase, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in (1, 2, 3):
        make_case(f"BraTS-GLI-0000{i}-000", labelled=False, seed=i)
    testing = [
        _entry("BraTS-GLI-00001-000", labelled=False),
        _entry("BraTS-GLI-00002-000", ("t2f", "t2w", "t1n", "t1c"), labelled=False),
        _entry("BraTS-GLI-00003-000", ("t1c",) * 4, labelled=False),
    ]
    path = _write_datalist(tmp_path / "dl.json", training=[], testing=testing)
    screened = _screen(root, path)
    assert [i["case_id"] for i in screened.items] == ["BraTS-GLI-00001-000"]
    reasons = {
        p.case_id: " | ".join(q.problem for q in screened.skipped if q.case_id == p.case_id) for p in screened.skipped
    }
    assert "[t2f, t2w, t1n, t1c]" in reasons["BraTS-GLI-00002-000"]
    assert "the same file" in reasons["BraTS-GLI-00003-000"]


def test_files_without_modality_suffixes_are_allowed(make_case: MakeCase, tmp_path: Path) -> None:
    root = tmp_path / "data"
    folder = make_case("BraTS-GLI-00001-000", labelled=False)
    patient = root / "patient1"
    patient.mkdir()
    for name, modality in zip("abcd", MODALITIES, strict=True):
        os.link(folder / case_file_name(folder.name, modality), patient / f"{name}.nii.gz")
    path = _write_datalist(tmp_path / "dl.json", testing=[{"image": [f"patient1/{n}.nii.gz" for n in "abcd"]}])
    screened = _screen(root, path)
    assert [i["case_id"] for i in screened.items] == ["patient1"] and not screened.skipped


# --- 5. datalist schema errors ----------------------------------------------------------------------------------

SCHEMA_FAULTS: dict[str, tuple[str, str, str]] = {
    # name: (datalist text, split, expected text after "<file>: ")
    "entry without image": (
        json.dumps({"training": [{"case_id": "BraTS-GLI-00001-000", "label": "x-seg.nii.gz", "fold": 0}]}),
        "labelled",
        "'training' entry 0 (BraTS-GLI-00001-000): no 'image'",
    ),
    "training entry without label": (
        json.dumps({"training": [{"case_id": "BraTS-GLI-00001-000", "image": ["a", "b", "c", "d"], "fold": 0}]}),
        "labelled",
        "'training' entry 0 (BraTS-GLI-00001-000): no 'label'",
    ),
    "image as one string": (
        json.dumps({"testing": [{"case_id": "BraTS-GLI-00001-000", "image": "x-t1c.nii.gz"}]}),
        "testing",
        "'testing' entry 0 (BraTS-GLI-00001-000): 'image' is one string ('x-t1c.nii.gz')",
    ),
    "MSD-style testing strings": (
        json.dumps({"testing": ["imagesTs/BRATS_485.nii.gz"]}),
        "testing",
        "'testing' entry 0: a plain string ('imagesTs/BRATS_485.nii.gz')",
    ),
    "fold that is not an integer": (
        json.dumps({"training": [{"image": ["a", "b", "c", "d"], "label": "s", "fold": "1"}]}),
        "labelled",
        "'training' entry 0: 'fold' is '1' (str), expected an integer",
    ),
    "invalid JSON": ('{"training": [', "labelled", "not valid JSON"),
    "no list for the split": (json.dumps({"training": []}), "testing", "no 'testing' list"),
}


@pytest.mark.parametrize("fault", list(SCHEMA_FAULTS))
def test_datalist_schema_errors_name_the_file_and_entry(tmp_path: Path, fault: str) -> None:
    text, split, expected = SCHEMA_FAULTS[fault]
    path = tmp_path / "datalist.json"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_datalist_split(path, tmp_path, split)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message
    if split == "testing":  # batch inference reads datalists the same way
        with pytest.raises(ValueError, match=r"datalist\.json: "):
            _screen(tmp_path, path, split)


def test_missing_datalist_and_missing_image_files(make_case: MakeCase, tmp_path: Path) -> None:
    root = make_case("BraTS-GLI-00001-000").parent
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'nowhere.json'}: datalist file not found")):
        load_datalist_split(tmp_path / "nowhere.json", root, "labelled")
    (root / "BraTS-GLI-00001-000" / case_file_name("BraTS-GLI-00001-000", "t2w")).unlink()
    path = _write_datalist(tmp_path / "dl.json", training=[_entry("BraTS-GLI-00001-000")])
    with pytest.raises(ValueError) as err:
        load_datalist_split(path, root, "labelled")
    assert f"{path}: 'training' entry 0 (BraTS-GLI-00001-000): image file " in str(err.value)
    assert "BraTS-GLI-00001-000-t2w.nii.gz not found" in str(err.value)


# --- 6. the same case twice, and output name collisions, in batch inference --------------------------------------


def test_two_entries_with_the_same_case_id_stop_batch_inference(make_case: MakeCase, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in (1, 2):
        make_case(f"BraTS-GLI-0000{i}-000", labelled=False, seed=i)
    second = _entry("BraTS-GLI-00002-000", labelled=False) | {"case_id": "BraTS-GLI-00001-000"}
    path = _write_datalist(tmp_path / "dl.json", testing=[_entry("BraTS-GLI-00001-000", labelled=False), second])
    with pytest.raises(ValueError, match=r"BraTS-GLI-00001-000 \(entries 0 and 1\)"):
        _screen(root, path)


def test_case_ids_from_folders_that_collide_stop_batch_inference(make_case: MakeCase, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for site in ("siteA", "siteB"):
        folder = make_case("BraTS-GLI-00001-000", labelled=False, root=root / site)
        folder.rename(root / site / "patient1")
    entries = [
        {"image": [f"{site}/patient1/{case_file_name('BraTS-GLI-00001-000', m)}" for m in MODALITIES]}
        for site in ("siteA", "siteB")
    ]
    path = _write_datalist(tmp_path / "dl.json", testing=entries)
    with pytest.raises(ValueError) as err:
        _screen(root, path)
    message = str(err.value)
    assert str(path) in message and "entry 0" in message and "entry 1" in message and "patient1.nii.gz" in message


def test_same_four_images_under_two_case_ids_run_once(make_case: MakeCase, tmp_path: Path) -> None:
    root = make_case("BraTS-GLI-00001-000", labelled=False).parent
    first = _entry("BraTS-GLI-00001-000", labelled=False)
    path = _write_datalist(tmp_path / "dl.json", testing=[first, first | {"case_id": "BraTS-GLI-00099-000"}])
    screened = _screen(root, path)
    assert [i["case_id"] for i in screened.items] == ["BraTS-GLI-00001-000"]
    (problem,) = screened.skipped
    assert problem.case_id == "BraTS-GLI-00099-000"
    assert "same four image files as entry 0 (BraTS-GLI-00001-000)" in problem.problem


def test_discovery_keeps_plain_datasets_unchanged(make_case: MakeCase, tmp_path: Path) -> None:
    """Nothing is reported for a plain data set, also not for a case written by ``save_nifti_atomic``."""
    folder = make_case()
    save_nifti_atomic(np.ones(TINY_SHAPE, np.float32) * 3, AFFINE, tmp_path / "elsewhere" / "x.nii.gz")
    discovery = find_cases(folder.parent)
    assert [c.case_id for c in discovery.cases] == [folder.name] and not discovery.not_cases and not discovery.notes


def test_an_empty_segmentation_trains_in_every_fold_and_is_never_validated(
    make_case: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A validation case with an empty segmentation scored Dice 0 without a word; a healthy brain is kept for
    training (it teaches "no tumour here") in every fold and named."""
    from kd_components.data.datalist import TRAINING_ONLY_FOLD, load_datalist_split

    make_case("BraTS-GLI-00001-000")
    make_case("BraTS-GLI-00002-000", seed=1)
    make_case("BraTS-GLI-00003-000", seg=np.zeros(TINY_SHAPE, np.uint8), seed=2)
    out = tmp_path / "datalist.json"
    args = ["--dataset-dir", str(tmp_path / "data"), "--output", str(out), "--num-folds", "2", "--workers", "1"]
    assert brats_kd("datalist", *args, "--quiet") == 0
    err = capsys.readouterr().err
    assert "note: BraTS-GLI-00003-000: the segmentation holds no tumour (every voxel 0)" in err
    assert "BraTS-GLI-00001-000" not in err
    training = json.loads(out.read_text())["training"]
    assert len(training) == 3
    assert {e["case_id"]: e["fold"] for e in training}["BraTS-GLI-00003-000"] == TRAINING_ONLY_FOLD
    for fold in (0, 1):
        train = [e["case_id"] for e in load_datalist_split(out, tmp_path / "data", "train", fold=fold)]
        validation = [e["case_id"] for e in load_datalist_split(out, tmp_path / "data", "validation", fold=fold)]
        assert "BraTS-GLI-00003-000" in train and "BraTS-GLI-00003-000" not in validation


def test_headers_only_validation_checks_geometry_and_types_without_reading_voxels(
    make_case: Callable[..., Path],
) -> None:
    nan = np.full(TINY_SHAPE, np.nan, np.float32)
    case_dir = make_case("BraTS-GLI-00007-000", overrides={"t1n": nan})
    moved = np.diag([-1.0, -1.0, 1.0, 1.0])
    moved[:3, 3] = 3.0
    save_nifti_atomic(np.ones(TINY_SHAPE, np.complex64), moved, case_dir / "BraTS-GLI-00007-000-t2w.nii.gz")
    case = discover_cases(case_dir.parent)[0]
    full = [str(p) for p in validate_case(case).problems]
    quick = [str(p) for p in validate_case(case, headers_only=True).problems]
    assert any("t1n" in p and "non-finite" in p for p in full)  # the voxels are read in the full check only
    assert not any("t1n" in p for p in quick)
    assert any("t2w" in p and "complex-valued voxels" in p for p in quick)  # the data type is in the header
    assert any("t2w" in p and "affine differs" in p for p in quick)
