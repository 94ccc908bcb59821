"""Post-processing of predicted regions (kd_components.postprocess) and the choice of its thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from kd_components.cli import build_parser
from kd_components.commands.segment import overrides as _segment_overrides
from kd_components.config_checks import BundleSettingError, check_settings
from kd_components.evaluation.tuning import TuningCase, choose_postprocessing
from kd_components.postprocess import (
    CONNECTIVITY,
    BratsPostprocessd,
    PostprocessSettings,
    bounding_box,
    postprocess_label_map,
    postprocess_regions,
    small_components,
)
from kd_components.transforms import regions_to_labels

SHAPE = (20, 20, 20)
BIG = (slice(2, 8),) * 3  # 216 voxels
SMALL = (slice(14, 16),) * 3  # 8 voxels, apart from BIG


def labels_with(*parts: tuple[tuple[slice, ...], int]) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=np.uint8)
    for box, value in parts:
        out[box] = value
    return out


def test_small_whole_tumour_component_is_removed_and_the_big_one_kept() -> None:
    labels = labels_with((BIG, 2), (SMALL, 3))  # the small one is ET: it goes with its WT component
    out = postprocess_label_map(labels, (1.0, 1.0, 1.0), PostprocessSettings({"WT": 10}))
    assert (out[BIG] == 2).all()
    assert (out[SMALL] == 0).all()


def test_small_components_within_the_bounding_box_equal_those_of_the_whole_grid() -> None:
    """Components are labelled in the mask's bounding box only: the result must be the whole grid's, for masks
    that touch the grid's faces, single voxels, empty masks and every threshold."""
    rng = np.random.default_rng(0)
    for trial in range(24):
        mask = ndimage.binary_dilation(rng.random((30, 40, 25)) < 0.003, iterations=int(rng.integers(0, 3)))
        if trial % 6 == 0:
            mask[:] = False
        if trial % 4 == 1:
            mask[0, 0, 0] = mask[-1, -1, -1] = True
        components, count = ndimage.label(mask, structure=CONNECTIVITY)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        for min_voxels in (0.5, 2, 10, 100):
            expected = (sizes < min_voxels)[components] & mask if min_voxels > 1 else np.zeros_like(mask)
            assert np.array_equal(small_components(mask, min_voxels), expected)


def test_thresholds_are_volumes_in_mm3() -> None:
    labels = labels_with((BIG, 2), (SMALL, 2))  # SMALL: 8 voxels = 64 mm³ at 2 mm
    kept = postprocess_label_map(labels, (2.0, 2.0, 2.0), PostprocessSettings({"WT": 50}))
    removed = postprocess_label_map(labels, (2.0, 2.0, 2.0), PostprocessSettings({"WT": 100}))
    assert (kept[SMALL] == 2).all() and (removed[SMALL] == 0).all()


def test_small_core_becomes_oedema_and_small_et_becomes_netc() -> None:
    labels = labels_with((BIG, 2), ((slice(3, 4),) * 3, 1), ((slice(6, 7),) * 3, 3))  # 1-voxel NETC and ET islands
    core = postprocess_label_map(labels, (1.0, 1.0, 1.0), PostprocessSettings({"TC": 5}))
    assert core[3, 3, 3] == 2 and core[6, 6, 6] == 2  # both core components removed from TC: oedema
    et = postprocess_label_map(labels, (1.0, 1.0, 1.0), PostprocessSettings({"ET": 5}))
    assert et[6, 6, 6] == 1 and et[3, 3, 3] == 1  # the ET island stays tumour core


def test_et_below_the_threshold_is_relabelled_netc() -> None:
    labels = labels_with((BIG, 2), ((slice(3, 6),) * 3, 3))  # 27 mm³ of ET
    below = postprocess_label_map(labels, (1.0, 1.0, 1.0), PostprocessSettings(et_to_netc_mm3=30))
    above = postprocess_label_map(labels, (1.0, 1.0, 1.0), PostprocessSettings(et_to_netc_mm3=20))
    assert (below[3:6, 3:6, 3:6] == 1).all() and not (below == 3).any()
    assert (above == labels).all()


