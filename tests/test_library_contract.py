"""The parts of MONAI and Ignite that kd_components relies on although they are private or undocumented.

Each test checks one private attribute, private method or undocumented behaviour, and fails with a message
naming it, the project file that relies on it and the installed versions. setup.cfg pins MONAI and Ignite to
the range these tests pass on: before widening it, run this module on the new version, and where a test
fails, change the project code it names (then this test).

Checked elsewhere, not repeated here:

- MONAI's ``ViT.forward`` and ``ViTEncoder3d``'s re-implementation of it give the same hidden states:
  tests/test_networks.py::test_vit_hidden_states_match_monai_vit;
- ``ckpt_export`` embedding ``inference.json`` and ``metadata.json`` the way kd_components/deploy.py reads them:
  tests/test_export.py::test_model_ts_alone_segments_a_phantom_as_monai_deploy_would;
- the atomic checkpoint saver end to end (a failed save keeps the old file; resuming after a kill):
  tests/test_reliability.py.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite
import monai
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver, HausdorffDistance
from monai.metrics import HausdorffDistanceMetric, compute_hausdorff_distance
from monai.networks.blocks import Convolution
from monai.networks.nets import SegResNet, ViT

from kd_components.checkpoints import AtomicCheckpointSaver
from kd_components.engines import DistillationTrainer
from kd_components.losses import DistillationLoss, TaskTerm

VERSIONS = f"MONAI {monai.__version__}, pytorch-ignite {ignite.__version__}, torch {torch.__version__}"

HANDLERS = "kd_components/checkpoints/handlers.py"
RESUME = "kd_components/checkpoints/resume.py"
TRAINER = "kd_components/engines/trainer.py (DistillationTrainer)"
FINITE_LOSS = "kd_components/handlers/finite_loss.py (FiniteLossGuard)"
METRICS = "kd_components/handlers/metrics.py (HausdorffDistanceMM.update)"
VIT = "kd_components/networks/vit.py (ViTEncoder3d)"
STUDENT = "kd_components/networks/student.py (build_student, STUDENT_FEATURE_MODULES)"

pytestmark = pytest.mark.usefixtures("one_thread")


def broken(what: str, where: str, detail: str = "") -> str:
    """The failure message: what changed, who relies on it, and in which library versions."""
    return f"{what}, relied on by {where}, is missing or changed in {VERSIONS}" + (f": {detail}" if detail else "")


def parameter_names(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


def resolve(obj: Any, dotted: str) -> Any:
    """``obj.a.b.0.c`` for ``"a.b.0.c"`` (digits index into module lists)."""
    for part in dotted.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def loop_engine() -> Engine:
    """An Ignite engine whose iterations do nothing."""
    return Engine(lambda engine, batch: None)


# ------------------------------------------------------------------------------------------ checkpoint saving

SAVER_CHECKPOINTS = {
    # private attribute of CheckpointSaver -> the fixed file name given for it below (None: Ignite's name)
    "_final_checkpoint": "model.pt",
    "_key_metric_checkpoint": "best.pt",
    "_interval_checkpoint": None,
}


@pytest.mark.parametrize("attribute", list(SAVER_CHECKPOINTS))
def test_checkpoint_saver_keeps_each_checkpoint_in_a_private_attribute(tmp_path: Path, attribute: str) -> None:
    """AtomicCheckpointSaver swaps the save handler of CheckpointSaver's three private Checkpoint objects."""
    where = f"{HANDLERS} (AtomicCheckpointSaver.__init__)"
    saver = CheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": nn.Linear(2, 2)},
        save_final=True,
        final_filename="model.pt",
        save_key_metric=True,
        key_metric_filename="best.pt",
        save_interval=1,
        n_saved=1,
    )
    assert hasattr(saver, attribute), broken(f"CheckpointSaver.{attribute}", where)
    checkpoint = getattr(saver, attribute)
    assert isinstance(checkpoint, Checkpoint), broken(
        f"CheckpointSaver.{attribute}", where, f"expected an ignite Checkpoint, got {type(checkpoint).__name__}"
    )
    handler = checkpoint.save_handler
    assert isinstance(handler, DiskSaver), broken(
        f"CheckpointSaver.{attribute}.save_handler", where, f"expected a DiskSaver, got {type(handler).__name__}"
    )
    assert Path(handler.dirname) == tmp_path, broken(f"CheckpointSaver.{attribute}.save_handler.dirname", where)
    assert getattr(handler, "filename", None) == SAVER_CHECKPOINTS[attribute], broken(
        f"CheckpointSaver.{attribute}.save_handler.filename (the fixed file name)", where
    )
    # a checkpoint not asked for is None (AtomicCheckpointSaver and ResumableCheckpoint test `is not None`)
    bare = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": nn.Linear(2, 2)})
    assert getattr(bare, attribute, "missing") is None, broken(
        f"CheckpointSaver.{attribute} when that checkpoint is not asked for (None)", f"{where} and {RESUME}"
    )


