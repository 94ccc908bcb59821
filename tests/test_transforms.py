"""Label <-> region conversions on hand-made volumes, both ET conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from kd_components.constants import ET_LABEL, LEGACY_ET_LABEL, REGIONS
from kd_components.transforms import (
    BratsLabelsToRegions,
    BratsLabelsToRegionsd,
    NestRegionsd,
    RegionsToBratsLabels,
    RegionsToBratsLabelsd,
    regions_to_labels,
    unknown_label_values,
)
from tests.conftest import tiny_label


def test_region_definitions_per_label() -> None:
    labels = np.array([0, 1, 2, 3]).reshape(1, 1, 4)
    regions = BratsLabelsToRegions()(labels)
    assert REGIONS == ("TC", "WT", "ET")
    expected = np.array(
        [
            [0, 1, 0, 1],  # TC = NETC | ET
            [0, 1, 1, 1],  # WT = NETC | SNFH | ET
            [0, 0, 0, 1],  # ET
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(regions[:, 0, 0], expected)


@pytest.mark.parametrize("et", [ET_LABEL, LEGACY_ET_LABEL])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_round_trip_on_nested_lesion(et: int, as_tensor: bool) -> None:
    seg = tiny_label(et=et)
    assert set(np.unique(seg)) == {0, 1, 2, et}
    data = torch.as_tensor(seg)[None] if as_tensor else seg[None]
    regions = BratsLabelsToRegions(et_label=et)(data)
    assert tuple(regions.shape) == (3, *seg.shape)
    back = RegionsToBratsLabels(et_label=et)(regions)
    assert tuple(back.shape) == (1, *seg.shape)
    np.testing.assert_array_equal(np.asarray(back)[0], seg)


def test_regions_to_labels_precedence_for_unnested_predictions() -> None:
    # voxel 0: ET only -> ET; voxel 1: TC only -> NETC; voxel 2: WT only -> SNFH; voxel 3: none
    regions = np.zeros((3, 4, 1, 1), bool)
    regions[2, 0] = True
    regions[0, 1] = True
    regions[1, 2] = True
    np.testing.assert_array_equal(regions_to_labels(regions)[0, :, 0, 0], [3, 1, 2, 0])
    np.testing.assert_array_equal(regions_to_labels(regions, et_label=4)[0, :, 0, 0], [4, 1, 2, 0])


@pytest.mark.parametrize("bad, et", [(4, ET_LABEL), (3, LEGACY_ET_LABEL), (7, ET_LABEL)])
def test_unknown_labels_are_refused(bad: int, et: int) -> None:
    seg = tiny_label()
    seg[0, 0, 0] = bad
    if et == LEGACY_ET_LABEL:
        seg = np.where(seg == 3, 4, seg)
        seg[0, 0, 0] = bad
    assert unknown_label_values(seg, et) == [bad]
    with pytest.raises(ValueError, match=rf"unknown label values \[{bad}\]"):
        BratsLabelsToRegions(et_label=et)(seg)


def test_invalid_et_label_and_channel_count() -> None:
    with pytest.raises(ValueError, match="et_label must be 3"):
        BratsLabelsToRegions(et_label=2)
    with pytest.raises(ValueError, match="expected 3 region channels"):
        regions_to_labels(np.zeros((2, 4, 4, 4)))


def test_dictionary_transforms_name_the_file_and_keep_metadata() -> None:
    seg = MetaTensor(torch.as_tensor(tiny_label())[None], meta={"filename_or_obj": "case-seg.nii.gz"})
    pipeline = Compose([BratsLabelsToRegionsd("label"), RegionsToBratsLabelsd("label")])
    out = pipeline({"label": seg})["label"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case-seg.nii.gz"
    np.testing.assert_array_equal(out.numpy()[0], tiny_label())
    bad = seg.clone()
    bad[0, 0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"case-seg\.nii\.gz: unknown label values"):
        BratsLabelsToRegionsd("label")({"label": bad})


def test_nested_regions_are_those_of_the_label_map_they_are_written_as() -> None:
    torch.manual_seed(0)
    regions = (torch.rand(3, 6, 5, 4) > 0.5).float()  # not nested: ET outside TC, TC outside WT
    nested = NestRegionsd("pred")({"pred": regions})["pred"]
    read_back = BratsLabelsToRegions()(regions_to_labels(regions))
    assert torch.equal(nested.bool(), read_back.bool())
    assert nested.shape == regions.shape and nested.dtype == regions.dtype
    assert torch.equal(NestRegionsd("pred")({"pred": nested})["pred"], nested)  # nested already: unchanged
    array = NestRegionsd("pred")({"pred": regions.numpy()})["pred"]
    np.testing.assert_array_equal(array, nested.numpy())
    with pytest.raises(ValueError, match="region channels"):
        NestRegionsd("pred")({"pred": regions[:2]})


@pytest.mark.parametrize("bundle", ["hybrid_teacher", "distilled_student"])
def test_validation_and_evaluation_score_the_label_map_the_bundle_writes(bundle: str) -> None:
    """``validate#postprocessing`` (validation during training and ``evaluate.json``) thresholds the logits and scores
    the regions of the label map ``inference.json`` and ``brats-kd segment`` write (:func:`regions_to_labels`), not
    the three channels on their own: an ET voxel outside the predicted TC counts in TC, as it does in the label map."""
    from monai.bundle import ConfigParser

    from tests.conftest import REPO_ROOT

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "train.json"))
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    torch.manual_seed(1)
    logits = torch.randn(3, 6, 5, 4)
    out = postprocessing({"pred": logits, "label": torch.zeros(3, 6, 5, 4)})
    written = BratsLabelsToRegions()(regions_to_labels(logits > 0))
    for index, region in enumerate(REGIONS):
        assert torch.equal(out[f"pred_{region.lower()}"][0].bool(), written[index].bool()), region
