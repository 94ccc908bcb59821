"""The real-scan measurement and the intensity calibration (kd_lab/real_scans.py, kd_lab/calibration.py), on small
synthetic cases made here: no real scan, no trained network."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kd_components.constants import ET_LABEL, MODALITIES, NETC_LABEL, SNFH_LABEL
from kd_lab.calibration import (
    CLASSES,
    class_masks,
    kmeans_1d,
    local_std,
    measure_case,
    normal_enhancement,
    pool_cases,
    render_calibration_section,
    window_voxels,
)
from kd_lab.real_scans import (
    MEASUREMENT_END,
    MEASUREMENT_HEADING,
    MEASUREMENT_START,
    ModelMeasurement,
    ModelSpec,
    NoRealScansError,
    case_table,
    labelled_cases,
    place_section,
    plot_model_overlay,
    render_measurement_section,
    score_predictions,
    segment_command,
)

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- part:start -->", "<!-- part:end -->"


def _script():
    spec = importlib.util.spec_from_file_location("measure_real_scans", REPO / "scripts" / "measure_real_scans.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


# --- the page section ------------------------------------------------------------------------------------------


def test_place_section_replaces_only_the_marked_part() -> None:
    page = f"# Title\n\nintro\n\n## 6. Old\n\n{START}\nold numbers\n{END}\n\n## 7. After\n\ntext\n"
    new = place_section(page, "new numbers\n", START, END, "## 6. Measured")
    assert new == f"# Title\n\nintro\n\n## 6. Old\n\n{START}\nnew numbers\n{END}\n\n## 7. After\n\ntext\n"
    assert place_section(new, "new numbers", START, END, "## 6. Measured") == new  # idempotent


def test_place_section_appends_a_section_when_the_markers_are_absent() -> None:
    page = "# Title\n\n## 5. Open\n\n- item\n"
    new = place_section(page, "numbers", START, END, "## 6. Measured")
    assert new == f"# Title\n\n## 5. Open\n\n- item\n\n## 6. Measured\n\n{START}\nnumbers\n{END}\n"
    assert place_section("", "numbers", START, END, "## 6. Measured") == f"## 6. Measured\n\n{START}\nnumbers\n{END}\n"
    with pytest.raises(ValueError, match="only one of the markers"):
        place_section(f"text\n{START}\nno end\n", "x", START, END, "## 6")


# --- finding the scans, and the script's exit status -----------------------------------------------------------


def test_a_missing_or_empty_folder_is_named_and_the_script_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing, empty = tmp_path / "nowhere", tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no scans here")
    for folder in (missing, empty):
        with pytest.raises(NoRealScansError, match=re.escape(str(folder))):
            labelled_cases(folder)
        status = _script().main(["--data-dir", str(folder), "--calibration", "--page", "", "--phantoms", "0"])
        assert status == 2
        err = capsys.readouterr().err
        assert str(folder) in err and "error" in err


def test_segment_commands_use_the_projects_entry_points(tmp_path: Path) -> None:
    student = ModelSpec("student", tmp_path / "s" / "model.pt", REPO / "bundles" / "distilled_student")
    command = segment_command(student, tmp_path / "data", tmp_path / "out" / "student" / "predictions", threads=1)
    assert command[1:4] == ["-m", "kd_components.cli", "segment"]
    for option, value in (("--ckpt", student.ckpt), ("--bundle", student.bundle), ("--threads", 1)):
        assert command[command.index(option) + 1] == str(value)
    # the ONNX / OpenVINO export is cached in the work folder, never beside the weights
    assert command[command.index("--cache-dir") + 1] == str(tmp_path / "out" / "student" / "cache")
    overlay = REPO / "bundles" / "hybrid_teacher" / "configs" / "demo.json"
    teacher = ModelSpec("teacher", tmp_path / "t" / "model.pt", REPO / "bundles" / "hybrid_teacher", overlay)
    command = segment_command(teacher, tmp_path / "data", tmp_path / "pred", overlay_file=tmp_path / "o.json")
    assert command[1:4] == ["-m", "monai.bundle", "run"]
    assert command[command.index("--data_list_file_path") + 1] == ""  # every case folder of the data folder
    assert command[command.index("--ckpt_dir") + 1] == str(tmp_path / "t")
    assert str(tmp_path / "o.json") in command[command.index("--config_file") + 1]
    with pytest.raises(ValueError, match=r"model\.pt"):
        segment_command(ModelSpec("t", tmp_path / "best.pt", teacher.bundle, overlay), tmp_path, tmp_path)


# --- scoring and drawing on synthetic cases --------------------------------------------------------------------


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _write_case(root: Path, case_id: str, seg: np.ndarray) -> Path:
    folder = root / case_id
    folder.mkdir(parents=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    brain = _ball(seg.shape, tuple(s // 2 for s in seg.shape), min(seg.shape) * 0.45)
    for modality in MODALITIES:
        image = np.where(brain, 100 + 10 * rng.standard_normal(seg.shape), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), folder / f"{case_id}-{modality}.nii.gz")
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), affine), folder / f"{case_id}-seg.nii.gz")
    return folder


def _tumour(shape: tuple[int, int, int]) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    seg[_ball(shape, (12, 12, 10), 6)] = SNFH_LABEL
    seg[_ball(shape, (12, 12, 10), 4)] = NETC_LABEL
    seg[_ball(shape, (12, 12, 10), 4) & ~_ball(shape, (12, 12, 10), 2.5)] = ET_LABEL
    return seg


def test_scores_volumes_and_the_ranking_form_of_lesion_dice(tmp_path: Path) -> None:
    shape = (24, 24, 20)
    data, predictions = tmp_path / "data", tmp_path / "pred"
    predictions.mkdir()
    seg = _tumour(shape)
    for case_id in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"):
        _write_case(data, case_id, seg)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(seg, affine), predictions / "BraTS-GLI-00001-000.nii.gz")  # perfect
    with_fp = seg.copy()
    with_fp[_ball(shape, (3, 3, 16), 1.5)] = SNFH_LABEL  # a false-positive lesion far from the tumour
    nib.save(nib.Nifti1Image(with_fp, affine), predictions / "BraTS-GLI-00002-000.nii.gz")
    # BraTS-GLI-00003-000: no label map (scored as an empty prediction)

    cases = labelled_cases(data)
    assert [c.case_id for c in cases] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"]
    measured, problems = score_predictions(cases, predictions)
    assert problems == []
    perfect, fp, missing = (measured[c.case_id] for c in cases)
    wt_ml = np.count_nonzero(seg) / 1000.0
    assert perfect.values("WT") == pytest.approx(
        {
            "dice": 1.0,
            "matched_lesion_dice": 1.0,
            "ranking_lesion_dice": 1.0,
            "tp": 1,
            "fp": 0,
            "fn": 0,
            "hd95": 0.0,
            "ranking_lesion_hd95": 0.0,
            "pred_ml": wt_ml,
            "ref_ml": wt_ml,
        }
    )
    # the false positive: matched-lesion Dice stays 1, the 2023 ranking form counts it as 0 -> 1 / 2
    assert fp.values("WT")["matched_lesion_dice"] == pytest.approx(1.0)
    assert fp.values("WT")["ranking_lesion_dice"] == pytest.approx(0.5)
    assert fp.values("WT")["fp"] == 1 and fp.values("WT")["dice"] < 1.0
    assert fp.values("ET")["ranking_lesion_dice"] == pytest.approx(1.0)
    assert not missing.segmented and missing.values("TC")["dice"] == 0.0 and missing.values("TC")["pred_ml"] == 0.0
    assert missing.values("TC")["ref_ml"] == pytest.approx(np.isin(seg, (1, 3)).sum() / 1000.0)

    table = case_table(measured)
    assert "BraTS-GLI-00003-000 (no label map)" in table
    mean_wt = next(line for line in table.splitlines() if line.startswith("| **mean of 3** | WT |"))
    # Dice, matched lesion Dice, ranking lesion Dice, TP / FP / FN summed over the cases
    cells = [c.strip() for c in mean_wt.strip("|").split("|")]
    assert cells[3] == f"{(1 + 1 + 0) / 3:.3f}" and cells[4] == f"{(1 + 0.5 + 0) / 3:.3f}"
    assert cells[5] == "2 / 1 / 1"

    image = plot_model_overlay(cases, predictions, "student", tmp_path / "img" / "real_scans_student.png", measured)
    assert image.stat().st_size > 5_000
    result = ModelMeasurement(
        ModelSpec("student", tmp_path / "model.pt", REPO / "bundles" / "distilled_student"),
        ["brats-kd", "segment"],
        1,
        tmp_path / "segment.log",
        measured,
        image,
    )
    page = tmp_path / "docs" / "real_scans.md"
    body = render_measurement_section([result], data, "python scripts/measure_real_scans.py", page, "2026-01-01")
    assert "![student on the real scans](../img/real_scans_student.png)" in body
    assert "lesion Dice (2023 ranking)" in body and "exited with status 1" in body
    assert place_section("", body, MEASUREMENT_START, MEASUREMENT_END, MEASUREMENT_HEADING).startswith("## 6.")


def test_the_main_job_measures_real_scans_only_where_there_are_some(tmp_path: Path) -> None:
    from kd_lab.demo import DemoSettings, _real_scans_section, demo_stages, real_scans_problem

    data = tmp_path / "real"
    _write_case(data, "BraTS-GLI-00001-000", _tumour((24, 24, 20)))
    out = tmp_path / "demo"
    stages = {s.name: s for s in demo_stages(DemoSettings(output_dir=out, real_scans_dir=data))}
    command = stages["real_scans"].command
    assert command[1].endswith("scripts/measure_real_scans.py")
    assert command[command.index("--demo-dir") + 1] == str(out)
    assert command[command.index("--data-dir") + 1] == str(data)
    assert set(stages["real_scans"].depends_on) == {"teacher_train", "student_train"}
    for settings in (
        DemoSettings(output_dir=out, real_scans_dir=tmp_path / "absent"),
        DemoSettings(real_scans_dir=None),
    ):
        assert "real_scans" not in {s.name for s in demo_stages(settings)}
    assert str(tmp_path / "absent") in str(real_scans_problem(DemoSettings(real_scans_dir=tmp_path / "absent")))
    page = tmp_path / "real_scans.md"
    page.write_text(place_section("", "numbers\n\n### teacher", MEASUREMENT_START, MEASUREMENT_END, "## 6. X"))
    assert _real_scans_section(page) == "## Real scans\n\nnumbers\n\n### teacher"


# --- calibration ------------------------------------------------------------------------------------------------

#: Intensity of each class in each modality of the synthetic brain (WM 100 everywhere, so ratios are value / 100).
LEVELS: dict[str, dict[str, float]] = {
    "t1c": {"CSF": 30, "GM": 70, "WM": 100, "NETC": 40, "SNFH": 80, "ET": 220},
    "t1n": {"CSF": 20, "GM": 60, "WM": 100, "NETC": 45, "SNFH": 75, "ET": 70},
    "t2w": {"CSF": 300, "GM": 130, "WM": 100, "NETC": 250, "SNFH": 180, "ET": 150},
    "t2f": {"CSF": 40, "GM": 120, "WM": 100, "NETC": 90, "SNFH": 200, "ET": 160},
}


def _synthetic_brain(shape: tuple[int, int, int] = (48, 48, 40)) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Three tissue slabs (CSF, GM, WM along the first axis) in a box brain, a lesion (ET rim, NETC core, SNFH
    around) in the WM slab, and the true class of each voxel."""
    truth = np.full(shape, "", dtype=object)
    brain = np.zeros(shape, bool)
    brain[2:-2, 2:-2, 2:-2] = True
    x = np.arange(shape[0])[:, None, None] * np.ones(shape)
    truth[brain & (x < 14)] = "CSF"
    truth[brain & (x >= 14) & (x < 24)] = "GM"
    truth[brain & (x >= 24)] = "WM"
    seg = np.zeros(shape, np.uint8)
    centre = (36, 24, 20)
    seg[_ball(shape, centre, 7)] = SNFH_LABEL
    seg[_ball(shape, centre, 4)] = ET_LABEL
    seg[_ball(shape, centre, 2)] = NETC_LABEL
    for name, label in (("NETC", NETC_LABEL), ("SNFH", SNFH_LABEL), ("ET", ET_LABEL)):
        truth[seg == label] = name
    images = {}
    for modality, levels in LEVELS.items():
        image = np.zeros(shape, np.float32)
        for name, value in levels.items():
            image[truth == name] = value
        images[modality] = image
    # texture: a +-10 checkerboard on the grey matter of t2w (its local standard deviation is about 10)
    checker = (np.indices(shape).sum(axis=0) % 2) * 20 - 10
    images["t2w"] = np.where(truth == "GM", images["t2w"] + checker, images["t2w"]).astype(np.float32)
    return images, seg, {"truth": truth, "brain": brain}


