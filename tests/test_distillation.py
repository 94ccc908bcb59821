"""Distillation: the trainer, the frozen teacher, batch mixing, and the distilled_student bundle on phantoms."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.bundle import ckpt_export
from monai.data import load_net_with_metadata
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler
from monai.losses import DiceCELoss

from kd_components.checkpoints import TeacherCheckpointError, load_frozen_teacher
from kd_components.config_checks import BundleSettingError, check_settings
from kd_components.constants import MODALITIES, REGIONS
from kd_components.data.mixing import MixedBatchLoader, concat_batches
from kd_components.engines import DistillationTrainer
from kd_components.handlers import every_n_iterations, loss_components
from kd_components.losses import (
    DistillationLoss,
    FeatureTerm,
    SoftTargetKDLoss,
    SoftTargetTerm,
    TaskTerm,
    build_feature_kd_loss,
)
from kd_components.networks.student import build_student, feature_pairs
from kd_components.transforms import BrainMaskd, brain_mask
from tests.conftest import (
    REPO_ROOT,
    SMALL_PATCHES,
    STUDENT_BUNDLE_TINY,
    TINY_TEACHER,
    assert_evaluation_metrics,
    assert_label_map_of,
    build_tiny_teacher,
    bundle_command,
    bundle_workflow,
    phantom_overrides,
    run_checked,
)

BUNDLE = REPO_ROOT / "bundles" / "distilled_student"
CONFIGS = BUNDLE / "configs"
PATCH = tuple(SMALL_PATCHES["patch_size"])


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_teacher(**overrides: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_tiny_teacher(**{"img_size": PATCH, **overrides})


def tiny_student() -> nn.Module:
    torch.manual_seed(1)
    return build_student(init_filters=4, norm="instance")


def labelled_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, len(MODALITIES), *PATCH, generator=g)
    image[..., :8] = 0  # background: outside the brain mask
    label = (torch.rand(1, len(REGIONS), *PATCH, generator=g) > 0.8).float()
    return {"image": image, "label": label}


def unlabelled_batch(seed: int) -> dict[str, torch.Tensor]:
    return {"image": labelled_batch(seed)["image"]}


def make_trainer(
    batches: list[dict[str, torch.Tensor]],
    alpha: float = 1.0,
    beta: float = 1.0,
    teacher: nn.Module | None = None,
    scale_weights: str = "teacher",
    **kwargs: Any,
) -> tuple[DistillationTrainer, DistillationLoss, nn.Module, nn.Module | None]:
    """A trainer with the student bundle's three terms (task, soft, feature), as its ``train.json`` declares them."""
    student = tiny_student()
    teacher = tiny_teacher() if teacher is None and (alpha or beta) else teacher
    feature_loss = build_feature_kd_loss(student, teacher, feature_pairs(student)) if teacher is not None else None
    terms = {
        "task": TaskTerm(DiceCELoss(sigmoid=True)),
        "soft": SoftTargetTerm(SoftTargetKDLoss(4.0), weight=alpha),
        "feature": FeatureTerm(feature_loss, weight=beta, scale_weights=scale_weights),
    }
    loss = DistillationLoss(terms)
    optimizer = torch.optim.Adam([*student.parameters(), *loss.parameters()], lr=1e-2)
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=batches,
        network=student,
        optimizer=optimizer,
        loss_function=loss,
        teacher=teacher,
        **kwargs,
    )
    return trainer, loss, student, teacher


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------- the trainer