class RecordingSaver(DiskSaver):
    """A DiskSaver that records save and remove calls instead of touching files."""

    def __init__(self, dirname: Path) -> None:
        super().__init__(dirname, require_empty=False)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        self.calls.append(("save", filename))

    def remove(self, filename: str) -> None:
        self.calls.append(("remove", filename))


def test_checkpoint_removes_the_file_it_replaces_before_saving_the_new_one(tmp_path: Path) -> None:
    """AtomicDiskSaver.remove defers the removal, because Ignite removes the old file *before* the new save;
    it also relies on Checkpoint calling whatever ``save_handler`` holds at call time (it is replaced)."""
    where = f"{HANDLERS} (AtomicDiskSaver.remove, AtomicCheckpointSaver)"
    checkpoint = Checkpoint(
        {"model": nn.Linear(2, 2)},
        DiskSaver(tmp_path, require_empty=False),
        filename_prefix="latest",
        score_function=lambda engine: engine.state.epoch,
        score_name="epoch",
        n_saved=1,
    )
    recorder = RecordingSaver(tmp_path)
    checkpoint.save_handler = recorder
    engine = loop_engine()
    engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    engine.run([0], max_epochs=2)
    expected = [
        ("save", "latest_model_epoch=1.pt"),
        ("remove", "latest_model_epoch=1.pt"),
        ("save", "latest_model_epoch=2.pt"),
    ]
    assert recorder.calls == expected, broken(
        "ignite Checkpoint.__call__ calling save_handler.remove(old) before save_handler(new), "
        "through the save_handler attribute set after construction",
        where,
        f"calls {recorder.calls}, expected {expected}",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the recording saver must not have written files"


def test_disk_saver_takes_the_arguments_and_has_the_attributes_atomic_disk_saver_uses(tmp_path: Path) -> None:
    where = f"{HANDLERS} (AtomicDiskSaver)"
    names = parameter_names(DiskSaver.__init__)
    for name in ("dirname", "atomic", "create_dir", "require_empty"):
        assert name in names, broken(f"DiskSaver.__init__ argument '{name}'", where, f"arguments {names}")
    saver = DiskSaver(tmp_path / "new", require_empty=False, atomic=True, create_dir=True)
    assert (tmp_path / "new").is_dir(), broken("DiskSaver(create_dir=True) creating the folder", where)
    assert isinstance(saver.dirname, Path), broken("DiskSaver.dirname (a Path: `dirname / old`)", where)
    assert getattr(saver, "save_on_rank", None) == 0, broken("DiskSaver.save_on_rank", where)
    assert getattr(saver, "kwargs", None) == {}, broken("DiskSaver.kwargs (torch.save's arguments)", where)
    assert parameter_names(DiskSaver.remove) == ["self", "filename"], broken(
        "DiskSaver.remove(filename)", where, f"arguments {parameter_names(DiskSaver.remove)}"
    )


def test_disk_saver_writes_every_checkpoint_through_save_func(tmp_path: Path) -> None:
    """AtomicDiskSaver overrides the private ``DiskSaver._save_func(checkpoint, path, func)`` to write atomically."""
    where = f"{HANDLERS} (AtomicDiskSaver._save_func)"
    assert hasattr(DiskSaver, "_save_func"), broken("DiskSaver._save_func", where)
    names = parameter_names(DiskSaver._save_func)
    assert names == ["self", "checkpoint", "path", "func"], broken("DiskSaver._save_func signature", where, str(names))
    calls: list[tuple[Any, Path, Callable]] = []

    class Probe(DiskSaver):
        def _save_func(self, checkpoint: Any, path: Path, func: Callable) -> None:
            calls.append((checkpoint, path, func))

    Probe(tmp_path, require_empty=False)({"w": torch.zeros(1)}, "x.pt", {"basename": "x"})
    assert len(calls) == 1, broken("DiskSaver.__call__ saving through self._save_func", where, f"{len(calls)} calls")
    _, path, func = calls[0]
    assert Path(path) == tmp_path / "x.pt" and func is torch.save, broken(
        "DiskSaver.__call__ passing (dirname / filename, torch.save) to _save_func", where, f"got ({path}, {func})"
    )
    assert not (tmp_path / "x.pt").exists(), broken("DiskSaver.__call__ writing only through _save_func", where)


@pytest.mark.parametrize("saver_class", [CheckpointSaver, AtomicCheckpointSaver], ids=lambda c: c.__name__)
def test_interval_checkpoint_last_checkpoint_is_the_file_written(tmp_path: Path, saver_class: type) -> None:
    """ResumableCheckpoint reads ``saver._interval_checkpoint.last_checkpoint`` to delete stale ``latest*.pt``."""
    where = f"{RESUME} (ResumableCheckpoint._remove_stale, find_latest_checkpoint)"
    network = nn.Linear(2, 2)
    try:
        saver = saver_class(
            save_dir=str(tmp_path),
            save_dict={"model": network, "optimizer": torch.optim.SGD(network.parameters(), lr=0.1)},
            file_prefix="latest",
            save_interval=1,
            n_saved=1,
            epoch_level=True,
        )
    except AttributeError as err:  # AtomicCheckpointSaver reads the private checkpoints in its __init__
        raise AssertionError(broken("CheckpointSaver's private checkpoint attributes", HANDLERS, str(err))) from err
    engine = loop_engine()
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["latest_checkpoint_epoch=2.pt"], broken(
        "CheckpointSaver(file_prefix='latest', save_interval=1, n_saved=1) keeping one 'latest*.pt' file",
        where,
        f"files {written}",
    )
    interval = getattr(saver, "_interval_checkpoint", None)
    assert interval is not None, broken("CheckpointSaver._interval_checkpoint", where)
    last = interval.last_checkpoint
    assert last is not None and Path(str(last)).name == written[0], broken(
        "CheckpointSaver._interval_checkpoint.last_checkpoint (the file last written)", where, f"got {last!r}"
    )


def test_checkpoint_loader_keeps_its_arguments_as_attributes_and_attaches_itself(tmp_path: Path) -> None:
    """CheckedCheckpointLoader reads the loader's settings from its attributes and overrides ``__call__``."""
    where = f"{HANDLERS} (CheckedCheckpointLoader.__call__)"
    load_dict = {"model": nn.Linear(2, 2)}
    path = str(tmp_path / "c.pt")
    calls: list[Engine] = []

    class Probe(CheckpointLoader):
        def __call__(self, engine: Engine) -> None:
            calls.append(engine)

    loader = Probe(load_path=path, load_dict=load_dict, map_location="cpu", strict=True, strict_shape=True)
    expected = {"load_path": path, "load_dict": load_dict, "map_location": "cpu", "strict": True, "strict_shape": True}
    for name, value in expected.items():
        assert getattr(loader, name, "missing") == value, broken(f"CheckpointLoader.{name}", where)
    engine = loop_engine()
    loader.attach(engine)
    assert isinstance(loader.logger, logging.Logger), broken("CheckpointLoader.logger (a Logger)", where)
    engine.run([0], max_epochs=1)
    assert calls == [engine], broken(
        "CheckpointLoader.attach registering the loader itself on Events.STARTED", where, f"{len(calls)} calls"
    )


# ------------------------------------------------------------------------------------------------ the trainer


def tiny_trainer_args(network: nn.Module, **kwargs: Any) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn(2, 4, 8, 8, 8, generator=g), "label": torch.rand(2, 3, 8, 8, 8, generator=g)}
        for _ in range(3)
    ]
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)  # momentum: every step counts
    return {"device": "cpu", "max_epochs": 2, "train_data_loader": batches, "network": network, "optimizer": optimizer}


