"""Distillation losses: soft targets, feature distances and adapters, multi-scale weighting, the sum, hooks."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.nets import SegResNet

from kd_components.constants import MODALITIES, REGIONS
from kd_components.hooks import FeatureHooks
from kd_components.losses import (
    DistillationInputs,
    DistillationLoss,
    DistillationTerm,
    FeatureAdapter,
    FeatureKDLoss,
    FeatureTerm,
    SoftTargetKDLoss,
    SoftTargetTerm,
    TaskTerm,
    channel_wise_distillation,
    normalized_mse,
)
from tests.conftest import build_tiny_teacher

B, C = 2, len(REGIONS)
SPATIAL = (6, 5, 4)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")


def logits(*spatial: int, scale: float = 2.0, requires_grad: bool = False) -> torch.Tensor:
    """Random logits ``(B, C, *spatial)``."""
    x = torch.randn(B, C, *(spatial or SPATIAL)) * scale
    return x.requires_grad_(requires_grad)


def bernoulli_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T)))`` per element, written out with probabilities (float64)."""
    p, q = torch.sigmoid(t.double() / temperature), torch.sigmoid(s.double() / temperature)
    return temperature**2 * (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q)))


def softmax_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax_c(t/T) || softmax_c(s/T))`` per voxel ``(B, *spatial)`` (float64)."""
    p, q = torch.softmax(t.double() / temperature, dim=1), torch.softmax(s.double() / temperature, dim=1)
    return temperature**2 * (p * torch.log(p / q)).sum(dim=1)


def close(a: torch.Tensor, b: torch.Tensor | float, tol: float = 1e-5) -> bool:
    return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=tol, atol=tol)


# ---------------------------------------------------------------- soft targets


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_sigmoid_matches_bernoulli_kl_with_t_squared(temperature: float) -> None:
    s, t = logits(), logits()
    expected = bernoulli_kl(s, t, temperature).mean()  # mean over channels and voxels
    assert close(SoftTargetKDLoss(temperature)(s, t), expected)
    assert expected > 1e-3  # not trivially zero


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_softmax_matches_channel_kl_with_t_squared(temperature: float) -> None:
    s, t = logits(), logits()
    assert close(SoftTargetKDLoss(temperature, mode="softmax")(s, t), softmax_kl(s, t, temperature).mean())


def test_soft_t_squared_keeps_the_scale_at_high_temperature() -> None:
    # for large T, T^2 * KL(Bern) -> (s - t)^2 / 8: without the T^2 factor it would vanish as 1/T^2
    s, t = logits(), logits()
    limit = ((s - t) ** 2).mean() / 8
    assert close(SoftTargetKDLoss(200.0)(s, t), limit, tol=1e-3)
    assert SoftTargetKDLoss(200.0)(s, t) > 50 * SoftTargetKDLoss(200.0)(s, t) / 200.0**2


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_soft_zero_for_identical_logits(mode: str) -> None:
    t = logits(scale=8.0)
    assert SoftTargetKDLoss(mode=mode)(t.clone(), t).abs() < 1e-7
    assert SoftTargetKDLoss(mode=mode)(t + torch.randn_like(t), t) > 1e-4  # (a shift would not do: softmax)


def test_soft_stable_for_saturated_logits() -> None:
    s, t = logits(scale=200.0, requires_grad=True), logits(scale=200.0)
    loss = SoftTargetKDLoss(temperature=1.0)(s, t)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_soft_mask_ignores_voxels_outside(mode: str) -> None:
    s, t = logits(), logits()
    mask = torch.rand(B, 1, *SPATIAL) > 0.5
    loss = SoftTargetKDLoss(mode=mode)(s, t, mask=mask)
    per_voxel = bernoulli_kl(s, t, 4.0).mean(dim=1) if mode == "sigmoid" else softmax_kl(s, t, 4.0)
    assert close(loss, per_voxel[mask[:, 0]].mean())
    changed = torch.where(mask, s, torch.full_like(s, float("inf")))  # even inf outside the mask
    assert close(SoftTargetKDLoss(mode=mode)(changed, t, mask=mask), loss)
    assert close(SoftTargetKDLoss(mode=mode)(s, t, mask=mask[:, 0].float()), loss)  # (B, H, W, D) float mask
    assert not close(SoftTargetKDLoss(mode=mode)(s, t), loss)  # the mask does something


def test_soft_empty_mask_is_zero_with_zero_gradient() -> None:
    s, t = logits(requires_grad=True), logits()
    loss = SoftTargetKDLoss()(s, t, mask=torch.zeros(B, 1, *SPATIAL, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_soft_reductions() -> None:
    s, t = logits(), logits()
    mask = torch.rand(B, *SPATIAL) > 0.3
    per_voxel = SoftTargetKDLoss(reduction="none")(s, t, mask=mask)
    assert per_voxel.shape == (B, *SPATIAL)
    assert torch.all(per_voxel[~mask] == 0)
    assert close(SoftTargetKDLoss(reduction="sum")(s, t, mask=mask), per_voxel.sum())
    assert close(SoftTargetKDLoss()(s, t, mask=mask), per_voxel.sum() / mask.sum())


def test_soft_gradient_reaches_student_only() -> None:
    s, t = logits(requires_grad=True), logits(requires_grad=True)
    SoftTargetKDLoss()(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_soft_shape_errors() -> None:
    with pytest.raises(ValueError, match="spatial size"):
        SoftTargetKDLoss()(logits(6, 5, 4), logits(6, 5, 2))
    with pytest.raises(ValueError, match="batch and channels"):
        SoftTargetKDLoss()(logits(), logits()[:, :2])
    with pytest.raises(ValueError, match="mask"):
        SoftTargetKDLoss()(logits(), logits(), mask=torch.ones(B, 2, *SPATIAL))
    with pytest.raises(ValueError, match="mode"):
        SoftTargetKDLoss(mode="softplus")
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetKDLoss(temperature=0.0)


# ---------------------------------------------------------------- feature distances and adapters


def test_normalized_mse_is_two_minus_two_correlation() -> None:
    s, t = torch.randn(2, 3, 5, 4, 3), torch.randn(2, 3, 5, 4, 3)
    sf, tf = s.flatten(2).double(), t.flatten(2).double()
    sc, tc = sf - sf.mean(-1, keepdim=True), tf - tf.mean(-1, keepdim=True)
    pearson = (sc * tc).sum(-1) / (sc.norm(dim=-1) * tc.norm(dim=-1))  # (B, C)
    assert close(normalized_mse(s, t), (2 * (1 - pearson)).mean(), tol=1e-4)
    assert normalized_mse(t.clone(), t) < 1e-6
    # offset and positive scale per channel do not matter; the spatial pattern does
    gain, offset = torch.rand(1, 3, 1, 1, 1) * 5 + 0.1, torch.randn(1, 3, 1, 1, 1) * 10
    assert close(normalized_mse(s * gain + offset, t), normalized_mse(s, t), tol=1e-4)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_matches_explicit_spatial_softmax_kl(tau: float) -> None:
    s, t = torch.randn(2, 3, 4, 3, 2) * 3, torch.randn(2, 3, 4, 3, 2) * 3
    kls = []
    for b in range(2):
        for c in range(3):
            p = torch.softmax(t[b, c].flatten().double() / tau, dim=0)
            q = torch.softmax(s[b, c].flatten().double() / tau, dim=0)
            kls.append((p * torch.log(p / q)).sum())
    expected = torch.stack(kls).mean() * tau**2
    assert close(channel_wise_distillation(s, t, tau=tau), expected)
    assert channel_wise_distillation(t.clone(), t, tau=tau).abs() < 1e-6


def test_distances_reject_size_mismatch() -> None:
    for distance in (normalized_mse, channel_wise_distillation):
        with pytest.raises(ValueError, match="spatial size"):
            distance(torch.randn(1, 2, 4, 4, 4), torch.randn(1, 2, 8, 8, 8))


def test_adapter_resizes_the_student_to_the_teacher_size() -> None:
    adapter = FeatureAdapter(4, 6)
    out = adapter(torch.randn(2, 4, 4, 4, 4), target_size=(8, 8, 8))  # student at 1/2 of the teacher map
    assert out.shape == (2, 6, 8, 8, 8)
    assert close(out.mean(dim=(2, 3, 4)), 0.0, tol=1e-4)  # instance norm on the teacher grid
    assert adapter(torch.randn(2, 4, 8, 8, 8), target_size=(4, 4, 4)).shape == (2, 6, 4, 4, 4)
    # conv on the small grid then trilinear == trilinear then conv (the student map is what is resized)
    plain = FeatureAdapter(4, 6, norm=None)
    x = torch.randn(1, 4, 3, 4, 5)
    expected = plain.conv(F.interpolate(x, size=(6, 8, 10), mode="trilinear", align_corners=False))
    assert close(plain(x, (6, 8, 10)), expected, tol=1e-5)
    with pytest.raises(ValueError, match="resize=False"):
        FeatureAdapter(4, 6, resize=False)(torch.randn(1, 4, 4, 4, 4), target_size=(8, 8, 8))
    with pytest.raises(ValueError, match="student features"):
        adapter(torch.randn(1, 5, 4, 4, 4))


# ---------------------------------------------------------------- multi-scale feature loss

PAIRS = [("fusion.fuse.0", "down_layers.1"), ("fusion.fuse.1", "down_layers.2")]


def feature_maps(requires_grad: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Student maps at half the teacher size (4, 8 channels), teacher maps (6, 10 channels) at 8^3 and 4^3."""
    student = [torch.randn(B, 4, 4, 4, 4), torch.randn(B, 8, 2, 2, 2)]
    teacher = [torch.randn(B, 6, 8, 8, 8), torch.randn(B, 10, 4, 4, 4)]
    return [s.requires_grad_(requires_grad) for s in student], [t.requires_grad_(requires_grad) for t in teacher]