def test_kmeans_1d_finds_three_levels() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(m, 3, n) for m, n in ((20, 3000), (60, 5000), (100, 9000))])
    assert kmeans_1d(rng.permutation(values)) == pytest.approx([20, 60, 100], abs=0.5)
    with pytest.raises(ValueError, match="distinct"):
        kmeans_1d(np.array([1.0, 1.0, 2.0]))


def test_window_and_local_std() -> None:
    assert window_voxels((1.0, 1.0, 1.0)) == (3, 3, 3)
    assert window_voxels((1.0, 1.0, 5.0)) == (3, 3, 1)
    assert window_voxels((2.0, 2.0, 2.0)) == (1, 1, 1)
    assert window_voxels((0.5, 0.5, 0.5)) in ((5, 5, 5), (7, 7, 7))
    shape = (9, 9, 9)
    assert np.allclose(local_std(np.full(shape, 7.0)), 0.0)
    checker = (np.indices(shape).sum(axis=0) % 2) * 2.0 - 1.0  # +-1
    inner = local_std(checker)[2:-2, 2:-2, 2:-2]
    assert inner == pytest.approx(np.full(inner.shape, np.sqrt(1 - (1 / 27) ** 2)), abs=1e-5)


def test_class_masks_find_the_tissues_outside_the_dilated_tumour() -> None:
    images, seg, info = _synthetic_brain()
    masks, centres = class_masks(images, seg)
    assert centres == pytest.approx([20, 60, 100])
    truth = info["truth"]
    tumour_near = np.zeros(seg.shape, bool)
    for index in zip(*np.nonzero(seg), strict=True):  # the ball of radius 3 voxels around every tumour voxel
        lo = [max(i - 3, 0) for i in index]
        tumour_near[lo[0] : index[0] + 4, lo[1] : index[1] + 4, lo[2] : index[2] + 4] |= True
    for name in ("CSF", "GM", "WM"):
        assert not (masks[name] & (truth != name)).any(), name  # every voxel taken is of that class
        assert not (masks[name] & (seg > 0)).any()
    # all of the class outside a box of 3 voxels around the tumour is found (the ball is inside that box)
    assert ((truth == "WM") & ~tumour_near & ~masks["WM"]).sum() == 0
    assert (masks["WM"] & tumour_near).sum() < ((truth == "WM") & tumour_near).sum()  # the margin excludes some
    for name, label in (("NETC", NETC_LABEL), ("SNFH", SNFH_LABEL), ("ET", ET_LABEL)):
        assert (masks[name] == (seg == label)).all()


