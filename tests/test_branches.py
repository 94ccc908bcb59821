"""The teacher's branches: single-branch ablations, zeroing a branch at inference, the fusion's gates and
scale weights (their own learning rate), and feature distillation from each branch's own features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Engine

from kd_components.handlers.branches import BRANCH_DIAGNOSTICS_FILE, BranchDiagnostics
from kd_components.hooks import FeatureHooks
from kd_components.losses import build_feature_kd_loss
from kd_components.networks import build_student, build_teacher, parameter_groups
from kd_components.networks.diagnostics import GateRecorder, zero_branch
from kd_components.networks.fusion import MultiScaleFusion
from kd_components.networks.hybrid import FEATURE_SOURCES
from kd_components.networks.student import feature_pairs
from tests.conftest import TINY_TEACHER

SIZE = 32


def tiny(branches: str = "hybrid") -> nn.Module:
    torch.manual_seed(0)
    return build_teacher("demo", img_size=(SIZE,) * 3, branches=branches, **TINY_TEACHER).eval()


def perturbed_forward(net: nn.Module, prefix: str, x: torch.Tensor, branch: str | None) -> torch.Tensor:
    """The output with every parameter under ``prefix`` replaced by noise, ``branch`` zeroed (a copy of ``net``)."""
    copy = build_teacher("demo", img_size=(SIZE,) * 3, **TINY_TEACHER).eval()
    copy.load_state_dict(net.state_dict())
    with torch.no_grad():
        for name, parameter in copy.named_parameters():
            if name.startswith(prefix):
                parameter.add_(torch.randn_like(parameter))
        with zero_branch(copy, branch):
            return copy(x)


@pytest.mark.parametrize("branches, absent", [("cnn", "vit"), ("vit", "vgg")])
def test_single_branch_teacher_has_no_other_encoder(branches: str, absent: str) -> None:
    net = tiny(branches).train()
    assert getattr(net, absent) is None
    assert not any(name.startswith(f"{absent}.") for name, _ in net.named_parameters())
    assert (net.stem is None) == (branches == "cnn")  # the ViT-only teacher's full-resolution skip
    assert all(block.gate is None for block in net.fusion.fuse)
    x = torch.randn(2, 4, SIZE, SIZE, SIZE)
    net(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p.requires_grad)
    scripted = torch.jit.script(net.eval())
    torch.testing.assert_close(scripted(x), net(x))
    assert set(net.branch_feature_modules()) == {"fused", "vit" if branches == "vit" else "cnn"}


@pytest.mark.parametrize("branch, prefix", [("vit", "vit."), ("cnn", "vgg.")])
def test_zero_branch_removes_the_branch(branch: str, prefix: str) -> None:
    net = tiny()
    x = torch.randn(1, 4, SIZE, SIZE, SIZE)
    with torch.no_grad():
        full = net(x)
        with zero_branch(net, branch):
            ablated = net(x)
        after = net(x)
    assert not torch.allclose(full, ablated, atol=1e-4)  # the branch mattered
    torch.testing.assert_close(after, full)  # the hook is gone on exit
    # with the branch zeroed, its weights no longer matter; without zeroing they do
    torch.testing.assert_close(perturbed_forward(net, prefix, x, branch), ablated)
    assert not torch.allclose(perturbed_forward(net, prefix, x, None), full, atol=1e-4)


def test_vit_only_teacher_rejects_vgg_settings() -> None:
    with pytest.raises(ValueError, match="no VGG to freeze"):
        build_teacher("demo", img_size=(SIZE,) * 3, branches="vit", freeze_vgg_stages=2, **TINY_TEACHER)


def test_zero_branch_rejects_a_branch_the_network_lacks() -> None:
    with pytest.raises(ValueError, match="has no vit branch"):
        with zero_branch(tiny("cnn"), "vit"):
            pass
    with pytest.raises(ValueError, match="branch must be one of"):
        with zero_branch(tiny(), "decoder"):
            pass


def test_gate_recorder_matches_the_gates() -> None:
    net = tiny()
    x = torch.randn(1, 4, SIZE, SIZE, SIZE)
    logits = []
    handles = [b.gate.register_forward_hook(lambda m, i, o: logits.append(o.detach())) for b in net.fusion.fuse]
    with torch.no_grad(), GateRecorder(net) as recorder:
        net(x)
    for h in handles:
        h.remove()
    summary = recorder.summary()
    assert len(summary) == len(net.fusion.fuse)
    for row, gate in zip(summary, logits, strict=True):
        share = torch.sigmoid(gate)
        assert row["count"] == share.numel()
        assert row["mean"] == pytest.approx(float(share.mean()), abs=0.01)  # to the bin width
        assert row["p50"] == pytest.approx(float(share.median()), abs=0.011)
        assert row["p10"] <= row["p50"] <= row["p90"]
    assert GateRecorder(tiny("vit")).summary() == []  # no gates, nothing recorded


def test_parameter_groups_give_the_scale_logits_their_own_rate() -> None:
    net = tiny()
    groups = parameter_groups(net, 1e-3, gain_lr_factor=20)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(2e-2)]
    assert groups[1]["params"] == [net.fusion.scale_logits] and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len([p for p in net.parameters() if p.requires_grad])
    assert len(parameter_groups(nn.Linear(2, 2), 1e-3, 20)) == 1  # no gains: one group
    with pytest.raises(ValueError, match="positive"):
        parameter_groups(net, 1e-3, 0)


def train_toy_fusion(gain_lr_factor: float, useful: int = 1, steps: int = 100) -> torch.Tensor:
    """The scale weights after training a 4-scale fusion whose ``useful``-th scale alone carries the target."""
    torch.manual_seed(0)
    fusion = MultiScaleFusion([4] * 4, 8, 4, scales=(2, 4, 8, 16), patch_size=16, branches="cnn")
    model = nn.ModuleDict({"fusion": fusion, "head": nn.Conv3d(16, 1, 1)})
    optimizer = torch.optim.AdamW(parameter_groups(model, 3e-3, gain_lr_factor), weight_decay=1e-5)
    for _ in range(steps):
        target = (torch.rand(2, 1, 2, 2, 2) > 0.5).float()  # a coarse random pattern, 16^3 at full size
        maps = []
        for i, scale in enumerate(fusion.scales):
            noise = torch.randn(2, 4, *(3 * [32 // scale]))
            if i == useful:  # one channel of one scale shows the pattern
                noise[:, :1] += 3 * (F.interpolate(target, size=noise.shape[2:]) - 0.5)
            maps.append(noise)
        up = [F.interpolate(f, size=(16,) * 3, mode="trilinear") for f in fusion(maps, [])]
        loss = F.binary_cross_entropy_with_logits(
            model["head"](torch.cat(up, 1)), F.interpolate(target, size=(16,) * 3)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return fusion.scale_weights().detach()


def test_scale_weights_learn_which_scale_is_useful() -> None:
    weights = train_toy_fusion(gain_lr_factor=20)
    assert int(weights.argmax()) == 1 and float(weights[1]) > 0.8
    # at the base rate they move the same way, but far less
    slow = train_toy_fusion(gain_lr_factor=1)
    assert int(slow.argmax()) == 1 and 0.25 < float(slow[1]) < float(weights[1])


def test_feature_pairs_on_vit_states_shapes_and_gradients() -> None:
    teacher = tiny()
    student = build_student(init_filters=8)
    pairs = feature_pairs(student, ["fused", "vit"], teacher="demo")
    assert [t for t, _ in pairs] == [*FEATURE_SOURCES["fused"], *FEATURE_SOURCES["vit"]]
    assert {s for t, s in pairs if t.startswith("vit.")} == {"down_layers.3"}  # the student's 1/16 level
    loss = build_feature_kd_loss(student, teacher, pairs)
    x = torch.randn(2, 4, SIZE, SIZE, SIZE)
    with FeatureHooks(teacher, loss.teacher_paths) as t_hooks, FeatureHooks(student, loss.student_paths) as s_hooks:
        with torch.no_grad():
            teacher(x)
        student(x)
        teacher_maps = t_hooks.features()
        value = loss(s_hooks.features(), teacher_maps)
    token_grid = SIZE // 16
    for path, fmap in zip(loss.teacher_paths, teacher_maps, strict=True):
        if path.startswith("vit."):
            assert fmap.shape == (2, TINY_TEACHER["vit_hidden_size"], token_grid, token_grid, token_grid)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.down_layers[3].parameters())  # the tapped student levels
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.adapters.parameters())
    with pytest.raises(ValueError, match="distinct names"):
        feature_pairs(student, ["fused", "fused"])


def test_diagnostics_of_a_resumed_training_keep_the_earlier_epochs(tmp_path: Path) -> None:
    earlier = {"scale_weights": [{"epoch": e, "iteration": 3 * e, "weights": [0.25] * 4} for e in (1, 2, 3, 4)]}
    earlier["gates"] = [{"epoch": 2, "scales": []}, {"epoch": 4, "scales": []}]
    (tmp_path / BRANCH_DIAGNOSTICS_FILE).write_text(json.dumps(earlier))
    handler = BranchDiagnostics(tiny(), output_dir=tmp_path)
    trainer = Engine(lambda engine, batch: None)
    trainer.state.epoch, trainer.state.iteration = 4, 12  # resumed after epoch 3: epoch 4 runs again
    handler.epoch_completed(trainer)
    written = json.loads((tmp_path / BRANCH_DIAGNOSTICS_FILE).read_text())
    assert [e["epoch"] for e in written["scale_weights"]] == [1, 2, 3, 4]
    assert [e["epoch"] for e in written["gates"]] == [2]  # the interrupted run's epoch-4 validation is dropped
    trainer.state.epoch = 5
    handler.epoch_completed(trainer)
    written = json.loads((tmp_path / BRANCH_DIAGNOSTICS_FILE).read_text())
    assert [e["epoch"] for e in written["scale_weights"]] == [1, 2, 3, 4, 5]
