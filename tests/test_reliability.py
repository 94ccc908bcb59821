"""Faults a long training run or a batch inference meets, and what the user sees (docs/reliability.md).

Killed training resumed from the last completed epoch; NaN losses; checkpoints that do not fit or hold
code; wrong overrides; invalid cases in a batch inference; the same seed giving the same result.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import Evaluator, SupervisedTrainer

from kd_components.checkpoints import (
    CheckedCheckpointLoader,
    CheckpointLoadError,
    ResumableCheckpoint,
    TeacherCheckpointError,
    load_frozen_teacher,
)
from kd_components.constants import MODALITIES, SEG_SUFFIX, case_file_name
from kd_components.geometry import GEOMETRY_FILE
from kd_components.handlers import FinalValidationHandler, FiniteLossGuard, NonFiniteLossError
from kd_components.io import save_nifti_atomic
from tests.conftest import (
    REPO_ROOT,
    TEACHER_BUNDLE_TINY,
    brats_kd,
    build_tiny_teacher,
    bundle_command,
    run_checked,
    tiny_label,
)

CONFIGS = REPO_ROOT / "bundles" / "hybrid_teacher" / "configs"
TRAIN = [str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")]
SHAPE = (24, 20, 16)


def _write_case(root: Path, cid: str, labelled: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    label = np.zeros(SHAPE, np.uint8)
    label[4:16, 4:14, 3:11] = tiny_label((12, 10, 8))
    for modality in MODALITIES:
        data = rng.uniform(1, 100, SHAPE).astype(np.float32) + 50 * (label > 0)
        save_nifti_atomic(data, affine, root / cid / case_file_name(cid, modality))
    if labelled:
        save_nifti_atomic(label, affine, root / cid / case_file_name(cid, SEG_SUFFIX))
    return root / cid


def _dataset(root: Path, labelled: int = 4) -> tuple[Path, Path]:
    data = root / "data"
    for i in range(labelled):
        _write_case(data, f"BraTS-SYN-{i:05d}-000", seed=i)
    datalist = root / "datalist.json"
    args = ["--dataset-dir", str(data), "--output", str(datalist), "--num-folds", "2", "--quiet", "--workers", "1"]
    assert brats_kd("datalist", *args) == 0
    return data, datalist


def _train_command(data: Path, datalist: Path, run: Path, **settings: object) -> list[str]:
    values = {
        "bundle_root": str(run),
        "dataset_dir": str(data),
        "data_list_file_path": str(datalist),
        "output_dir": str(run / "tb"),
        **TEACHER_BUNDLE_TINY,
        "num_samples": 1,
        "batch_size": 1,
        **settings,
    }
    return bundle_command(TRAIN, values, logging_file=CONFIGS / "logging.conf")


def _checkpoint_epoch(path: Path) -> int:
    """The completed epochs recorded in a training checkpoint (Ignite stores iterations and epoch length)."""
    trainer = torch.load(path, map_location="cpu", weights_only=True)["trainer"]
    return int(trainer["iteration"]) // int(trainer["epoch_length"])


def _latest(models: Path) -> Path | None:
    files = sorted(models.glob("latest*.pt"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def test_killed_training_resumes_from_the_last_completed_epoch(tmp_path: Path) -> None:
    """SIGKILL at random points, several times; each resume continues after the last saved epoch."""
    data, datalist = _dataset(tmp_path)
    # enough epochs that three kills, each up to 1.5 s after a new checkpoint, cannot reach the end: on an idle
    # machine a tiny-teacher epoch takes about 0.25 s
    run, epochs = tmp_path / "run", 40
    models = run / "models"
    rng = random.Random()
    saved_epoch, log = 0, []
    for attempt in range(3):
        resume = ["--resume_from", "latest"] if attempt else []
        out = (tmp_path / f"attempt{attempt}.log").open("w")
        proc = subprocess.Popen(
            _train_command(data, datalist, run, epochs=epochs, val_interval=4) + resume,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:  # wait for a checkpoint newer than the last
            latest = _latest(models)
            if latest is not None and int(re.search(r"epoch=(\d+)", latest.name)[1]) > saved_epoch:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"run {attempt} ended before it could be killed: {proc.returncode}"
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        out.close()
        text = (tmp_path / f"attempt{attempt}.log").read_text()
        if attempt:
            assert f"continuing after epoch {saved_epoch} " in text, text[-3000:]
        every = sorted(models.glob("latest*.pt"), key=lambda p: p.stat().st_mtime)
        # one checkpoint; two only if the kill fell between a save and the removal of the one it replaces
        assert 1 <= len(every) <= 2, every
        epoch = _checkpoint_epoch(every[-1])  # a kill, even during a save, never leaves a corrupt checkpoint
        assert epoch > saved_epoch, (attempt, delay, epoch, saved_epoch)
        log.append((delay, epoch))
        saved_epoch = epoch
    assert saved_epoch < epochs, f"training finished before the last kill: {log}"
    final = run_checked(
        [*_train_command(data, datalist, run, epochs=epochs, val_interval=4), "--resume_from", "latest"]
    )
    assert f"continuing after epoch {saved_epoch} " in final.stdout
    every = sorted(models.glob("latest*.pt"))
    assert [p.name for p in every] == [f"latest_checkpoint_epoch={epochs}.pt"]
    assert _checkpoint_epoch(every[0]) == epochs
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    build_tiny_teacher().load_state_dict(state, strict=True)
    expected = [f"latest_checkpoint_epoch={epochs}.pt", "model.pt", GEOMETRY_FILE]
    assert sorted(p.name for p in models.iterdir()) == expected


def test_same_seed_gives_the_same_model_and_metrics_and_the_seed_is_logged(tmp_path: Path) -> None:
    data, datalist = _dataset(tmp_path)
    outputs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run = tmp_path / name
        result = run_checked(_train_command(data, datalist, run, epochs=2, val_interval=1, seed=seed))
        assert re.search(rf"settings: .*\bseed={seed}\b", result.stdout), result.stdout[-2000:]
        metrics = re.findall(r"val_mean_dice: ([0-9.]+)", result.stdout)
        assert len(metrics) >= 2, result.stdout[-2000:]
        outputs[name] = (torch.load(run / "models" / "latest_checkpoint_epoch=2.pt", weights_only=True), metrics)
    (model_a, dice_a), (model_b, dice_b), (model_c, _) = outputs["a"], outputs["b"], outputs["c"]
    assert dice_a == dice_b
    for key, value in model_a["model"].items():
        torch.testing.assert_close(model_b["model"][key], value, rtol=0, atol=0, msg=key)
    assert any(not torch.equal(model_c["model"][k], v) for k, v in model_a["model"].items())


def test_wrong_override_types_stop_before_training_and_name_the_setting(tmp_path: Path) -> None:
    values = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "nowhere"), "epochs": "ten"}
    cmd = [*bundle_command(TRAIN, values), "--patch_size", "64", "--learning_rate", "-0.1"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode != 0
    assert "invalid bundle settings:" in result.stderr
    assert "--epochs 'ten' (str): expected a positive integer" in result.stderr
    assert "--patch_size 64 (int): expected a list of three positive integers" in result.stderr
    assert "--learning_rate -0.1 (float): expected a positive number" in result.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_batch_inference_skips_invalid_cases_reports_them_and_writes_the_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = [_write_case(data, f"BraTS-GLI-0000{i}-000", labelled=False, seed=i).name for i in range(2)]
    nan_case = _write_case(data, "BraTS-GLI-00010-000", labelled=False)
    t1c = nan_case / case_file_name(nan_case.name, "t1c")
    array = np.asarray(nib.load(t1c).dataobj).copy()
    array[3, 3, 3] = np.nan
    save_nifti_atomic(array, np.diag([-2.0, -2.0, 2.0, 1.0]), t1c)
    truncated = _write_case(data, "BraTS-GLI-00011-000", labelled=False)
    t2f = truncated / case_file_name(truncated.name, "t2f")
    t2f.write_bytes(t2f.read_bytes()[: t2f.stat().st_size // 2])
    missing = _write_case(data, "BraTS-GLI-00012-000", labelled=False)
    (missing / case_file_name(missing.name, "t1n")).unlink()
    other = _write_case(data, "BraTS-GLI-00013-000", labelled=False, seed=5)
    (other / case_file_name(other.name, "t2w")).write_text("not a NIfTI file\n")

    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    torch.save(build_tiny_teacher().state_dict(), bundle / "models" / "model.pt")
    out_dir = tmp_path / "predictions"
    values = {"bundle_root": str(bundle), "dataset_dir": str(data), "output_dir": str(out_dir), **TEACHER_BUNDLE_TINY}
    values["plausibility_check"] = False  # small synthetic cases, no brains (tests/test_plausibility.py checks that)
    cmd = [*bundle_command([CONFIGS / "inference.json"], values, run_id=None), "--data_list_file_path", ""]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)

    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    message = result.stderr
    assert "inference wrote 2 label map(s) and skipped 4 invalid case(s)" in message
    assert "BraTS-GLI-00010-000: BraTS-GLI-00010-000-t1c.nii.gz: contains non-finite voxels (1 NaN, 0 Inf)" in message
    assert "BraTS-GLI-00011-000: BraTS-GLI-00011-000-t2f.nii.gz: cannot be read as NIfTI" in message
    assert "BraTS-GLI-00012-000" in message and "missing modality 't1n'" in message
    assert "BraTS-GLI-00013-000: BraTS-GLI-00013-000-t2w.nii.gz: cannot be read as NIfTI" in message
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == sorted([*(f"{c}.nii.gz" for c in good), "inference_summary.json", "volumes.csv", "volumes.json"])
    summary = json.loads((out_dir / "inference_summary.json").read_text())
    assert summary["written"] == good and summary["num_skipped"] == 4
    assert {s["case_id"] for s in summary["skipped"]} == {f"BraTS-GLI-000{i}-000" for i in (10, 11, 12, 13)}


def _engine_with_loader(loader: CheckedCheckpointLoader) -> Engine:
    engine = Engine(lambda e, b: None)
    loader.attach(engine)
    return engine


def test_checkpoint_of_another_architecture_is_rejected_naming_the_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    torch.save(build_tiny_teacher(vgg_width=2).state_dict(), ckpt)  # the same architecture family, another size
    network = build_tiny_teacher()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(CheckpointLoadError, match=r"(?s)checkpoint .*model\.pt does not fit.*shape mismatch"):
        _engine_with_loader(CheckedCheckpointLoader(str(ckpt), {"model": network})).run([0])
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*absent\.pt"):
        _engine_with_loader(CheckedCheckpointLoader(str(tmp_path / "absent.pt"), {"model": network})).run([0])
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointLoadError, match=r"cannot read checkpoint .*model\.pt"):
        _engine_with_loader(CheckedCheckpointLoader(str(ckpt), {"model": network})).run([0])


class _Payload:
    """A pickle that runs code when loaded without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_pickles_with_code_are_refused_everywhere_weights_are_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    network = build_tiny_teacher()
    torch.save({"model": network.state_dict(), "extra": _Payload(marker)}, evil)
    with pytest.raises(CheckpointLoadError, match=r"cannot read checkpoint .*evil\.pt"):
        _engine_with_loader(CheckedCheckpointLoader(str(evil), {"model": network})).run([0])
    with pytest.raises(TeacherCheckpointError, match=r"cannot read the teacher checkpoint .*evil\.pt"):
        load_frozen_teacher(network, evil)
    trainer = Engine(lambda e, b: None)
    ResumableCheckpoint(tmp_path / "models", {"model": network}, resume_from=str(evil)).attach(trainer)
    with pytest.raises(CheckpointLoadError, match="Weights only load failed"):
        trainer.run([0], max_epochs=1)
    assert not marker.exists()


