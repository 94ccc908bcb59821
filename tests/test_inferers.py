"""bf16 autocast on the CPU around any MONAI inferer: float32 outside the network, bf16 inside."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.losses import DiceCELoss

from kd_components.config_checks import BundleSettingError
from kd_components.inferers import AutocastInferer, cpu_bf16_supported, float32_small_convolutions, use_cpu_bf16
from kd_components.losses import DistillationInputs, DistillationLoss, FeatureTerm, TaskTerm, build_feature_kd_loss
from kd_components.networks import build_student
from kd_components.networks.student import feature_pairs
from tests.conftest import build_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_setting_resolves_per_device() -> None:
    assert use_cpu_bf16("auto", "cpu") is cpu_bf16_supported()
    assert use_cpu_bf16("true", torch.device("cpu")) is True and use_cpu_bf16(False, "cpu") is False
    assert use_cpu_bf16("true", "cuda:0") is False  # CUDA has amp
    with pytest.raises(BundleSettingError, match="'cpu_bf16' must be true or false"):
        use_cpu_bf16("sometimes", "cpu")


def test_autocast_runs_the_network_in_bf16_and_returns_float32() -> None:
    torch.manual_seed(0)
    network = build_student(init_filters=8).eval()
    seen: list[torch.dtype] = []
    network.get_submodule("down_layers.1").register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        reference = SimpleInferer()(x, network)
        off = AutocastInferer(SimpleInferer(), enabled=False)(x, network)
        on = AutocastInferer(SimpleInferer(), enabled=True)(x, network)
    assert seen == [torch.float32, torch.float32, torch.bfloat16]
    assert torch.equal(off, reference)  # disabled: the inner inferer unchanged
    assert on.dtype == torch.float32 and not torch.equal(on, reference)
    torch.testing.assert_close(on, reference, atol=0.15, rtol=0.05)  # bf16 keeps about 3 significant digits


def test_a_sliding_window_aggregates_in_float32() -> None:
    torch.manual_seed(0)
    network = build_student(init_filters=8).eval()
    x = torch.randn(1, 4, 40, 40, 24)
    window = SlidingWindowInferer(roi_size=(32, 32, 16), sw_batch_size=2, overlap=0.5, mode="gaussian")
    with torch.no_grad():
        reference = window(x, network)
        on = AutocastInferer(window, enabled=True)(x, network)
    assert on.dtype == torch.float32 and on.shape == reference.shape == (1, 3, 40, 40, 24)
    torch.testing.assert_close(on, reference, atol=0.15, rtol=0.05)


def test_distillation_terms_take_bf16_features() -> None:
    """Hooks capture the features in bf16 under autocast; the feature adapters are float32."""
    torch.manual_seed(0)
    student, teacher = build_student(init_filters=8), build_tiny_teacher().eval()
    feature = build_feature_kd_loss(student, teacher, feature_pairs(student))
    loss = DistillationLoss({"task": TaskTerm(DiceCELoss(sigmoid=True)), "feature": FeatureTerm(feature)})
    inputs = DistillationInputs(
        torch.randn(1, 3, 8, 8, 8, requires_grad=True),
        label=torch.zeros(1, 3, 8, 8, 8),
        student_features={
            p: torch.randn(1, c, 4, 4, 4, dtype=torch.bfloat16)
            for p, c in zip(feature.student_paths, [a.in_channels for a in feature.adapters], strict=True)
        },
        teacher_features={
            p: torch.randn(1, c, 4, 4, 4, dtype=torch.bfloat16)
            for p, c in zip(feature.teacher_paths, [a.out_channels for a in feature.adapters], strict=True)
        },
        teacher=teacher,
    )
    out = loss(inputs)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss_feature"])


def test_convolutions_of_tiny_maps_run_in_float32_under_autocast() -> None:
    """bf16 conv3d on the CPU can return non-finite weight gradients for 2x2x2 inputs: such layers run in float32."""
    network = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3, padding=1), torch.nn.Conv3d(8, 3, 3, padding=1))
    dtypes: list[torch.dtype] = []
    for layer in network:
        layer.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    inferer = AutocastInferer(SimpleInferer(), enabled=True)
    for side, expected in ((2, torch.float32), (4, torch.bfloat16)):
        dtypes.clear()
        x = torch.randn(2, 4, side, side, side, requires_grad=True)
        out = inferer(x, network)
        assert dtypes == [expected, expected], side
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in network.parameters())
        assert out.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")  # the hooks left autocast as they found it
    assert float32_small_convolutions(network) == 0  # hooked once


@pytest.mark.parametrize("bundle", ["hybrid_teacher", "distilled_student"])
def test_the_bundle_inferer_shows_the_wrapped_inferers_settings(bundle: str) -> None:
    """MONAI tools read ``inferer.roi_size`` (and overlap, batch) from ``inference.json``'s ``inferer``: through the
    autocast wrapper they get the sliding window's, and an attribute neither has is still an AttributeError."""
    import copy

    from monai.bundle import ConfigParser

    from tests.conftest import REPO_ROOT

    config = ConfigParser()
    config.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "inference.json"))
    inferer = config.get_parsed_content("inferer")
    assert isinstance(inferer, AutocastInferer)
    assert tuple(inferer.roi_size) == tuple(config.get_parsed_content("patch_size"))
    assert inferer.overlap == config.get_parsed_content("sw_overlap")
    assert inferer.sw_batch_size == config.get_parsed_content("sw_batch_size")
    with pytest.raises(AttributeError):
        _ = inferer.no_such_setting
    assert copy.deepcopy(inferer).roi_size == inferer.roi_size  # no recursion while the copy has no inferer yet