def test_feature_loss_weights_fixed_and_not_learned() -> None:
    uniform = FeatureKDLoss(PAIRS, [4, 8], [6, 10])
    assert torch.equal(uniform.fixed_weights, torch.tensor([0.5, 0.5]))
    fixed = FeatureKDLoss(PAIRS, [4, 8], [6, 10], scale_weights=[1.0, 3.0])
    assert close(fixed.fixed_weights, torch.tensor([0.25, 0.75]))
    assert not fixed.fixed_weights.requires_grad
    params = {id(p) for p in fixed.parameters()}
    assert params == {id(p) for p in fixed.adapters.parameters()} and params  # adapters only
    assert "fixed_weights" not in fixed.state_dict()  # the config is the home of the weights
    assert isinstance(fixed.adapters, nn.ModuleList) and len(fixed.adapters) == len(PAIRS)
    assert fixed.teacher_paths == ["fusion.fuse.0", "fusion.fuse.1"]
    assert fixed.student_paths == ["down_layers.1", "down_layers.2"]

    student, teacher = feature_maps()
    value = fixed(student, teacher)
    assert close(fixed.last_weights.sum(), 1.0) and close(fixed.last_weights, fixed.fixed_weights)
    assert close(value, (fixed.last_weights * fixed.last_distances).sum())
    for i, adapter in enumerate(fixed.adapters):  # each distance is nmse(adapter(s), t) at the teacher size
        assert close(fixed.last_distances[i], normalized_mse(adapter(student[i], teacher[i].shape[2:]), teacher[i]))
    for bad in ([1.0, -1.0], [1.0, 2.0, 3.0], [0.0, 0.0], "softmax"):
        with pytest.raises(ValueError, match="weights"):
            FeatureKDLoss(PAIRS, [4, 8], [6, 10], scale_weights=bad)