def _tiny_trainer(
    loss_values: list[float], tmp_path: Path, resume_from: str = ""
) -> tuple[SupervisedTrainer, torch.nn.Module, list]:
    """A 1-layer network trained on 2 batches per epoch with a loss that returns ``loss_values`` in turn."""
    network = torch.nn.Conv3d(1, 1, 1)
    calls = iter(loss_values)

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean() * 0 + next(calls)

    batches = [{"image": torch.ones(1, 1, 2, 2, 2), "label": torch.zeros(1, 1, 2, 2, 2)}] * 2
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=batches,
        network=network,
        optimizer=optimizer,
        loss_function=loss,
        train_handlers=[FiniteLossGuard()],
    )
    ResumableCheckpoint(tmp_path, {"model": network, "optimizer": optimizer}, resume_from=resume_from).attach(trainer)
    snapshots: list = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: snapshots.append(network.weight.detach().clone()))
    return trainer, network, snapshots


def test_nan_loss_stops_training_before_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    trainer, network, snapshots = _tiny_trainer([0.5, 0.4, 0.3, float("nan"), 0.2, 0.1], tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 2, iteration 4 \(batch 2 of the epoch\)"):
        trainer.run()
    assert len(snapshots) == 3
    assert torch.equal(network.weight, snapshots[-1]) and torch.isfinite(network.weight).all()
    saved = sorted(p.name for p in tmp_path.glob("latest*.pt"))
    assert saved == ["latest_checkpoint_epoch=1.pt"]
    state = torch.load(tmp_path / saved[0], weights_only=True)
    assert _checkpoint_epoch(tmp_path / saved[0]) == 1 and torch.isfinite(state["model"]["weight"]).all()


def test_a_failed_save_keeps_the_checkpoint_it_was_to_replace(tmp_path: Path, monkeypatch) -> None:
    """Ignite removes the old checkpoint before it writes the new one; the atomic saver defers the removal."""
    trainer, _, _ = _tiny_trainer([0.5] * 6, tmp_path)
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs) -> None:
        calls.append(f)
        if len(calls) == 2:  # the epoch-2 checkpoint: write part of it, then fail (a kill or a full disk)
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise OSError("No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        trainer.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest_checkpoint_epoch=1.pt"]  # no partial temp file
    assert _checkpoint_epoch(tmp_path / "latest_checkpoint_epoch=1.pt") == 1


