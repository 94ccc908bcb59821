"""Multi-process training with the bundles' ``configs/multi_gpu_train.json`` overlays (2 CPU processes, gloo).

The distillation run launches ``python -m torch.distributed.run --nproc_per_node=2`` on 127.0.0.1, exactly as
the bundle README tells a user with two GPUs (NCCL there, gloo here), and checks that rank 0 alone writes one
set of checkpoints holding the bare student, and that the validation Dice is reduced over both ranks' cases.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from monai.handlers import CheckpointSaver, LrScheduleHandler, StatsHandler

from kd_components.geometry import GEOMETRY_FILE, read_training_geometry
from kd_components.handlers import ProgressBar, main_process_handlers
from kd_components.handlers.branches import BRANCH_DIAGNOSTICS_FILE
from kd_components.losses import build_feature_kd_loss
from kd_components.networks.student import build_student, feature_pairs
from kd_components.networks.utils import unwrap_module
from tests.conftest import (
    PHANTOM_PIXDIM,
    REPO_ROOT,
    SMALL_PATCHES,
    STUDENT_BUNDLE_TINY,
    TEACHER_BUNDLE_TINY,
    build_tiny_teacher,
    bundle_command,
    bundle_workflow,
    phantom_overrides,
    run_checked,
)

STUDENT = REPO_ROOT / "bundles" / "distilled_student"
TEACHER = REPO_ROOT / "bundles" / "hybrid_teacher"
#: The student starts predicting foreground almost everywhere, so that each validation case has its own non-zero Dice.
HIGH_PRIOR = {"network_def#output_prior": 0.9}

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # five small phantoms (four labelled in two folds of two, one unlabelled) and a tiny teacher
    pytest.mark.phantoms(num_cases=5, num_folds=2),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_main_process_handlers_drop_reporting_and_saving_handlers_on_other_ranks(tmp_path: Path) -> None:
    net = nn.Linear(2, 2)
    scheduler = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(net.parameters(), lr=0.1), 1)
    handlers = [
        LrScheduleHandler(scheduler),
        StatsHandler(),
        ProgressBar(),
        CheckpointSaver(str(tmp_path), {"model": net}, save_final=True),
        "custom",
    ]
    assert main_process_handlers(handlers, rank=0) == handlers
    assert main_process_handlers(handlers, rank=1) == [handlers[0], "custom"]
    assert main_process_handlers(None, rank=1) == []


def test_feature_paths_name_the_bare_student_inside_a_ddp_wrapper() -> None:
    class Wrapped(nn.DataParallel):  # the same ``.module`` unwrapping as DistributedDataParallel, without a group
        pass

    student = build_student(init_filters=4, norm="instance")
    wrapped = Wrapped(student)
    assert unwrap_module(wrapped) is student
    teacher = build_tiny_teacher()
    pairs = feature_pairs(wrapped)  # the bare network's paths
    loss = build_feature_kd_loss(wrapped, teacher, pairs)
    assert loss.student_paths == [s for _, s in pairs]


def test_batch_norm_is_synchronised_only_across_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """On GPUs in a process group the default student's batch norms become SyncBatchNorm (same state-dict keys);
    on the CPU (gloo, where SyncBatchNorm cannot run) and outside a group they stay."""
    import kd_components.distributed as distributed

    student = build_student(init_filters=8)
    keys = set(student.state_dict())
    cpu = distributed.sync_batch_norm(student, torch.device("cpu"))
    assert cpu is student and not any(isinstance(m, nn.SyncBatchNorm) for m in cpu.modules())
    monkeypatch.setattr(nn.Module, "to", lambda self, *args, **kwargs: self)  # no GPU here: only the conversion
    assert not any(
        isinstance(m, nn.SyncBatchNorm) for m in distributed.sync_batch_norm(student, torch.device("cuda")).modules()
    )
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    synced = distributed.sync_batch_norm(student, torch.device("cuda"))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in synced.modules())
    assert set(synced.state_dict()) == keys


@pytest.mark.parametrize("bundle", [STUDENT, TEACHER], ids=["student", "teacher"])
def test_overlay_wraps_the_network_in_ddp_shards_the_data_and_filters_handlers(bundle: Path) -> None:
    overlay = json.loads((bundle / "configs" / "multi_gpu_train.json").read_text())
    assert overlay["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert overlay["network"]["module"]["_target_"] == "kd_components.distributed.sync_batch_norm"
    assert overlay["validate#evaluator#network"] == "@network_def"  # validation runs the bare network
    for loader in ("train", "validate"):
        assert overlay[f"{loader}#dataloader#sampler"] == f"@{loader}#sampler"
        assert overlay[f"{loader}#sampler"]["_target_"] == "DistributedSampler"
    assert overlay["train#dataloader#shuffle"] is False and overlay["validate#sampler"]["even_divisible"] is False
    for handlers in ("train#trainer#train_handlers", "validate#evaluator#val_handlers"):
        assert overlay[handlers]["_target_"] == "kd_components.handlers.main_process_handlers"
    assert overlay["initialize"][0]["_target_"] == "kd_components.distributed.init_distributed"
    assert overlay["finalize"][0]["_target_"] == "kd_components.distributed.destroy_distributed"
    if bundle == STUDENT:  # the unlabelled scans are sharded too
        assert overlay["train#unlabelled#dataloader#sampler"] == "@train#unlabelled#sampler"


def test_two_process_distillation_writes_one_bare_checkpoint_and_reduces_validation_over_ranks(
    phantom_data: dict[str, Path],
) -> None:
    bundle_root = phantom_data["bundle"]
    configs = STUDENT / "configs"
    files = [str(configs / f) for f in ("train.json", "demo.json", "multi_gpu_train.json")]
    common = {**phantom_overrides(phantom_data, bundle_root), **SMALL_PATCHES}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1"]
    launch += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    run = {"epochs": 1, "val_interval": 1, "num_samples": 1, "batch_size": 1, "log_interval": 1, "cache_rate": 0.0}
    teacher = {**STUDENT_BUNDLE_TINY, "teacher_ckpt": str(phantom_data["teacher_ckpt"])}
    cmd = bundle_command(
        files, {**common, **teacher, **run, **HIGH_PRIOR}, logging_file=configs / "logging.conf", launcher=launch
    )
    # two CPU processes with gloo, also on a machine with one GPU (where rank 1 would have no GPU of its own)
    result = run_checked(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    log = result.stdout + result.stderr

    # 2 training cases + 1 unlabelled case split over 2 ranks (padded): 2 iterations per rank, rank 0 logs them
    iterations = [line for line in result.stdout.splitlines() if "Iter:" in line and "loss_soft" in line]
    assert len(iterations) == 2, log[-4000:]
    # one set of checkpoint files, written by rank 0, holding the bare student (no ``module.`` prefix)
    models = bundle_root / "models"
    saved = sorted(p.name for p in models.iterdir() if p.name not in ("model.pt", GEOMETRY_FILE))
    assert saved == ["latest_checkpoint_epoch=1.pt"]
    assert read_training_geometry(models / "model.pt") == {"pixdim": list(PHANTOM_PIXDIM), "orientation": "LPS"}
    student_keys = set(build_student().state_dict())
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == student_keys
    full = torch.load(next(models.glob("latest*.pt")), map_location="cpu", weights_only=True)
    assert set(full["model"]) == student_keys
    assert full["trainer"]["iteration"] == 2  # 2 iterations per rank: the trainer state of rank 0

    # each rank's evaluator reports the same key metric: the Dice of both validation cases, gathered
    best = [float(v) for v in re.findall(r"Got new best metric of val_mean_dice: (\S+)", log)]
    assert len(best) == 2 and best[0] == best[1], log[-4000:]

    # ... which is what one process evaluating the saved student on the whole validation fold finds
    evaluate = bundle_workflow(configs, [*files[:2], "evaluate.json"], "eval", **common, **HIGH_PRIOR)
    evaluate.run()
    evaluate.finalize()
    with open(bundle_root / "eval" / "metrics.csv") as f:
        single = float(dict(csv.reader(f))["val_mean_dice"])
    with open(bundle_root / "eval" / "val_mean_dice_raw.csv") as f:
        per_case = [float(r[-1]) for r in list(csv.reader(f))[1:]]  # columns: filename, TC, WT, ET, mean
    assert len(per_case) == 2
    assert best[0] == pytest.approx(single, abs=1e-5)
    # not the Dice of one rank's case alone: the mean of the two cases, which differ
    assert abs(per_case[0] - per_case[1]) > 1e-6 and best[0] == pytest.approx(sum(per_case) / 2, abs=1e-6)


def test_rank0_only_handlers_run_no_collective() -> None:
    """A handler attached on rank 0 alone must not call a collective that the other ranks never join (the teacher's
    branch ablation did: ``DiceMetric.aggregate`` gathers across ranks, and training never ended). The source of
    modules of every rank-0-only handler type and of the classes it inherits from name none."""
    import inspect

    from kd_components.handlers.main_process import MAIN_PROCESS_HANDLER_TYPES

    collective = re.compile(r"all_gather|all_reduce|barrier|broadcast|\.aggregate\(|DistributedSampler")
    for handler_type in (*MAIN_PROCESS_HANDLER_TYPES, ProgressBar):
        for cls in handler_type.__mro__:
            if cls.__module__.split(".")[0] not in ("monai", "kd_components"):
                continue
            found = collective.findall(inspect.getsource(inspect.getmodule(cls)))
            assert not found, f"{handler_type.__name__} ({cls.__qualname__}) runs on rank 0 only but calls {found}"


def test_branch_diagnostics_run_on_every_rank_and_write_on_rank0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist
    from ignite.engine import Engine

    from kd_components.handlers import BranchDiagnostics

    diagnostics = BranchDiagnostics(build_tiny_teacher(), None, tmp_path)
    assert main_process_handlers([diagnostics], rank=1) == [diagnostics]
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration = 1, 3
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    diagnostics.epoch_completed(engine)
    assert len(diagnostics.record["scale_weights"]) == 1 and not (tmp_path / "branch_diagnostics.json").exists()
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    diagnostics.epoch_completed(engine)
    assert (tmp_path / "branch_diagnostics.json").is_file()


def test_two_process_teacher_training_with_its_diagnostics_finishes_and_writes_one_bare_checkpoint(
    phantom_data: dict[str, Path], tmp_path: Path
) -> None:
    """``multi_gpu_train.json`` of the teacher with its default handlers (the branch diagnostics included, whose
    ablation after the last epoch hung the run): both processes end, rank 0 writes one set of checkpoints holding
    the bare teacher and the diagnostics with the ablation of both ranks' validation cases."""
    configs = TEACHER / "configs"
    files = [str(configs / f) for f in ("train.json", "demo.json", "multi_gpu_train.json")]
    out = tmp_path / "teacher"
    common = {**phantom_overrides(phantom_data, out), **TEACHER_BUNDLE_TINY}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1"]
    launch += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    run = {"epochs": 1, "val_interval": 1, "num_samples": 1, "batch_size": 1, "log_interval": 1, "cache_rate": 0.0}
    run |= {"ckpt_dir": str(out / "models"), "output_dir": str(out / "runs")}
    cmd = bundle_command(files, {**common, **run}, logging_file=configs / "logging.conf", launcher=launch)
    run_checked(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, timeout=300)

    models = out / "models"
    saved = sorted(p.name for p in models.iterdir() if p.name not in ("model.pt", GEOMETRY_FILE))
    assert saved == ["latest_checkpoint_epoch=1.pt"]
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == set(build_tiny_teacher().state_dict())  # no ``module.`` prefix
    diagnostics = json.loads((out / "runs" / BRANCH_DIAGNOSTICS_FILE).read_text())
    assert diagnostics["ablation"]["epoch"] == 1
    assert set(diagnostics["ablation"]["dice"]) == {"full", "vit", "cnn"}
    assert len(diagnostics["scale_weights"]) == 1


def test_a_local_rank_without_a_gpu_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from kd_components.distributed import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert local_device() == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match=r"local rank 1 has no GPU: 1 CUDA device\(s\) visible.*--nproc_per_node"):
        local_device()