def test_trainer_fires_events_logs_components_trains_student_and_adapters_and_keeps_teacher(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a teacher with batch norm: any iteration in train mode would change its running statistics
    teacher = tiny_teacher(vgg_norm="batch")
    before = clone_state(teacher)
    batches = [labelled_batch(0), unlabelled_batch(1), labelled_batch(2)]
    trainer, loss, student, _ = make_trainer(batches, teacher=teacher)
    teacher.train()  # e.g. a handler switched modes: the trainer re-sets eval mode every iteration
    student_before, adapters_before = clone_state(student), clone_state(loss.terms.feature)

    events: Counter[str] = Counter()
    for event in (*IterationEvents, Events.ITERATION_COMPLETED):
        trainer.add_event_handler(event, lambda e, name=event.name: events.update([name]))
    teacher_modes: list[bool] = []
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: teacher_modes.append(teacher.training))
    outputs: list[dict[str, Any]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: outputs.append({"has_label": "label" in e.state.output[0], **loss_components(e.state.output)}),
    )
    StatsHandler(name="kd_test", output_transform=loss_components, iteration_log=True).attach(trainer)
    trainer.run()

    expected_events = ("FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED")
    assert {name: events[name] for name in (*expected_events, "ITERATION_COMPLETED")} == dict.fromkeys(
        (*expected_events, "ITERATION_COMPLETED"), 3
    )
    logged = "\n".join(line for line in capsys.readouterr().out.splitlines() if "Iter:" in line)
    for key in ("loss:", "loss_task:", "loss_soft:", "loss_feature:"):
        assert logged.count(key) == 3, logged
    assert [o["has_label"] for o in outputs] == [True, False, True]
    for out in outputs:
        assert out["loss_soft"] > 0 and out["loss_feature"] > 0
        assert (out["loss_task"] > 0) == out["has_label"]
        total = out["loss_task"] + out["loss_soft"] + out["loss_feature"]  # alpha = beta = 1
        assert out["loss"] == pytest.approx(total, rel=1e-5)
    # the student and the adapters learned; the teacher did not change at all and stayed frozen in eval mode
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())
    assert any(not torch.equal(v, loss.terms.feature.state_dict()[k]) for k, v in adapters_before.items())
    after = teacher.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert teacher_modes == [False] * 3 and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_alpha_beta_zero_is_the_task_loss_only_and_never_runs_the_teacher() -> None:
    teacher = tiny_teacher()
    teacher_calls: list[int] = []
    teacher.register_forward_hook(lambda *args: teacher_calls.append(1))
    trainer, *_ = make_trainer([labelled_batch(0)], alpha=0.0, beta=0.0, teacher=teacher)
    seen: dict[str, Any] = {}

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def _capture(engine: DistillationTrainer) -> None:
        out = engine.state.output
        seen.update(loss=out["loss"].item(), soft=out["loss_soft"].item(), feature=out["loss_feature"].item())
        seen["task"] = DiceCELoss(sigmoid=True)(out["pred"].detach(), out["label"]).item()

    trainer.run()
    assert seen["loss"] == pytest.approx(seen["task"], rel=1e-6) and seen["task"] > 0
    assert seen["soft"] == 0.0 and seen["feature"] == 0.0
    assert teacher_calls == []
    # the baseline needs no teacher at all; an unlabelled batch then has nothing to learn from
    trainer, *_ = make_trainer([unlabelled_batch(0)], alpha=0.0, beta=0.0)
    with pytest.raises(ValueError, match="nothing to learn from"):
        trainer.run()


def test_unlabelled_batch_learns_from_the_kd_terms_only_over_the_brain_mask() -> None:
    batch = unlabelled_batch(0)
    batch["brain_mask"] = torch.zeros(1, 1, *PATCH, dtype=torch.uint8)
    batch["brain_mask"][..., 16:] = 1  # a precomputed mask takes precedence over `image != 0`
    trainer, _, _, teacher = make_trainer([batch], alpha=0.5, beta=2.0)
    assert teacher is not None
    seen: dict[str, Any] = {}

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def _capture(engine: DistillationTrainer) -> None:
        out = engine.state.output
        seen.update({k: out[k].item() for k in ("loss", "loss_task", "loss_soft", "loss_feature")})
        seen["label"] = "label" in out
        with torch.no_grad():
            t = teacher(batch["image"])
            s = out["pred"].detach()
        seen["expected_soft"] = SoftTargetKDLoss(4.0)(s, t, mask=batch["brain_mask"]).item()
        seen["unmasked_soft"] = SoftTargetKDLoss(4.0)(s, t).item()

    trainer.run()
    assert not seen["label"] and seen["loss_task"] == 0.0
    assert seen["loss"] == pytest.approx(0.5 * seen["loss_soft"] + 2.0 * seen["loss_feature"], rel=1e-5)
    assert seen["loss_soft"] == pytest.approx(seen["expected_soft"], rel=1e-5)
    assert seen["loss_soft"] != pytest.approx(seen["unmasked_soft"], rel=1e-3)


@pytest.mark.filterwarnings("ignore:.*CUDA is not available.*:UserWarning")
def test_amp_branch_steps_through_the_grad_scaler() -> None:
    # on a CPU-only machine autocast("cuda") and the GradScaler are disabled, but the AMP branch still runs
    trainer, _, student, _ = make_trainer([labelled_batch(0)], amp=True, optim_set_to_none=True)
    before = clone_state(student)
    trainer.run()
    assert trainer.scaler is not None
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before.items())