def test_resume_after_a_kill_between_save_and_removal_takes_the_newer_checkpoint(tmp_path: Path) -> None:
    older = tmp_path / "latest_checkpoint_epoch=1.pt"
    trainer, _, _ = _tiny_trainer([0.5] * 2, tmp_path)
    trainer.state.max_epochs = 1
    trainer.run()
    epoch_1 = older.read_bytes()
    trainer, _, _ = _tiny_trainer([0.5] * 4, tmp_path)
    trainer.state.max_epochs = 2
    trainer.run()
    newer = tmp_path / "latest_checkpoint_epoch=2.pt"
    older.write_bytes(epoch_1)  # as a kill would leave it: the new one saved, the old one not yet removed
    os.utime(older, (newer.stat().st_mtime - 60,) * 2)
    resumed, _, _ = _tiny_trainer([0.5] * 2, tmp_path, resume_from="latest")
    resumed.run()
    assert resumed.state.epoch == 3 and resumed.state.iteration == 6  # continued after epoch 2, not epoch 1
    assert sorted(p.name for p in tmp_path.glob("latest*.pt")) == ["latest_checkpoint_epoch=3.pt"]


def test_nan_guard_names_the_loss_term() -> None:
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration, engine.state.epoch_length = 3, 11, 5
    engine.state.output = {"loss": torch.tensor(float("inf")), "loss_task": 0.5, "loss_soft": float("inf")}
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, iteration 11 \(batch 1 of the epoch\): loss, loss_soft"):
        FiniteLossGuard()(engine)
    engine.state.output = {"loss": torch.tensor(0.3), "loss_task": 0.3}
    FiniteLossGuard()(engine)  # finite: nothing happens


