"""HD95 in millimetres, with BraTS's value for a missed region."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from kd_components.handlers import HausdorffDistanceMM
from kd_components.handlers.metrics import MISSED_REGION_HD_MM, label_map_dice


def _volume(box: tuple[slice, slice, slice] | None, spacing: float) -> MetaTensor:
    """One-channel (1, 16, 16, 16) mask with ``box`` set, on a grid of ``spacing`` mm."""
    data = torch.zeros(1, 16, 16, 16)
    if box is not None:
        data[(0, *box)] = 1
    return MetaTensor(data, affine=torch.diag(torch.tensor([spacing, spacing, spacing, 1.0])))


def _hd95(pairs: list[tuple[MetaTensor, MetaTensor]]) -> list[float]:
    handler = HausdorffDistanceMM(
        include_background=True, percentile=95, reduction="none", output_transform=lambda x: x
    )
    engine = Engine(lambda e, b: b)
    handler.attach(engine, "hd95")
    handler.reset()
    for pred, label in pairs:
        handler.update(([pred], [label]))
    return [float(v) for v in handler.metric_fn.get_buffer().flatten()]


def test_distance_is_in_millimetres() -> None:
    box = (slice(4, 10), slice(4, 10), slice(4, 10))
    shifted = (slice(6, 12), slice(4, 10), slice(4, 10))  # two voxels along the first axis
    one_mm, two_mm = _hd95([(_volume(shifted, 1.0), _volume(box, 1.0)), (_volume(shifted, 2.0), _volume(box, 2.0))])
    assert math.isclose(one_mm, 2.0, rel_tol=1e-5)
    assert math.isclose(two_mm, 4.0, rel_tol=1e-5)


def test_missed_region_gets_the_brats_penalty_and_absent_region_stays_undefined() -> None:
    box = (slice(4, 10), slice(4, 10), slice(4, 10))
    missed, absent = _hd95([(_volume(None, 1.0), _volume(box, 1.0)), (_volume(box, 1.0), _volume(None, 1.0))])
    assert math.isclose(missed, MISSED_REGION_HD_MM, rel_tol=1e-6)
    assert math.isnan(absent)


def test_label_map_dice_per_region_scores_empty_regions_by_brats_rules() -> None:
    truth = np.zeros((5, 5, 5), np.uint8)
    truth[1, 1, 1] = 1  # NETC: in TC and WT
    pred = truth.copy()
    pred[2, 2, 2] = 2  # extra SNFH: WT only
    assert label_map_dice(pred, truth) == pytest.approx([1.0, 2 / 3, 1.0])  # ET empty in both: 1
    assert label_map_dice(np.zeros_like(truth), truth) == pytest.approx([0.0, 0.0, 1.0])