def test_feature_loss_uses_and_records_external_weights_without_learning_them() -> None:
    loss = FeatureKDLoss(PAIRS, [4, 8], [6, 10], distance="cwd", tau=1.0)
    student, teacher = feature_maps(requires_grad=True)
    scale_logits = torch.tensor([2.0, -1.0], requires_grad=True)  # like the teacher's fusion.scale_logits
    weights = torch.softmax(scale_logits, dim=0)
    value = loss(student, teacher, scale_weights=weights)
    assert close(loss.last_weights, weights.detach()) and close(loss.last_weights.sum(), 1.0)
    assert close(value, weights[0] * loss.last_distances[0] + weights[1] * loss.last_distances[1])
    assert not close(value, loss.last_distances.mean())  # not the uniform weighting
    value.backward()
    assert scale_logits.grad is None  # weights are not learned by minimising this loss
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(a.conv.conv.weight.grad.abs().sum() > 0 for a in loss.adapters)
    loss(student, teacher, scale_weights=torch.tensor([2.0, 2.0]))  # normalised to sum 1
    assert close(loss.last_weights, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="weights"):
        loss(student, teacher, scale_weights=torch.tensor([0.2, 0.3, 0.5]))


def test_feature_loss_shape_errors() -> None:
    student, teacher = feature_maps()
    with pytest.raises(ValueError, match="resize=False"):
        FeatureKDLoss(PAIRS, [4, 8], [6, 10], resize=False)(student, teacher)
    with pytest.raises(ValueError, match="2 pairs"):
        FeatureKDLoss(PAIRS, [4, 8], [6, 10])(student[:1], teacher)
    with pytest.raises(ValueError, match="one channel count per pair"):
        FeatureKDLoss(PAIRS, [4], [6, 10])
    with pytest.raises(ValueError, match="distance"):
        FeatureKDLoss(PAIRS, [4, 8], [6, 10], distance="l1")


