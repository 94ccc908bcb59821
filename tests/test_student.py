"""The students: the strided default, the full-resolution SegResNet, where their features are tapped, the search's
candidates (built for timing exactly as the bundle builds them for training), and the Pareto front."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.networks.nets import SegResNet

from kd_components.constants import MODALITIES, REGIONS
from kd_components.networks import FUSED_FEATURE_MODULES, FUSED_FEATURE_SCALES
from kd_components.networks.candidates import DEFAULT_CANDIDATE, STUDENT_CANDIDATES
from kd_components.networks.student import (
    StridedSegResNet,
    build_segresnet_student,
    build_student,
    feature_pairs,
    student_feature_modules,
)
from kd_components.networks.utils import size_divisor
from kd_lab.student_search import candidate_row_key, pareto_front, search_table
from tests.conftest import REPO_ROOT, build_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

STUDENT_CONFIGS = REPO_ROOT / "bundles" / "distilled_student" / "configs"


def _tapped_shapes(network: nn.Module, paths: list[str], x: torch.Tensor) -> list[tuple[int, ...]]:
    modules = dict(network.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        modules[p].register_forward_hook(lambda m, a, out, p=p: shapes.__setitem__(p, tuple(out.shape))) for p in paths
    ]
    with torch.no_grad():
        network(x)
    for handle in handles:
        handle.remove()
    return [shapes[p] for p in paths]


def test_strided_student_maps_an_input_to_logits_of_its_size_from_half_resolution() -> None:
    torch.manual_seed(0)
    net = build_student(init_filters=4, norm="instance").eval()
    x = torch.randn(1, len(MODALITIES), 32, 48, 64)
    assert net(x).shape == (1, len(REGIONS), 32, 48, 64)
    assert size_divisor(net) == 16 and size_divisor(build_segresnet_student(init_filters=8)) == 8
    # every residual block runs at half resolution or coarser: the first level's output is at 1/2
    assert _tapped_shapes(net, ["convInit", "down_layers.0"], x)[1] == (1, 4, 16, 24, 32)


def test_refinement_head_starts_at_zero_so_the_output_is_the_upsampled_half_resolution_logits() -> None:
    torch.manual_seed(0)
    net = build_student(init_filters=4, norm="instance").eval()
    x = torch.randn(1, len(MODALITIES), 32, 32, 32)
    with torch.no_grad():
        half = SegResNet.forward(net, x)
        expected = F.interpolate(half, scale_factor=2, mode="trilinear", align_corners=False)
        assert torch.equal(net(x), expected)
        net.refine.weight.normal_()
        assert not torch.allclose(net(x), expected)  # the head does take part once trained


def test_default_student_has_batch_norm_and_the_output_prior() -> None:
    net = build_student()
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in net.modules())
    assert torch.allclose(net.conv_final[-1].conv.bias, torch.full((3,), math.log(0.1 / 0.9)))


@pytest.mark.parametrize(
    ("network", "levels"),
    [
        (build_student(init_filters=4, norm="instance"), [0, 1, 2, 3]),
        (build_segresnet_student(init_filters=8), [1, 2, 3, 3]),
    ],
    ids=["strided", "segresnet"],
)
def test_feature_taps_sit_at_the_teacher_scales(network: nn.Module, levels: list[int]) -> None:
    """Each teacher scale takes the student level at that scale, or the coarsest one the student has."""
    paths = list(student_feature_modules(network))
    assert paths == [f"down_layers.{k}" for k in levels]
    assert feature_pairs(network) == list(zip(FUSED_FEATURE_MODULES, paths, strict=True))
    size = 64
    shapes = _tapped_shapes(network.eval(), paths, torch.randn(1, len(MODALITIES), size, size, size))
    coarsest = size // 2 ** (len(network.down_layers) - (0 if isinstance(network, StridedSegResNet) else 1))
    for scale, shape in zip(FUSED_FEATURE_SCALES, shapes, strict=True):
        assert shape[2] == max(size // scale, coarsest)


def test_feature_taps_look_through_a_wrapper_and_refuse_an_unknown_network() -> None:
    student = build_student(init_filters=4, norm="instance")
    assert feature_pairs(nn.DataParallel(student)) == feature_pairs(student)
    with pytest.raises(TypeError, match="set feature_pairs in the config"):
        student_feature_modules(nn.Conv3d(4, 3, 1))


def _bundle_network(overrides: tuple[str, ...]) -> nn.Module:
    """The student bundle's ``network_def`` (train.json) with ``--network_def#...`` command-line overrides."""
    parser = ConfigParser()
    parser.read_config(str(STUDENT_CONFIGS / "train.json"))
    for flag, value in zip(overrides[::2], overrides[1::2], strict=True):
        key = flag.removeprefix("--")
        parser[key] = value if key.endswith("#_target_") else json.loads(value)
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize("name", sorted(STUDENT_CANDIDATES))
def test_each_candidate_is_the_network_its_benchmark_row_trains(name: str) -> None:
    """The network timed (``candidate.build()``) and the one the bundle builds with the row's overrides are one."""
    candidate = STUDENT_CANDIDATES[name]
    built, configured = candidate.build(), _bundle_network(candidate.overrides())
    assert type(built) is type(configured)
    shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in configured.state_dict().items()}
    assert [type(m) for m in built.modules()] == [type(m) for m in configured.modules()]
    modules = dict(built.named_modules())
    assert all(path in modules for _, path in feature_pairs(built))