def test_measure_case_gives_wm_normalised_medians_and_texture() -> None:
    images, seg, _ = _synthetic_brain()
    scaled = {m: v * 37.5 for m, v in images.items()}  # a scanner's scale cancels in the WM normalisation
    for case in (measure_case("synthetic", images, seg), measure_case("scaled", scaled, seg)):
        for modality, levels in LEVELS.items():
            assert case.wm_median[modality] == pytest.approx(100 * (37.5 if case.case_id == "scaled" else 1))
            for name in CLASSES:
                entry = case.stats[modality][name]
                tolerance = 0.11 if (modality, name) == ("t2w", "GM") else 1e-6  # the checkerboard's +-10
                assert entry["median"] == pytest.approx(levels[name] / 100, abs=tolerance), (modality, name)
                assert entry["q25"] <= entry["median"] <= entry["q75"]
        assert case.stats["t1n"]["WM"]["texture"] == pytest.approx(0.0, abs=1e-6)  # uniform, far from edges
        assert case.stats["t2w"]["GM"]["texture"] == pytest.approx(0.10, abs=0.01)  # the checkerboard: std 10 / 100
        assert case.stats["t2w"]["GM"]["q75"] - case.stats["t2w"]["GM"]["q25"] == pytest.approx(0.2, abs=1e-6)
    pooled = pool_cases([case, case])
    assert pooled["t2f"]["SNFH"]["median"] == pytest.approx(2.0) and pooled["t2f"]["SNFH"]["cases"] == 2
    assert pooled["t2w"]["GM"]["texture"] == pytest.approx(case.stats["t2w"]["GM"]["texture"], abs=1e-6)