# ---------------------------------------------------------------- the combined objective


class Forbidden(nn.Module):
    """A loss that must not be computed."""

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("an inactive distillation term was computed")


def combined_inputs(labelled: bool = True) -> DistillationInputs:
    student, teacher = feature_maps()
    return DistillationInputs(
        student_logits=logits(8, 8, 8, requires_grad=True),
        teacher_logits=logits(8, 8, 8),
        label=(torch.rand(B, C, 8, 8, 8) > 0.5).float() if labelled else None,
        student_features={s: f.requires_grad_(True) for (_, s), f in zip(PAIRS, student, strict=True)},
        teacher_features={t: f for (t, _), f in zip(PAIRS, teacher, strict=True)},
    )


def objective(
    task: nn.Module, soft: nn.Module | None, feature: FeatureKDLoss | None, alpha: float, beta: float
) -> DistillationLoss:
    """The student bundle's three terms, with fixed feature scale weights (no teacher network here)."""
    return DistillationLoss(
        {
            "task": TaskTerm(task),
            "soft": SoftTargetTerm(soft, weight=alpha),
            "feature": FeatureTerm(feature, weight=beta, scale_weights="fixed"),
        }
    )


def test_distillation_loss_components_and_total() -> None:
    task, soft, feature = DiceLoss(sigmoid=True), SoftTargetKDLoss(), FeatureKDLoss(PAIRS, [4, 8], [6, 10])
    loss = objective(task, soft, feature, alpha=0.7, beta=0.3)
    x = combined_inputs()
    out = loss(x)
    assert set(out) == set(loss.output_keys) == {"loss", "loss_task", "loss_soft", "loss_feature"}
    student_feats, teacher_feats = list(x.student_features.values()), list(x.teacher_features.values())
    assert close(out["loss_task"], task(x.student_logits, x.label))
    assert close(out["loss_soft"], soft(x.student_logits, x.teacher_logits))
    assert close(out["loss_feature"], feature(student_feats, teacher_feats))
    assert close(out["loss"], out["loss_task"] + 0.7 * out["loss_soft"] + 0.3 * out["loss_feature"])
    assert all(not out[k].requires_grad and out[k].ndim == 0 for k in ("loss_task", "loss_soft", "loss_feature"))
    out["loss"].backward()
    assert x.student_logits.grad.abs().sum() > 0
    assert all(s.grad.abs().sum() > 0 for s in student_feats)
    assert all(a.conv.conv.weight.grad is not None for a in feature.adapters)
    assert {id(p) for p in loss.parameters()} == {id(p) for p in feature.parameters()}  # adapters reach the optimiser
    assert loss.needs_teacher and loss.student_paths == [s for _, s in PAIRS]
    assert loss.teacher_paths == [t for t, _ in PAIRS]


def test_distillation_loss_with_zero_weights_is_exactly_the_task_loss() -> None:
    task = DiceLoss(sigmoid=True)
    x = combined_inputs()
    x.teacher_logits = None
    loss = objective(task, Forbidden(), None, alpha=0.0, beta=0.0)
    out = loss(x)
    assert torch.equal(out["loss"], task(x.student_logits, x.label))
    assert out["loss_soft"].item() == 0.0 and out["loss_feature"].item() == 0.0
    assert not loss.needs_teacher and loss.student_paths == [] and list(loss.active_terms()) == ["task"]