def test_the_default_candidate_is_what_the_bundle_trains_and_runs() -> None:
    default = {k: v.shape for k, v in DEFAULT_CANDIDATE.build().state_dict().items()}
    for config in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(STUDENT_CONFIGS / config))
        network = parser.get_parsed_content("network_def")
        assert type(network) is StridedSegResNet, config
        assert {k: v.shape for k, v in network.state_dict().items()} == default, config


def test_feature_distillation_builds_for_every_candidate() -> None:
    from kd_components.losses import build_feature_kd_loss

    teacher = build_tiny_teacher().eval()
    for candidate in STUDENT_CANDIDATES.values():
        student = candidate.build()
        loss = build_feature_kd_loss(student, teacher, feature_pairs(student), probe_size=(32, 32, 32))
        assert len(loss.adapters) == len(FUSED_FEATURE_SCALES)


def test_pareto_front_keeps_the_points_no_other_beats_in_both() -> None:
    points = {"fast": (1.0, 0.80), "slow_better": (2.0, 0.85), "dominated": (2.5, 0.84), "tie_slower": (1.5, 0.80)}
    assert pareto_front(points) == {"fast", "slow_better"}


def _kd_row(scores: np.ndarray, seeds: list[int]) -> dict:
    from kd_lab.statistics import mean_interval

    return {
        "seeds": seeds,
        "per_case": {"val_mean_dice": scores.tolist()},
        "statistics": {"val_mean_dice": {"mean": mean_interval(scores, resamples=200, seed=0).as_dict()}},
    }


def test_search_table_pairs_candidates_and_marks_the_front() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, size=(3, 8))
    rows = {
        "kd_strided8": _kd_row(base, [0, 1, 2]),
        candidate_row_key("segresnet8"): _kd_row(base - 0.2, [0, 1, 2]),
        "soft_feature": _kd_row(base - 0.01, [0, 1, 2]),  # a run when strided16 was the default
    }
    timings = [
        {"network": n, "precision": "fp32", "patch_s": t / 27, "volume_crop_s": t, "windows": {"crop": 27}}
        for n, t in (("student", 2.0), ("segresnet8", 8.0), ("strided16", 1.5))
    ] + [{"network": "strided16", "precision": "int8", "error": "RuntimeError: no"}]
    rows_for = {"student": "kd_strided8", "strided16": "soft_feature"}
    table = {e["name"]: e for e in search_table({"rows": rows}, timings, "fp32", 200, 0, rows_for)}
    assert set(table) == {"student", "segresnet8", "strided16"}  # candidates without a row are left out
    assert table["student"]["row"] == "kd_strided8" and table["segresnet8"]["row"] == candidate_row_key("segresnet8")
    assert table["segresnet8"]["differences"]["student"]["estimate"] == pytest.approx(-0.2)
    assert table["strided16"]["differences"]["segresnet8"]["estimate"] == pytest.approx(0.19)
    assert "student" not in table["student"]["differences"]
    assert {n for n, e in table.items() if e["pareto"]} == {"student", "strided16"}
    assert table["strided16"]["dice_per_s"] == pytest.approx(table["strided16"]["dice"]["estimate"] / 1.5)
    assert "int8" not in table["strided16"]["volume_s"]  # a failed configuration has no time