def test_a_case_without_et_and_the_calibration_tables() -> None:
    images, seg, _ = _synthetic_brain()
    no_et = measure_case("no-et", images, np.where(seg == ET_LABEL, NETC_LABEL, seg).astype(np.uint8))
    assert "ET" not in no_et.stats["t1c"] and "NETC" in no_et.stats["t1c"]
    full = measure_case("full", images, seg)
    result = {
        "settings": {"pool_sample": 50_000},
        "real": {"cases": {c.case_id: c.as_dict() for c in (no_et, full)}, "pooled": pool_cases([no_et, full])},
        "phantoms": {"seed": 100, "count": 1, "cases": {}, "pooled": pool_cases([full])},
    }
    json.dumps(result)  # plain JSON
    text = render_calibration_section(result, "python scripts/measure_real_scans.py --calibration", "a CPU")
    assert text.count("| class | no-et | full | real, pooled | phantoms, pooled |") == len(MODALITIES)
    et_t1c = next(line for line in text.splitlines()[text.splitlines().index("**t1c**") :] if line.startswith("| ET"))
    assert et_t1c.startswith("| ET | — | 2.20 [2.20, 2.20] |")
    enhancement = text.split("**t1c's enhancing normal structures**")[1].splitlines()
    assert [line.split(" |")[0] for line in enhancement if line.startswith("| ")][1:] == ["| no-et", "| full"]
    result["phantoms"]["cases"] = {"p": full.as_dict(), "q": no_et.as_dict()}
    rendered = render_calibration_section(result, "command")
    assert "| phantoms, mean [lowest, highest] of 2 | " in rendered