def test_distillation_loss_unlabelled_uses_only_kd_terms() -> None:
    soft, feature = SoftTargetKDLoss(), FeatureKDLoss(PAIRS, [4, 8], [6, 10])
    x = combined_inputs(labelled=False)
    out = objective(Forbidden(), soft, feature, alpha=2.0, beta=0.5)(x)
    assert out["loss_task"].item() == 0.0
    expected = 2.0 * soft(x.student_logits, x.teacher_logits) + 0.5 * feature(
        list(x.student_features.values()), list(x.teacher_features.values())
    )
    assert close(out["loss"], expected) and out["loss"] > 0


class MeanProbabilityTerm(DistillationTerm):
    """A term from outside the project: the mean student probability, on every sample."""

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        return torch.sigmoid(inputs.student_logits).mean()


def test_a_new_term_is_one_entry_named_in_the_output() -> None:
    task = DiceLoss(sigmoid=True)
    loss = DistillationLoss({"task": TaskTerm(task), "prior": MeanProbabilityTerm(weight=0.25)})
    x = combined_inputs()
    out = loss(x)
    assert set(out) == {"loss", "loss_task", "loss_prior"}
    assert close(out["loss_prior"], torch.sigmoid(x.student_logits).mean())
    assert close(out["loss"], out["loss_task"] + 0.25 * out["loss_prior"])
    assert not loss.needs_teacher  # this term needs neither the teacher's logits nor its features
    unlabelled = loss(combined_inputs(labelled=False))  # a term without label needs runs on unlabelled batches
    assert unlabelled["loss_task"].item() == 0.0 and close(unlabelled["loss"], 0.25 * unlabelled["loss_prior"])


def test_paired_batches_give_the_task_term_the_labelled_samples_only() -> None:
    task = DiceLoss(sigmoid=True, reduction="mean")
    x = combined_inputs()
    x.num_labelled, x.label = 1, x.label[:1]
    out = DistillationLoss({"task": TaskTerm(task)})(x)
    assert close(out["loss_task"], task(x.student_logits[:1], x.label))
    x.num_labelled = 2  # but one label
    with pytest.raises(ValueError, match="num_labelled=2 does not fit a batch of 2 samples with 1 labels"):
        DistillationLoss({"task": TaskTerm(task)})(x)


def test_distillation_loss_errors() -> None:
    x = combined_inputs(labelled=False)
    with pytest.raises(ValueError, match="nothing to learn"):
        objective(DiceLoss(sigmoid=True), SoftTargetKDLoss(), None, alpha=0.0, beta=0.0)(x)
    with pytest.raises(ValueError, match="nothing to learn"):
        DistillationLoss({"task": TaskTerm(DiceLoss(sigmoid=True))})(x)
    x = combined_inputs()
    x.teacher_logits = None
    with pytest.raises(ValueError, match="teacher's logits"):
        objective(DiceLoss(sigmoid=True), SoftTargetKDLoss(), None, alpha=1.0, beta=0.0)(x)
    with pytest.raises(ValueError, match="non-negative"):
        TaskTerm(DiceLoss(sigmoid=True), weight=-1.0)
    with pytest.raises(ValueError, match="identifiers"):
        DistillationLoss({"soft target": TaskTerm(DiceLoss(sigmoid=True))})
    with pytest.raises(ValueError, match="must be a DistillationTerm"):
        DistillationLoss({"task": DiceLoss(sigmoid=True)})
    with pytest.raises(ValueError, match="at least one term"):
        DistillationLoss({})
    with pytest.raises(ValueError, match="scale_weights must be one of"):
        FeatureTerm(None, scale_weights="learned")


# ---------------------------------------------------------------- hooks


def small_segresnet() -> SegResNet:
    return SegResNet(spatial_dims=3, init_filters=8, in_channels=len(MODALITIES), out_channels=len(REGIONS))


def test_hooks_capture_segresnet_features() -> None:
    net = small_segresnet()
    x = torch.randn(1, len(MODALITIES), 16, 16, 16, requires_grad=True)
    with FeatureHooks(net, ["down_layers.1", "up_layers.0"]) as hooks:
        net(x)
        down, up = hooks.features()
        assert down.shape == (1, 16, 8, 8, 8)  # 2 * init_filters at 1/2
        assert up.shape == (1, 32, 4, 4, 4)  # 4 * init_filters at 1/4
        assert down.requires_grad  # student features keep their graph
        with torch.no_grad():
            net(x[:, :, :8, :8, :8])
        down, up = hooks.features()
        assert down.shape == (1, 16, 4, 4, 4) and not down.requires_grad  # the last forward only
        hooks.clear()
        with pytest.raises(RuntimeError, match="no output captured"):
            hooks.features()
    assert not hooks.active
    net(x)
    with pytest.raises(RuntimeError, match="no output captured"):
        hooks.features()  # removed: nothing captured any more