def test_feature_scale_weights_are_the_teachers_or_fixed() -> None:
    trainer, loss, _, teacher = make_trainer([labelled_batch(0)])
    feature = loss.terms.feature
    torch.testing.assert_close(feature.teacher_scale_weights(teacher), teacher.scale_weights().detach())
    trainer.run()
    torch.testing.assert_close(feature.loss.last_weights, teacher.scale_weights().detach())
    fixed_trainer, fixed, *_ = make_trainer([labelled_batch(0)], scale_weights="fixed")
    assert fixed.terms.feature.teacher_scale_weights(teacher) is None
    fixed_trainer.run()
    torch.testing.assert_close(fixed.terms.feature.loss.last_weights, torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="a teacher is needed by the active loss terms"):
        soft_only = DistillationLoss(
            {"task": TaskTerm(DiceCELoss(sigmoid=True)), "soft": SoftTargetTerm(SoftTargetKDLoss())}
        )
        DistillationTrainer("cpu", 1, [], tiny_student(), trainer.optimizer, soft_only)
    with pytest.raises(ValueError, match=r"has no submodule 'fusion.fuse.9'"):
        bad = build_feature_kd_loss(tiny_student(), teacher, [("fusion.fuse.0", "down_layers.1")])
        bad.pairs[0] = ("fusion.fuse.9", "down_layers.1")
        DistillationTrainer(
            "cpu", 1, [], tiny_student(), trainer.optimizer, DistillationLoss({"f": FeatureTerm(bad)}), teacher=teacher
        )


def test_feature_kd_loss_reads_channels_from_both_networks() -> None:
    student, teacher = tiny_student(), tiny_teacher()
    loss = build_feature_kd_loss(student, teacher, feature_pairs(student))
    assert [a.in_channels for a in loss.adapters] == [4, 8, 16, 32]  # init_filters 4: 4 * 2**k at down_layers.k
    assert [a.out_channels for a in loss.adapters] == TINY_TEACHER["fusion_channels"]
    assert student.training  # the probe restored the training mode
    with pytest.raises(ValueError, match=r"no submodule 'down_layers\.9'"):
        build_feature_kd_loss(student, teacher, [("fusion.fuse.0", "down_layers.9")])


def test_loss_components_and_log_filter() -> None:
    out = [{"loss": torch.tensor(3.0), "loss_task": 1.0, "loss_soft": 0.5, "loss_feature": torch.tensor(1.5), "x": 1}]
    assert loss_components(out) == {"loss": 3.0, "loss_task": 1.0, "loss_soft": 0.5, "loss_feature": 1.5}
    assert loss_components({"loss": torch.tensor(2.0)}) == {"loss": 2.0}
    assert [every_n_iterations(3)(None, i) for i in range(1, 7)] == [False, False, True, False, False, True]


# ---------------------------------------------------------------------------------------- teacher loading