def test_normal_enhancement_measures_vessels_and_dura_away_from_the_tumour() -> None:
    """A box brain at 100 on t1c and t1n (all four images), with 1 % of its inner voxels at 250 on t1c (vessels),
    half of its edge at 300 on t1c (dura) and a tumour at 1000 on t1c: vessels and dura are measured, the tumour
    and its 5 mm margin are not, and a scanner's scale cancels."""
    shape = (40, 40, 40)
    brain = np.zeros(shape, bool)
    brain[4:-4, 4:-4, 4:-4] = True
    t1n = np.where(brain, 100.0, 0.0).astype(np.float32)
    t1c = t1n.copy()
    inner = brain.copy()
    inner[:8], inner[-8:], inner[:, :8], inner[:, -8:], inner[:, :, :8], inner[:, :, -8:] = (False,) * 6
    vessels = inner & (np.arange(t1c.size).reshape(shape) % 100 == 0)
    t1c[vessels] = 250.0
    t1c[4:-4, 4, 4:-4] = 300.0  # the dura along one face of the brain
    seg = np.zeros(shape, np.uint8)
    seg[18:22, 18:22, 18:22] = ET_LABEL
    t1c[seg > 0] = 1000.0
    images = {"t1c": t1c, "t1n": t1n, "t2w": t1n, "t2f": t1n}
    for scale in (1.0, 7.5):
        measured = normal_enhancement({m: v * scale for m, v in images.items()}, seg, (1.0, 1.0, 1.0))
        assert measured == pytest.approx({"upper": 2.0, "lower": 0.0, "edge": 3.0, "inner_lead": 1.5})
    # at 2 mm the same distances are fewer voxels: the tumour's margin still hides the tumour
    assert normal_enhancement(images, seg, (2.0, 2.0, 2.0))["upper"] == pytest.approx(2.0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