def test_hooks_do_not_keep_old_features() -> None:
    net = small_segresnet()
    hooks = FeatureHooks(net, ["down_layers.2"], detach=True)
    net(torch.randn(1, len(MODALITIES), 8, 8, 8))
    (feature,) = hooks.features()
    assert not feature.requires_grad
    ref = weakref.ref(feature)
    del feature
    net(torch.randn(1, len(MODALITIES), 8, 8, 8))
    gc.collect()
    assert ref() is None  # the previous forward's output was released
    hooks.remove()


class Branchy(nn.Module):
    """``b`` runs only when asked."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, use_b: bool = True) -> torch.Tensor:
        x = self.a(x)
        return self.b(x) if use_b else x


def test_hooks_never_mix_outputs_of_two_forwards() -> None:
    net = Branchy()
    with FeatureHooks(net, ["b", "a"]) as hooks:
        net(torch.randn(4, 3))
        assert [tuple(f.shape) for f in hooks.features()] == [(4, 2), (4, 3)]  # in the order of paths
        net(torch.randn(5, 3), use_b=False)
        with pytest.raises(RuntimeError, match=r"\['b'\]"):  # b's output of the previous forward is gone
            hooks.features()


def test_hooks_unknown_path_lists_valid_paths() -> None:
    net = small_segresnet()
    with pytest.raises(ValueError, match=r"down_layers\.9") as info:
        FeatureHooks(net, ["down_layers.1", "down_layers.9"])
    assert "down_layers.0" in str(info.value) and "down_layers.3" in str(info.value)
    assert not net.get_submodule("down_layers.1")._forward_hooks  # nothing left registered
    with pytest.raises(ValueError, match="up_layers"):
        FeatureHooks(net, ["up_layer.0"])


def test_hooks_capture_teacher_fused_features_for_feature_kd() -> None:
    teacher = build_tiny_teacher().eval()
    student = small_segresnet()
    x = torch.randn(1, len(MODALITIES), 32, 32, 32)
    student_paths = ["down_layers.1", "down_layers.2", "down_layers.3", "down_layers.3"]
    with FeatureHooks(teacher, teacher.feature_modules()) as t_hooks, FeatureHooks(student, student_paths) as s_hooks:
        with torch.no_grad():
            teacher_logits = teacher(x)
        student_logits = student(x)
        teacher_feats, student_feats = t_hooks.features(), s_hooks.features()
    assert [tuple(f.shape) for f in teacher_feats] == [
        (1, c, 32 // s, 32 // s, 32 // s) for c, s in zip(teacher.feature_channels, teacher.feature_scales, strict=True)
    ]
    assert all(not f.requires_grad for f in teacher_feats)
    assert close(teacher_feats[0].mean(dim=(2, 3, 4)), 0.0, tol=1e-4)  # unweighted, instance-normalised
    # end to end: 1/2..1/8 student maps against 1/2..1/16 teacher maps (the last one downsampled)
    pairs = list(zip(teacher.feature_modules(), student_paths, strict=True))
    feature = FeatureKDLoss(pairs, [16, 32, 64, 64], teacher.feature_channels)
    loss = DistillationLoss(
        {
            "task": TaskTerm(DiceLoss(sigmoid=True)),
            "soft": SoftTargetTerm(SoftTargetKDLoss()),
            "feature": FeatureTerm(feature),
        }
    )
    loss.check_networks(student, teacher)
    out = loss(
        DistillationInputs(
            student_logits,
            teacher_logits,
            student_features=dict(zip(student_paths, student_feats, strict=True)),
            teacher_features=dict(zip(teacher.feature_modules(), teacher_feats, strict=True)),
            teacher=teacher,
        )
    )
    assert torch.isfinite(out["loss"]) and out["loss_feature"] > 0
    assert close(feature.last_weights, torch.full((4,), 0.25))  # the teacher's weights at initialisation