def label_only_loss(task_loss: nn.Module) -> DistillationLoss:
    """A DistillationLoss with the task term alone: the supervised baseline, which never runs a teacher."""
    return DistillationLoss({"task": TaskTerm(task_loss)})


def test_supervised_trainer_runs_an_overridden_iteration() -> None:
    """DistillationTrainer replaces the private ``SupervisedTrainer._iteration(engine, batchdata)`` whole."""
    assert hasattr(SupervisedTrainer, "_iteration"), broken("SupervisedTrainer._iteration", TRAINER)
    names = parameter_names(SupervisedTrainer._iteration)
    assert names == ["self", "engine", "batchdata"], broken(
        "SupervisedTrainer._iteration signature", TRAINER, str(names)
    )
    seen: list[int] = []

    class Probe(SupervisedTrainer):
        def _iteration(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict:
            seen.append(engine.state.iteration)
            return {}

    Probe(loss_function=nn.MSELoss(), decollate=False, **tiny_trainer_args(nn.Conv3d(4, 3, 1))).run()
    assert seen == list(range(1, 7)), broken("SupervisedTrainer running self._iteration per iteration", TRAINER)


TRAINER_ATTRIBUTES = (
    "prepare_batch",
    "non_blocking",
    "to_kwargs",
    "amp",
    "scaler",
    "amp_kwargs",
    "optim_set_to_none",
    "accumulation_steps",
    "inferer",
    "network",
    "optimizer",
    "loss_function",
    "state.device",
    "state.epoch_length",
)


@pytest.mark.parametrize("attribute", TRAINER_ATTRIBUTES)
def test_supervised_trainer_has_the_attributes_the_distillation_step_reads(attribute: str) -> None:
    trainer = SupervisedTrainer(loss_function=nn.MSELoss(), **tiny_trainer_args(nn.Conv3d(4, 3, 1)))
    owner, _, name = attribute.rpartition(".")
    assert hasattr(resolve(trainer, owner) if owner else trainer, name), broken(
        f"SupervisedTrainer attribute engine.{attribute}", f"{TRAINER}._iteration"
    )


@pytest.mark.parametrize(
    "argument",
    [
        "inferer",
        "amp",
        "amp_kwargs",
        "to_kwargs",
        "optim_set_to_none",
        "accumulation_steps",
        "iteration_update",
        "compile",
    ],
)
def test_supervised_trainer_takes_the_arguments_distillation_trainer_passes_on(argument: str) -> None:
    names = parameter_names(SupervisedTrainer.__init__)
    assert argument in names, broken(f"SupervisedTrainer argument '{argument}'", f"{TRAINER}.__init__", str(names))


def test_iteration_events_hold_the_four_events_the_distillation_step_fires() -> None:
    names = {event.name for event in IterationEvents}
    fired = {"FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"}
    assert fired <= names, broken(f"IterationEvents {sorted(fired - names)}", f"{TRAINER}._iteration")


def run_and_trace(trainer_class: type, **kwargs: Any) -> tuple[list[tuple], dict[str, torch.Tensor]]:
    """Train a 1x1x1 Conv3d for 2 epochs of 3 batches; the events fired, with the weight and its gradient at each."""
    torch.manual_seed(0)
    network = nn.Conv3d(4, 3, kernel_size=1)
    task = nn.MSELoss()
    loss = task if trainer_class is SupervisedTrainer else label_only_loss(task)
    trainer = trainer_class(loss_function=loss, **tiny_trainer_args(network), **kwargs)
    trace: list[tuple] = []

    def record(engine: Any, name: str) -> None:
        grad = network.weight.grad
        trace.append(
            (engine.state.iteration, name, None if grad is None else grad.clone(), network.weight.detach().clone())
        )

    for event in (Events.ITERATION_STARTED, *IterationEvents, Events.ITERATION_COMPLETED):
        trainer.add_event_handler(event, record, event.name)
    trainer.run()
    return trace, {k: v.detach().clone() for k, v in network.state_dict().items()}


@pytest.mark.filterwarnings("ignore:.*CUDA is not available.*:UserWarning")
@pytest.mark.filterwarnings("ignore:.*GradScaler.*is deprecated.*:FutureWarning")
@pytest.mark.parametrize(
    ("accumulation_steps", "optim_set_to_none", "amp"),
    [(1, False, False), (1, True, False), (2, False, False), (2, True, False), (2, True, True)],
)
def test_distillation_step_without_kd_terms_is_supervised_trainers_step(
    accumulation_steps: int, optim_set_to_none: bool, amp: bool
) -> None:
    """DistillationTrainer._iteration re-implements ``SupervisedTrainer._iteration``: with the KD terms off it
    must fire the same events in the same order, zero and step the optimiser on the same iterations (gradient
    accumulation, ``optim_set_to_none``, the AMP branch: on CPU autocast and the GradScaler are disabled) and
    train to the same weights. Not duplicated in tests/test_distillation.py, which tests the KD terms."""
    kwargs = {"accumulation_steps": accumulation_steps, "optim_set_to_none": optim_set_to_none, "amp": amp}
    expected, expected_weights = run_and_trace(SupervisedTrainer, **kwargs)
    actual, actual_weights = run_and_trace(DistillationTrainer, **kwargs)
    what = f"SupervisedTrainer._iteration with {kwargs}"
    events, own_events = [(i, name) for i, name, *_ in expected], [(i, name) for i, name, *_ in actual]
    if own_events != events:
        first = next((k for k, pair in enumerate(zip(events, own_events, strict=False)) if pair[0] != pair[1]), None)
        first = min(len(events), len(own_events)) if first is None else first
        raise AssertionError(
            broken(
                f"the events fired by {what}",
                f"{TRAINER}._iteration",
                f"from event {first} on, SupervisedTrainer fires {events[first : first + 6]}, "
                f"DistillationTrainer {own_events[first : first + 6]}",
            )
        )
    for (i, name, grad, weight), (_, _, own_grad, own_weight) in zip(expected, actual, strict=True):
        where = f"{TRAINER}._iteration / _accumulation_flags"
        assert (grad is None) == (own_grad is None), broken(
            f"gradient zeroing (set_to_none) of {what}", where, f"iteration {i} at {name}: grad is None {grad is None}"
        )
        assert grad is None or torch.equal(grad, own_grad), broken(
            f"gradient accumulation of {what}", where, f"iteration {i} at {name}: gradients differ"
        )
        assert torch.equal(weight, own_weight), broken(
            f"optimiser steps of {what}", where, f"iteration {i} at {name}: weights differ"
        )
    for key, value in expected_weights.items():
        assert torch.equal(value, actual_weights[key]), broken(f"the training result of {what}", TRAINER, key)
    # the comparison exercised what it is meant to: cleared gradients are None only with optim_set_to_none
    at_forward = [grad for _, name, grad, _ in expected if name == "FORWARD_COMPLETED"]
    assert any(g is None for g in at_forward[1:]) == optim_set_to_none  # the first has had no backward yet
    if accumulation_steps > 1:  # the second iteration of an epoch adds to the first one's gradient
        assert at_forward[1] is not None and at_forward[1].abs().sum() > 0


def test_loss_completed_fires_before_backward_and_the_optimizer_step() -> None:
    """FiniteLossGuard raises on LOSS_COMPLETED so that a NaN loss never reaches the weights."""
    network = nn.Conv3d(4, 3, kernel_size=1)
    before = network.weight.detach().clone()
    trainer = SupervisedTrainer(loss_function=nn.MSELoss(), optim_set_to_none=True, **tiny_trainer_args(network))
    seen: dict[str, Any] = {}

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def stop(engine: Any) -> None:
        seen["loss"] = "loss" in engine.state.output
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        trainer.run()
    assert seen == {"loss": True}, broken("SupervisedTrainer's output['loss'] at LOSS_COMPLETED", FINITE_LOSS)
    assert network.weight.grad is None and torch.equal(network.weight, before), broken(
        "SupervisedTrainer firing LOSS_COMPLETED before backward() and optimizer.step()", FINITE_LOSS
    )


# ---------------------------------------------------------------------------------------------------- metrics

HD_SETTINGS = {"include_background": True, "distance_metric": "euclidean", "percentile": 95.0, "directed": True}


@pytest.mark.parametrize("attribute", list(HD_SETTINGS))
def test_hausdorff_handler_metric_keeps_its_settings_as_attributes(attribute: str) -> None:
    handler = HausdorffDistance(**HD_SETTINGS)
    metric = getattr(handler, "metric_fn", None)
    assert isinstance(metric, HausdorffDistanceMetric), broken("HausdorffDistance.metric_fn", METRICS)
    assert getattr(metric, attribute, "missing") == HD_SETTINGS[attribute], broken(
        f"HausdorffDistanceMetric.{attribute}", METRICS
    )


def test_compute_hausdorff_distance_takes_the_settings_and_a_spacing() -> None:
    names = parameter_names(compute_hausdorff_distance)
    for name in (*HD_SETTINGS, "spacing"):
        assert name in names, broken(f"compute_hausdorff_distance argument '{name}'", METRICS, str(names))


def test_extending_the_metric_buffer_is_calling_the_metric() -> None:
    """HausdorffDistanceMM computes the distances itself (with the spacing) and ``extend``s the metric's buffer,
    relying on the buffer holding ``compute_hausdorff_distance``'s ``(B, C)`` rows, as the metric's own call does."""
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(2, 2, 8, 8, 8, generator=g) > 0.5).float()
    label = (torch.rand(2, 2, 8, 8, 8, generator=g) > 0.5).float()
    called, extended = HausdorffDistanceMetric(**HD_SETTINGS), HausdorffDistanceMetric(**HD_SETTINGS)
    called(pred, label)
    for p, y in zip(pred, label, strict=True):
        extended.extend(compute_hausdorff_distance(p[None], y[None], spacing=(1.0, 1.0, 1.0), **HD_SETTINGS))
    torch.testing.assert_close(
        extended.aggregate(), called.aggregate(), msg=lambda m: broken("Cumulative.extend + aggregate", METRICS, m)
    )