def test_load_frozen_teacher_loads_strictly_and_freezes(tmp_path: Path) -> None:
    source = tiny_teacher()
    raw, wrapped = tmp_path / "model.pt", tmp_path / "latest.pt"
    torch.save(source.state_dict(), raw)
    torch.save({"model": source.state_dict(), "trainer": {"epoch": 3}}, wrapped)
    for path in (raw, wrapped):
        torch.manual_seed(123)
        teacher = build_tiny_teacher(img_size=PATCH).train()
        assert load_frozen_teacher(teacher, path, "cpu") is teacher
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in teacher.state_dict().items())
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_load_frozen_teacher_rejects_checkpoints_that_do_not_fit(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    wider = tmp_path / "wider_teacher.pt"
    torch.save(tiny_teacher(vgg_width=8).state_dict(), wider)
    with pytest.raises(TeacherCheckpointError, match=r"(?s)wider_teacher\.pt.*shape mismatch.*vgg\.") as err:
        load_frozen_teacher(teacher, wider)
    assert "checkpoint [8," in str(err.value) and "network [4," in str(err.value)
    other = tmp_path / "student.pt"
    torch.save(tiny_student().state_dict(), other)
    with pytest.raises(TeacherCheckpointError, match=r"(?s)student\.pt.*missing key.*unexpected key.*convInit"):
        load_frozen_teacher(teacher, other)
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint not found: .*absent\.pt"):
        load_frozen_teacher(teacher, tmp_path / "absent.pt")
    not_a_state = tmp_path / "list.pt"
    torch.save([1, 2], not_a_state)
    with pytest.raises(TeacherCheckpointError, match=r"list\.pt is not a state dict"):
        load_frozen_teacher(teacher, not_a_state)
    # nothing was loaded: the teacher keeps its weights
    untouched = tiny_teacher().state_dict()
    assert all(torch.equal(v, untouched[k]) for k, v in teacher.state_dict().items())


# ------------------------------------------------------------------------------------------ batch mixing


def test_mixed_batch_loader_interleaves_every_batch_deterministically() -> None:
    labelled, unlabelled = [f"L{i}" for i in range(5)], [f"U{i}" for i in range(3)]
    loader = MixedBatchLoader(labelled, unlabelled, seed=7)
    assert len(loader) == 8
    epochs = [list(loader) for _ in range(3)]
    for epoch in epochs:
        assert [b for b in epoch if b[0] == "L"] == labelled and [b for b in epoch if b[0] == "U"] == unlabelled
    assert len({tuple(e) for e in epochs}) > 1  # the interleaving changes between epochs...
    again = MixedBatchLoader(labelled, unlabelled, seed=7)
    assert [list(again) for _ in range(3)] == epochs  # ...and is the same for the same seed
    assert [list(MixedBatchLoader(labelled, unlabelled, seed=8)) for _ in range(3)] != epochs
    again.set_epoch(1)  # e.g. when resuming: the trainer sets the epoch at EPOCH_STARTED
    assert list(again) == epochs[1] and list(again) == epochs[2]
    spread = MixedBatchLoader(labelled, unlabelled, shuffle=False)
    assert list(spread) == ["L0", "L1", "U0", "L2", "U1", "L3", "U2", "L4"]
    assert list(MixedBatchLoader(labelled)) == labelled and len(MixedBatchLoader(labelled)) == 5
    with pytest.raises(RuntimeError, match="unlabelled loader yielded fewer batches"):
        list(MixedBatchLoader([], _ShortLoader()))


def test_paired_mode_gives_every_step_one_labelled_and_one_unlabelled_batch() -> None:
    def batch(name: str, n: int, label: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"image": torch.full((n, 4, 2, 2, 2), float(len(name))), "case_id": [name] * n}
        if label:
            out["label"] = torch.ones(n, 3, 2, 2, 2)
        return out

    labelled = [batch(f"L{i}", 2, True) for i in range(3)]
    unlabelled = [batch(f"U{i}" + "u" * i, 1, False) for i in range(2)]  # two batches: cycled
    loader = MixedBatchLoader(labelled, unlabelled, mode="paired")
    assert len(loader) == 3  # an epoch sees every labelled batch once, as without unlabelled scans
    steps = [b for _ in range(2) for b in loader]
    assert [b["case_id"] for b in steps] == [
        ["L0", "L0", "U0"], ["L1", "L1", "U1u"], ["L2", "L2", "U0"],  # the unlabelled loader starts over...
        ["L0", "L0", "U1u"], ["L1", "L1", "U0"], ["L2", "L2", "U1u"],  # ...and continues across epochs
    ]  # fmt: skip
    first = steps[0]
    assert first["num_labelled"] == 2 and first["image"].shape == (3, 4, 2, 2, 2)
    assert first["label"].shape == (2, 3, 2, 2, 2)  # labels of the labelled samples only
    assert first["image"][:2].eq(2.0).all() and first["image"][2].eq(2.0).all()
    assert steps[1]["image"][2].eq(3.0).all()
    with pytest.raises(ValueError, match="differ beyond the batch size"):
        concat_batches(labelled[0], {"image": torch.zeros(1, 4, 3, 3, 3)})
    with pytest.raises(ValueError, match="needs a non-empty unlabelled loader"):
        MixedBatchLoader(labelled, [], mode="paired")
    with pytest.raises(ValueError, match="mode must be one of"):
        MixedBatchLoader(labelled, unlabelled, mode="alternate")
    assert len(MixedBatchLoader(labelled, None, mode="paired")) == 3  # no unlabelled loader: labelled only


def test_paired_batch_task_term_on_labelled_samples_kd_terms_on_all() -> None:
    labelled, unlabelled = labelled_batch(0), unlabelled_batch(1)
    paired = concat_batches(labelled, unlabelled)
    trainer, _, _, teacher = make_trainer([paired], alpha=0.5, beta=2.0)
    assert teacher is not None
    seen: dict[str, Any] = {}

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def _capture(engine: DistillationTrainer) -> None:
        out = engine.state.output
        seen.update({k: out[k].item() for k in ("loss", "loss_task", "loss_soft", "loss_feature")})
        s = out["pred"].detach()
        with torch.no_grad():
            t = teacher(paired["image"])
        seen["pred_batch"] = s.shape[0]
        seen["expected_task"] = DiceCELoss(sigmoid=True)(s[:1], labelled["label"]).item()
        seen["expected_soft"] = SoftTargetKDLoss(4.0)(s, t, mask=brain_mask(paired["image"], channel_dim=1)).item()
        seen["labelled_only_soft"] = SoftTargetKDLoss(4.0)(s[:1], t[:1], mask=labelled["image"].ne(0).any(1, True))

    trainer.run()
    assert seen["pred_batch"] == 2
    assert seen["loss_task"] == pytest.approx(seen["expected_task"], rel=1e-5)
    assert seen["loss_soft"] == pytest.approx(seen["expected_soft"], rel=1e-5)
    assert seen["loss_soft"] != pytest.approx(seen["labelled_only_soft"].item(), rel=1e-5)  # as exact as the above
    total = seen["loss_task"] + 0.5 * seen["loss_soft"] + 2.0 * seen["loss_feature"]
    assert seen["loss"] == pytest.approx(total, rel=1e-5)


class _ShortLoader:
    """Claims two batches, yields one."""

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Iterator[str]:
        return iter(["U0"])


def test_brain_mask_transform_marks_non_zero_voxels() -> None:
    image = torch.zeros(4, 5, 5, 5)
    image[2, 1:3, 1:3, 1:3] = -1.0  # z-scored brain voxels may be negative
    out = BrainMaskd("image")({"image": image})
    assert out["brain_mask"].shape == (1, 5, 5, 5) and out["brain_mask"].dtype == torch.uint8
    assert int(out["brain_mask"].sum()) == 8 and torch.equal(out["image"], image)


# ---------------------------------------------------------------------------------------------- bundle


@pytest.mark.parametrize(
    "files, workflow_type",
    [(["train.json"], "train"), (["train.json", "demo.json"], "train"), (["inference.json"], "infer")],
)
def test_workflow_properties_are_complete(
    files: list[str], workflow_type: str, phantom_data: dict[str, Path], tmp_path: Path
) -> None:
    workflow = bundle_workflow(
        CONFIGS,
        files,
        workflow_type,
        **phantom_overrides(phantom_data, tmp_path),
        **(
            {"teacher_ckpt": str(phantom_data["teacher_ckpt"]), "cache_rate": 0.0, **STUDENT_BUNDLE_TINY}
            if files[0] == "train.json"
            else SMALL_PATCHES
        ),
    )
    assert workflow.check_properties() in (None, [])


def test_default_student_is_much_smaller_than_the_teacher_and_the_baseline_needs_no_teacher(
    phantom_data: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = {
        **phantom_overrides(phantom_data, tmp_path),
        "cache_rate": 0.0,
        **STUDENT_BUNDLE_TINY,
    }
    parser = bundle_workflow(CONFIGS, ["train.json"], "train", **common).parser
    student = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in student.parameters()) < 178.7e6 / 30
    # alpha = beta = 0: the baseline, without teacher (no checkpoint needed), adapters or unlabelled data
    baseline = bundle_workflow(
        CONFIGS, ["train.json"], "train", alpha=0, beta=0, teacher_ckpt=str(tmp_path / "absent.pt"), **common
    )
    trainer = baseline.parser.get_parsed_content("train#trainer")
    assert trainer.teacher is None and list(trainer.loss_function.parameters()) == []
    assert trainer.data_loader.num_unlabelled == 0 and trainer.data_loader.num_labelled > 0
    # distillation on labelled scans only
    labelled_only = bundle_workflow(
        CONFIGS, ["train.json"], "train", use_unlabelled=False, teacher_ckpt=str(phantom_data["teacher_ckpt"]), **common
    )
    assert labelled_only.parser.get_parsed_content("train#mixed_loader").num_unlabelled == 0
    # a user with labelled scans only: the default (auto) distils on them and says so in one line
    listed = json.loads(phantom_data["datalist"].read_text())
    assert listed["testing"], "the fixture's datalist lists unlabelled scans"
    labelled_list = tmp_path / "labelled_only.json"
    labelled_list.write_text(json.dumps({**listed, "testing": []}))
    only = {**common, "data_list_file_path": str(labelled_list), "teacher_ckpt": str(phantom_data["teacher_ckpt"])}
    with caplog.at_level(logging.WARNING, logger="kd_components.data.mixing"):
        auto = bundle_workflow(CONFIGS, ["train.json"], "train", **only)
        assert auto.parser.get_parsed_content("train#mixed_loader").num_unlabelled == 0
    assert f"{labelled_list} lists no unlabelled scans" in caplog.text
    with pytest.raises(Exception) as forced:
        workflow = bundle_workflow(CONFIGS, ["train.json"], "train", use_unlabelled="true", **only)
        workflow.parser.get_parsed_content("train#mixed_loader")
    chain, err = [], forced.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    assert any("to distil on labelled scans only, pass --use_unlabelled false" in m for m in chain)
    # ... and with unlabelled scans in the datalist, auto takes them
    with_scans = bundle_workflow(CONFIGS, ["train.json"], "train", teacher_ckpt=only["teacher_ckpt"], **common)
    assert with_scans.parser.get_parsed_content("train#mixed_loader").num_unlabelled > 0
    # paired: each step one labelled and one unlabelled batch, the task loss on the labelled samples
    paired = bundle_workflow(
        CONFIGS,
        ["train.json"],
        "train",
        unlabelled_mixing="paired",
        batch_size=1,
        num_samples=2,
        teacher_ckpt=str(phantom_data["teacher_ckpt"]),
        **common,
    )
    loader = paired.parser.get_parsed_content("train#mixed_loader")
    assert loader.paired and len(loader) == loader.num_labelled == 2  # 2 labelled training cases, batch size 1
    batch = next(iter(loader))  # 1 case x 2 patches labelled, then 1 case x 2 patches unlabelled
    assert batch["num_labelled"] == 2 and batch["label"].shape == (2, 3, *PATCH)
    assert batch["image"].shape == (4, 4, *PATCH) and batch["brain_mask"].shape == (4, 1, *PATCH)
    assert len(set(batch["case_id"])) == 2
    with pytest.raises(BundleSettingError, match=r"--unlabelled_mixing 'alternate' \(str\): expected 'interleave' or"):
        check_settings(unlabelled_mixing="alternate")


def test_distil_infer_evaluate_export_on_phantoms(phantom_data: dict[str, Path]) -> None:
    bundle_root = phantom_data["bundle"]
    common = {**phantom_overrides(phantom_data, bundle_root), **SMALL_PATCHES}
    train = [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")]
    run = {"epochs": 1, "val_interval": 1, "num_samples": 1, "batch_size": 1, "log_interval": 1}
    overrides = {**common, **STUDENT_BUNDLE_TINY, **run, "teacher_ckpt": str(phantom_data["teacher_ckpt"])}
    cmd = bundle_command(train, overrides, logging_file=CONFIGS / "logging.conf")
    result = run_checked(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    # 2 labelled training cases + 1 unlabelled case, batch size 1: 3 iterations, one without a label
    iterations = [line for line in result.stdout.splitlines() if "Iter:" in line and "loss_soft" in line]
    assert len(iterations) == 3 and sum("loss_task: 0.0000" in line for line in iterations) == 1, result.stdout[-3000:]

    models = bundle_root / "models"
    student_keys = set(build_student().state_dict())
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == student_keys  # the student alone: no adapter or teacher keys
    (latest,) = models.glob("latest*.pt")
    full = torch.load(latest, map_location="cpu", weights_only=True)
    assert set(full["model"]) == student_keys
    assert any(k.startswith("terms.feature.loss.adapters.") for k in full["distillation_loss"])

    infer = bundle_workflow(CONFIGS, ["inference.json"], "infer", **common)
    infer.run()
    infer.finalize()
    out_dir = bundle_root / "eval"
    test_case = json.loads(phantom_data["datalist"].read_text())["testing"][0]
    assert_label_map_of(out_dir / f"{test_case['case_id']}.nii.gz", phantom_data["data"] / test_case["image"][0])

    evaluate = bundle_workflow(CONFIGS, [*train, "evaluate.json"], "eval", **common)
    evaluate.run()
    evaluate.finalize()
    assert_evaluation_metrics(out_dir)

    # TorchScript export of the trained student equals the eager network
    ts_path = bundle_root / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(models / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
    )
    scripted, meta, _ = load_net_with_metadata(str(ts_path))
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == len(MODALITIES)
    eager = build_student()
    eager.load_state_dict(state)
    eager.eval()
    x = torch.randn(1, len(MODALITIES), 48, 32, 64)  # sides divisible by the student's size_divisor (16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=1e-4)