def test_a_training_shorter_than_val_interval_still_leaves_a_model(tmp_path: Path) -> None:
    """``--epochs 1`` with ``val_interval`` 6 never validated, so no ``model.pt`` was written and inference failed."""
    data, datalist = _dataset(tmp_path)
    run = tmp_path / "run"
    result = subprocess.run(
        _train_command(data, datalist, run, epochs=1, val_interval=6), capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (run / "models" / "model.pt").is_file()
    assert result.stdout.count("SupervisedEvaluator - INFO - Engine run finished") == 1  # one validation


def test_final_validation_runs_at_each_interval_and_once_after_the_last_epoch() -> None:
    class CountingEvaluator(Evaluator):
        def __init__(self) -> None:
            super().__init__(device="cpu", val_data_loader=[0], iteration_update=lambda e, b: None)
            self.epochs: list[int] = []

        def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
            self.epochs.append(global_epoch)

    for max_epochs, expected in ((1, [1]), (12, [6, 12]), (14, [6, 12, 14])):
        validator = CountingEvaluator()
        trainer = Engine(lambda e, b: None)
        FinalValidationHandler(interval=6, validator=validator).attach(trainer)
        trainer.run([0], max_epochs=max_epochs)
        assert validator.epochs == expected, (max_epochs, validator.epochs)