def test_transform_on_raw_regions_equals_the_label_map_rule() -> None:
    rng = np.random.default_rng(0)
    regions = rng.random((3, *SHAPE)) > 0.93  # scattered, not nested
    regions[:, BIG[0], BIG[1], BIG[2]] = True
    settings = {"min_component_mm3": {"WT": 20, "TC": 10, "ET": 3}, "et_to_netc_mm3": 0}
    pred = MetaTensor(torch.as_tensor(regions).float(), affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0])))
    out = BratsPostprocessd("pred", **settings)({"pred": pred})["pred"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    expected = postprocess_label_map(
        np.asarray(regions_to_labels(regions))[0], (1.0,) * 3, PostprocessSettings(**settings)
    )
    assert (np.asarray(regions_to_labels(out.numpy()))[0] == expected).all()
    assert not (expected == np.asarray(regions_to_labels(regions))[0]).all()  # something was removed
    unchanged = BratsPostprocessd("pred", **settings, enabled="false")({"pred": pred})["pred"]
    assert torch.equal(unchanged, pred)


def test_transform_on_the_tumours_box_gives_the_whole_grids_result() -> None:
    rng = np.random.default_rng(1)
    regions = np.zeros((3, 60, 50, 40), dtype=bool)
    regions[:, 10:30, 5:25, 20:38] = rng.random((3, 20, 20, 18)) > 0.9  # scattered components in one corner
    regions[:, 12:20, 8:16, 22:30] = True
    settings = {"min_component_mm3": {"WT": 20, "TC": 10, "ET": 3}, "et_to_netc_mm3": 0}
    expected, _ = postprocess_regions(regions, (1.0, 1.0, 1.0), PostprocessSettings(**settings))
    for values in (regions, np.zeros_like(regions)):
        out = BratsPostprocessd("pred", **settings)({"pred": MetaTensor(torch.as_tensor(values, dtype=torch.uint8))})
        assert out["pred"].dtype == torch.uint8
        assert np.array_equal(out["pred"].numpy().astype(bool), expected if values.any() else values)
    assert not np.array_equal(expected, regions)  # something was removed


def test_bounding_box_is_find_objects_box() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        mask = np.zeros(tuple(rng.integers(1, 20, 3)), dtype=bool)
        for _ in range(rng.integers(0, 4)):
            mask[tuple(rng.integers(0, s) for s in mask.shape)] = True
        found = ndimage.find_objects(mask.astype(np.uint8))
        assert bounding_box(mask) == (found[0] if found else None)


def test_regions_keep_nesting_and_changes_are_counted() -> None:
    regions = np.zeros((3, *SHAPE), dtype=bool)
    regions[:, BIG[0], BIG[1], BIG[2]] = True
    regions[2, 15, 15, 15] = True  # a lone ET voxel outside TC and WT
    out, changes = postprocess_regions(regions, (1.0,) * 3, PostprocessSettings({"WT": 2}))
    assert not out[:, 15, 15, 15].any()
    assert changes == {"WT": 1, "TC": 0, "ET": 0, "et_to_netc": 0}


@pytest.mark.parametrize(
    ("settings", "problem"),
    [({"postprocess_min_mm3": {"XX": 1}}, "postprocess_min_mm3"), ({"postprocess_et_to_netc_mm3": -1}, "et_to_netc")],
)
def test_wrong_settings_are_refused(settings: dict, problem: str) -> None:
    with pytest.raises(BundleSettingError, match=problem):
        check_settings(settings)
    with pytest.raises(ValueError):
        PostprocessSettings({"XX": 1} if "min" in problem else {}, -1 if "netc" in problem else 0)


def test_choice_removes_a_false_positive_component_and_keeps_the_smallest_threshold() -> None:
    reference = labels_with((BIG, 2))
    prediction = labels_with((BIG, 2), (SMALL, 2))  # an 8 mm³ false-positive lesion
    result = choose_postprocessing(
        [TuningCase("c", prediction, reference, (1.0, 1.0, 1.0))],
        min_component_mm3=(0, 5, 10, 50),
        et_to_netc_mm3=(0, 5),
    )
    assert result.settings.min_component_mm3 == {"TC": 0.0, "WT": 10.0, "ET": 0.0}
    assert result.settings.et_to_netc_mm3 == 0.0
    assert (result.before["WT"]["fp"], result.after["WT"]["fp"]) == (1.0, 0.0)
    assert result.config_values()["postprocess_min_mm3"] == {"TC": 0, "WT": 10, "ET": 0}


def test_segment_no_postprocess_turns_the_bundle_setting_off() -> None:
    parse = build_parser().parse_args
    assert _segment_overrides(parse(["segment", "cases", "-o", "out", "--no-postprocess"])) == {"postprocess": False}
    assert _segment_overrides(parse(["segment", "cases", "-o", "out", "--sw-overlap", "0.25"])) == {"sw_overlap": 0.25}


def test_segment_config_overlays_apply_in_order_before_its_own_options(tmp_path: Path) -> None:
    """``--config FILE``: the overlays a network was trained with (the demo's ``configs/demo.json``) reach the bundle's
    inference.json, later files and the command's own options winning; a file that is not a JSON object is named."""
    parse = build_parser().parse_args
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"teacher_config": "demo", "patch_size": [64, 64, 64], "sw_overlap": 0.1}))
    second.write_text(json.dumps({"patch_size": [32, 32, 32]}))
    args = parse(["segment", "cases", "-o", "out", "--config", str(first), str(second), "--sw-overlap", "0.5"])
    assert _segment_overrides(args) == {"teacher_config": "demo", "patch_size": [32, 32, 32], "sw_overlap": 0.5}
    for content, why in (("[1, 2]", "expected a JSON object"), ("{", "not JSON")):
        first.write_text(content)
        with pytest.raises(ValueError, match=f"--config {first}: {why}"):
            _segment_overrides(parse(["segment", "cases", "-o", "out", "--config", str(first)]))
    with pytest.raises(ValueError, match="cannot be read"):
        _segment_overrides(parse(["segment", "cases", "-o", "out", "--config", str(tmp_path / "missing.json")]))