# --------------------------------------------------------------------------------------------------- networks

VIT_MODULES = (
    "patch_embedding.patch_embeddings",
    "patch_embedding.position_embeddings",
    "patch_embedding.dropout",
    "blocks",
    "norm",
)


def tiny_vit() -> ViT:
    return ViT(
        in_channels=4,
        img_size=(16, 16, 16),
        patch_size=8,
        hidden_size=48,
        mlp_dim=96,
        num_layers=2,
        num_heads=4,
        proj_type="conv",
        classification=False,
        spatial_dims=3,
    )


@pytest.mark.parametrize("path", VIT_MODULES)
def test_vit_has_the_submodules_the_encoder_runs_itself(path: str) -> None:
    """ViTEncoder3d writes its own forward around these ViT parts (to resample the position embeddings)."""
    vit = tiny_vit()
    try:
        part = resolve(vit, path)
    except AttributeError as err:
        raise AssertionError(broken(f"ViT.{path}", VIT, str(err))) from err
    if path == "patch_embedding.patch_embeddings":
        assert isinstance(part, nn.Conv3d), broken(f"ViT.{path} (a Conv3d with proj_type='conv')", VIT)
    if path == "patch_embedding.position_embeddings":
        assert tuple(part.shape) == (1, 8, 48), broken(f"ViT.{path} shape (1, tokens, hidden)", VIT, str(part.shape))


