"""BraTS challenge metrics (kd_components.evaluation): hand-computed cases, the Ignite metric, ``brats-kd evaluate``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from kd_components.cli import main
from kd_components.constants import MISSED_REGION_HD_MM
from kd_components.evaluation.lesions import score_label_maps, score_region
from kd_components.handlers import CaseScoresWriter, LesionWiseMetrics
from kd_components.postprocess import PostprocessSettings

SHAPE = (20, 20, 20)
A = (slice(2, 6),) * 3  # a 4x4x4 lesion (64 voxels)
B = (slice(12, 16),) * 3  # another, far from A


def mask(*boxes: tuple[slice, ...]) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=bool)
    for box in boxes:
        out[box] = True
    return out


def test_two_lesions_one_missed() -> None:
    scores = score_region(mask(A), mask(A, B))
    assert (scores.tp, scores.fp, scores.fn) == (1, 0, 1)
    # the matched-lesion means (brats-evaluation's lesionwise_dsc_mean) see only the found one, which is exact
    assert scores.matched_lesion_dice == pytest.approx(1.0)
    assert scores.matched_lesion_hd95 == pytest.approx(0.0)
    # the 2023 ranking counts the missed one: Dice (1 + 0) / 2, HD95 (0 + 373.13) / 2
    assert scores.ranking_lesion_dice == pytest.approx(0.5)
    assert scores.ranking_lesion_hd95 == pytest.approx(MISSED_REGION_HD_MM / 2)
    assert scores.dice == pytest.approx(2 * 64 / (64 + 128))  # global: half the tumour found


def test_one_false_positive_lesion() -> None:
    scores = score_region(mask(A, B), mask(A))
    assert (scores.tp, scores.fp, scores.fn) == (1, 1, 0)
    assert scores.matched_lesion_dice == pytest.approx(1.0)  # blind to the false-positive lesion
    assert (scores.ranking_lesion_dice, scores.ranking_lesion_hd95) == (0.5, pytest.approx(MISSED_REGION_HD_MM / 2))
    assert scores.dice == pytest.approx(2 * 64 / (128 + 64))


def test_empty_reference_and_empty_prediction_scores_one() -> None:
    scores = score_region(mask(), mask())
    assert (scores.dice, scores.hd95, scores.nsd) == (1.0, 0.0, 1.0)
    assert (scores.matched_lesion_dice, scores.matched_lesion_hd95) == (1.0, 0.0)
    assert (scores.ranking_lesion_dice, scores.ranking_lesion_hd95) == (1.0, 0.0)
    assert (scores.tp, scores.fp, scores.fn) == (0, 0, 0)


def test_empty_reference_with_a_prediction_scores_zero() -> None:
    scores = score_region(mask(B), mask())
    assert (scores.dice, scores.hd95, scores.nsd) == (0.0, MISSED_REGION_HD_MM, 0.0)
    assert (scores.matched_lesion_dice, scores.matched_lesion_hd95) == (0.0, MISSED_REGION_HD_MM)
    assert (scores.ranking_lesion_dice, scores.ranking_lesion_hd95) == (0.0, MISSED_REGION_HD_MM)
    assert (scores.tp, scores.fp, scores.fn) == (0, 1, 0)


def test_missed_region_gets_the_grid_diagonal_as_hd95() -> None:
    scores = score_region(mask(), mask(A, B))
    assert (
        scores.hd95
        == scores.matched_lesion_hd95
        == scores.ranking_lesion_hd95
        == MISSED_REGION_HD_MM
        == pytest.approx(math.sqrt(240**2 * 2 + 155**2), abs=0.01)
    )
    assert (scores.dice, scores.matched_lesion_dice, scores.ranking_lesion_dice, scores.fn) == (0.0, 0.0, 0.0, 2)


def test_prediction_not_touching_the_reference_is_missed() -> None:
    scores = score_region(mask(B), mask(A))
    assert (scores.tp, scores.fp, scores.fn) == (0, 1, 1)
    assert scores.hd95 == scores.matched_lesion_hd95 == scores.ranking_lesion_hd95 == MISSED_REGION_HD_MM


@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_hd95_is_in_millimetres(spacing: float) -> None:
    # a lesion shifted by one voxel: a quarter of its surface one voxel away, so HD95 is one voxel
    shifted = (slice(3, 7), slice(2, 6), slice(2, 6))
    scores = score_region(mask(shifted), mask(A), spacing=(spacing,) * 3)
    assert scores.matched_lesion_hd95 == scores.ranking_lesion_hd95 == pytest.approx(spacing)  # one lesion, matched
    assert scores.hd95 == pytest.approx(spacing)
    assert scores.matched_lesion_dice == scores.ranking_lesion_dice == pytest.approx(2 * 48 / 128)


def test_label_maps_are_scored_per_region_with_either_et_label() -> None:
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[A] = 2
    ref[3:5, 3:5, 3:5] = 3  # ET inside oedema; no NETC
    pred = ref.copy()
    pred[B] = 1  # a false-positive NETC lesion, also a TC and WT one
    scores = score_label_maps(pred, ref)
    assert list(scores) == ["TC", "WT", "ET", "NETC", "SNFH"]
    assert (scores["ET"].dice, scores["ET"].fp) == (1.0, 0)
    assert (scores["TC"].tp, scores["TC"].fp) == (1, 1)
    assert (scores["NETC"].dice, scores["NETC"].ranking_lesion_dice, scores["NETC"].fp) == (0.0, 0.0, 1)  # no reference
    legacy = score_label_maps(np.where(pred == 3, 4, pred), np.where(ref == 3, 4, ref), et_label=4)
    assert legacy == scores


def regions_tensor(*masks: np.ndarray, spacing: float = 1.0) -> MetaTensor:
    return MetaTensor(torch.as_tensor(np.stack(masks)).float(), affine=torch.diag(torch.tensor([spacing] * 3 + [1.0])))


def test_ignite_metric_reports_means_details_and_a_case_table(tmp_path: Path) -> None:
    metric = LesionWiseMetrics(output_transform=lambda output: output)
    writer = CaseScoresWriter(metric, tmp_path)
    # case 1: TC and WT found, one WT lesion missed, no ET anywhere; case 2: ET false positive
    case1 = (regions_tensor(mask(A), mask(A), mask()), regions_tensor(mask(A), mask(A, B), mask()))
    case2 = (regions_tensor(mask(A), mask(A), mask(B)), regions_tensor(mask(A), mask(A), mask()))
    batches = [([case1[0]], [case1[1]]), ([case2[0]], [case2[1]])]
    engine = Engine(lambda engine, batch: batch)
    engine.state.metric_details = {}
    metric.attach(engine, "lesion_wise")
    writer.attach(engine)
    engine.run(batches, max_epochs=1)
    metrics = engine.state.metrics
    assert set(metrics) == {
        f"{form}_lesion_{m}_{r}"
        for form in ("ranking", "matched")
        for m in ("dice", "hd95")
        for r in ("tc", "wt", "et")
    }
    assert metrics["ranking_lesion_dice_tc"] == pytest.approx(1.0)
    assert metrics["ranking_lesion_dice_et"] == pytest.approx(0.5)  # 1 (both empty) and 0 (false positive)
    assert metrics["ranking_lesion_hd95_et"] == pytest.approx(MISSED_REGION_HD_MM / 2)
    # WT: case 1 found one lesion and missed one (ranking 0.5), case 2 found its lesion (1.0); matched: 1.0 and 1.0
    assert metrics["ranking_lesion_dice_wt"] == pytest.approx(0.75)
    assert metrics["matched_lesion_dice_wt"] == pytest.approx(1.0)
    assert engine.state.metric_details["ranking_lesion_dice_et"].flatten().tolist() == [1.0, 0.0]
    rows = list(csv.DictReader((tmp_path / "brats_metrics.csv").open()))
    assert len(rows) == 2
    assert (rows[0]["tp_wt"], rows[0]["fn_wt"], rows[1]["fp_et"]) == ("1", "1", "1")


def test_ignite_metric_scores_the_post_processed_prediction_under_its_own_names(tmp_path: Path) -> None:
    # a found 4^3 lesion and a one-voxel false positive; the 2 mm^3 rule removes the false positive only
    pred, ref = mask(A), mask(A)
    pred[15, 15, 15] = True
    case = (regions_tensor(pred, pred, mask()), regions_tensor(ref, ref, mask()))
    raw = LesionWiseMetrics(output_transform=lambda output: output)
    post = LesionWiseMetrics(
        output_transform=lambda output: output,
        postprocess=PostprocessSettings({"WT": 2, "TC": 2}),
        suffix="_post",
    )
    writer = CaseScoresWriter(post, tmp_path, filename="brats_metrics_post.csv")
    engine = Engine(lambda engine, batch: batch)
    engine.state.metric_details = {}
    raw.attach(engine, "lesion_wise")
    post.attach(engine, "lesion_wise_post")
    writer.attach(engine)
    engine.run([([case[0]], [case[1]])], max_epochs=1)
    metrics = engine.state.metrics
    assert metrics["matched_lesion_dice_wt"] == pytest.approx(1.0)  # the mean over matched lesions ignores the FP
    assert metrics["ranking_lesion_dice_wt"] == pytest.approx(0.5)  # the ranking counts it
    assert metrics["ranking_lesion_dice_wt_post"] == pytest.approx(1.0)  # gone after post-processing
    rows = list(csv.DictReader((tmp_path / "brats_metrics_post.csv").open()))
    assert (rows[0]["fp_wt"], rows[0]["fp_tc"], rows[0]["dice_wt"]) == ("0", "0", "1.0")
    assert raw.rows[0]["fp_wt"] == 1 and raw.rows[0]["dice_wt"] < 1.0
    with pytest.raises(ValueError, match="region channels"):
        LesionWiseMetrics(regions=("WT",), postprocess=PostprocessSettings())


def save(path: Path, data: np.ndarray, spacing: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return path


def test_evaluate_command_scores_good_cases_and_names_bad_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, preds = tmp_path / "data", tmp_path / "preds"
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[A] = 1
    for n in range(5):
        save(data / f"BraTS-SYN-0000{n}-000" / f"BraTS-SYN-0000{n}-000-seg.nii.gz", ref)
    save(preds / "BraTS-SYN-00000-000.nii.gz", ref)  # good
    # 00001: no prediction
    save(preds / "BraTS-SYN-00002-000.nii.gz", ref[:10])  # shape
    save(preds / "BraTS-SYN-00003-000.nii.gz", np.where(ref == 1, 5, 0).astype(np.uint8))  # unknown label 5
    save(preds / "BraTS-SYN-00004-000.nii.gz", ref, spacing=2.0)  # affine
    save(data / "BraTS-SYN-00005-000" / "BraTS-SYN-00005-000-seg.nii.gz", ref)
    save(preds / "BraTS-SYN-00005-000.nii.gz", ref)  # and a .nii of the same case: ambiguous
    save(preds / "BraTS-SYN-00005-000.nii", np.zeros_like(ref))
    status = main(["evaluate", str(preds), str(data), "-o", str(tmp_path / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 1
    # the good case, the one without a prediction, scored as BraTS scores it (an empty prediction: Dice 0), and the
    # ambiguous one scored so too: left out of the means, it raised them above those of a missing prediction
    assert "BraTS metrics of 3 case(s)" in out and "| TC | 0.333 |" in out
    assert "1 case(s) have no prediction" in err and "BraTS-SYN-00001-000" in err
    assert "BraTS-SYN-00002-000" in err and "shape (10, 20, 20) differs" in err
    assert "BraTS-SYN-00003-000" in err and "unknown label values [5]" in err
    assert "BraTS-SYN-00003-000.nii.gz" in err
    assert "BraTS-SYN-00004-000" in err and "affine differs" in err
    assert "BraTS-SYN-00005-000: ambiguous: 2 predictions" in err and "note:" not in err  # neither file "unmatched"
    assert "keep one; scored as a missing prediction" in err
    rows = list(csv.DictReader((tmp_path / "out" / "brats_metrics.csv").open()))
    assert [r["case_id"] for r in rows] == ["BraTS-SYN-00000-000", "BraTS-SYN-00001-000", "BraTS-SYN-00005-000"]
    assert float(rows[2]["dice_tc"]) == 0.0 and float(rows[2]["hd95_tc"]) == MISSED_REGION_HD_MM
    assert float(rows[0]["ranking_lesion_dice_tc"]) == 1.0 and float(rows[0]["dice_et"]) == 1.0  # ET empty in both
    assert float(rows[0]["matched_lesion_dice_tc"]) == 1.0
    assert float(rows[1]["dice_tc"]) == 0.0 and float(rows[1]["hd95_tc"]) == MISSED_REGION_HD_MM
    assert float(rows[1]["dice_et"]) == 1.0  # ET absent from the reference: an empty prediction is right
    summary = list(csv.DictReader((tmp_path / "out" / "brats_summary.csv").open()))
    assert [r["region"] for r in summary] == ["TC", "WT", "ET", "NETC", "SNFH"]


def test_evaluate_command_with_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["evaluate", str(tmp_path / "nope"), str(tmp_path)]) == 2