def test_vit_blocks_have_an_unused_cross_attention_norm() -> None:
    """ViTEncoder3d freezes ``block.norm_cross_attn`` because it gets no gradient without cross-attention
    (DistributedDataParallel fails on trainable parameters that get none)."""
    vit = tiny_vit()
    for i, block in enumerate(vit.blocks):
        assert isinstance(getattr(block, "norm_cross_attn", None), nn.Module), broken(
            f"ViT.blocks.{i}.norm_cross_attn", VIT
        )
    vit(torch.randn(1, 4, 16, 16, 16))[0].sum().backward()
    grads = [p.grad for block in vit.blocks for p in block.norm_cross_attn.parameters()]
    assert grads and all(g is None for g in grads), broken("ViT.blocks.*.norm_cross_attn being unused", VIT)


def test_segresnet_module_paths_of_the_student_features() -> None:
    """The default feature pairs tap SegResNet's ``down_layers.k`` (``init_filters * 2**k`` channels at 1/2**k),
    and ``build_student`` initialises the bias of ``conv_final``."""
    network = SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=8, blocks_down=(1, 2, 2, 4))
    assert isinstance(getattr(network, "conv_final", None), nn.Module), broken("SegResNet.conv_final", STUDENT)
    layers = getattr(network, "down_layers", None)
    assert isinstance(layers, nn.ModuleList) and len(layers) == 4, broken("SegResNet.down_layers (4 levels)", STUDENT)
    shapes: list[tuple[int, ...]] = []
    for layer in layers:
        layer.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        network(torch.randn(1, 4, 16, 16, 16))
    expected = [(1, 8 * 2**k, 16 // 2**k, 16 // 2**k, 16 // 2**k) for k in range(4)]
    assert shapes == expected, broken("SegResNet.down_layers.k output shapes", STUDENT, f"{shapes} != {expected}")


def test_dynunet_get_conv_layer_takes_the_arguments_used() -> None:
    from monai.networks.blocks import dynunet_block

    where = "kd_components/networks/fusion.py and hybrid.py"
    assert hasattr(dynunet_block, "get_conv_layer"), broken("monai.networks.blocks.dynunet_block.get_conv_layer", where)
    names = parameter_names(dynunet_block.get_conv_layer)
    used = ("spatial_dims", "in_channels", "out_channels", "kernel_size", "stride", "act", "norm", "bias", "conv_only")
    for name in (*used, "is_transposed"):
        assert name in names, broken(f"get_conv_layer argument '{name}'", where, str(names))


def test_get_norm_layer_takes_name_spatial_dims_channels() -> None:
    from monai.networks import layers

    where = "kd_components/losses/feature.py (FeatureAdapter)"
    assert hasattr(layers, "get_norm_layer"), broken("monai.networks.layers.get_norm_layer", where)
    names = parameter_names(layers.get_norm_layer)
    assert names[:3] == ["name", "spatial_dims", "channels"], broken("get_norm_layer signature", where, str(names))


def test_convolution_has_conv_and_adn_submodules() -> None:
    """VGG19Encoder3d's module paths and checkpoint keys (``stages.k.convN.conv.weight``) follow MONAI's
    Convolution layout: the ``nn.Conv3d`` under ``conv``, norm and activation under ``adn``."""
    block = Convolution(3, 2, 4, kernel_size=3, act="relu", norm="instance", bias=True)
    children = dict(block.named_children())
    assert isinstance(children.get("conv"), nn.Conv3d) and "adn" in children, broken(
        "Convolution submodules 'conv' and 'adn'", "kd_components/networks/vgg.py (VGG19Encoder3d)", str(list(children))
    )


def test_sliding_window_grid_private_helpers() -> None:
    """``kd_components.segment.crop.window_starts`` uses MONAI's private ``_get_scan_interval`` and
    ``dense_patch_slices`` to count the windows of a grid: they must place windows as ``sliding_window_inference``
    does."""
    from monai.inferers import sliding_window_inference

    from kd_components.segment.crop import window_starts

    starts: list[int] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        starts.append(int(x[0, 0, 0, 0, 0].item()))  # the volume holds its row index: the window's first row
        return x.clone()

    rows = torch.arange(100, dtype=torch.float32).view(1, 1, 100, 1, 1).expand(1, 1, 100, 8, 8).contiguous()
    sliding_window_inference(rows, (32, 8, 8), 1, record, overlap=0.25)
    assert starts == window_starts(100, 32, 0.25) == [0, 24, 48, 68]
    assert window_starts(20, 32, 0.25) == [0]  # shorter than the window: padded, one window
