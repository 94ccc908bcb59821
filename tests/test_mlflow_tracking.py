"""MLflow tracking of both bundles: MONAI's ``--tracking``, the bundles' ``configs/mlflow.json``, a real server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from kd_components.networks.student import build_student
from kd_components.tracking import MAX_PARAM_LENGTH, count_parameters, run_name, run_params
from tests.conftest import (
    REPO_ROOT,
    STUDENT_BUNDLE_TINY,
    TEACHER_BUNDLE_TINY,
    build_tiny_teacher,
    bundle_command,
    phantom_overrides,
    run_checked,
)

TEACHER_CONFIGS = REPO_ROOT / "bundles" / "hybrid_teacher" / "configs"
STUDENT_CONFIGS = REPO_ROOT / "bundles" / "distilled_student" / "configs"
SERVER_START_TIMEOUT_S = 120
REGION_DICE = ("val_mean_dice", "val_dice_tc", "val_dice_wt", "val_dice_et")


# ------------------------------------------------------------------------------------------ the helpers


def test_run_params_records_values_as_mlflow_strings_and_counts_parameters() -> None:
    student = build_student(init_filters=4, norm="instance")
    student.conv_final.requires_grad_(False)
    teacher = build_tiny_teacher()
    params = run_params(
        {"fold": 1, "alpha": 0.5, "patch_size": [32, 32, 32], "amp": False, "none": None},
        network=student,
        teacher=teacher,
    )
    assert params["fold"] == 1 and params["alpha"] == 0.5 and params["amp"] is False
    assert params["patch_size"] == "[32, 32, 32]" and params["none"] == "null"
    total = sum(p.numel() for p in student.parameters())
    frozen = sum(p.numel() for p in student.conv_final.parameters())
    assert params["num_parameters"] == total == count_parameters(student)
    assert params["num_trainable_parameters"] == total - frozen > 0
    assert params["network_class"] == "StridedSegResNet" and params["teacher_class"] == "HybridTeacher"
    assert params["teacher_num_parameters"] == sum(p.numel() for p in teacher.parameters())
    assert "teacher_class" not in run_params({}, network=student, teacher=None)
    with pytest.raises(ValueError, match="longer than MLflow"):
        run_params({"too_long": "x" * (MAX_PARAM_LENGTH + 1)})


def test_run_name_is_prefix_and_time() -> None:
    assert run_name("hybrid_teacher", timestamp="20250102-030405") == "hybrid_teacher-20250102-030405"
    assert run_name("distilled_student").startswith("distilled_student-20")


@pytest.mark.parametrize("configs", [TEACHER_CONFIGS, STUDENT_CONFIGS])
def test_settings_files_extend_monai_defaults_for_the_standard_ids(configs: Path) -> None:
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings = json.loads((configs / "mlflow.json").read_text())
    assert settings["handlers_id"] == DEFAULT_MLFLOW_SETTINGS["handlers_id"]
    assert set(DEFAULT_MLFLOW_SETTINGS["configs"]) <= set(settings["configs"])
    trainer = settings["configs"]["trainer"]
    assert trainer["experiment_param"] == "@mlflow_params" and trainer["close_on_complete"] is True
    assert trainer["output_transform"]["_target_"] == "kd_components.handlers.loss_components"


# ------------------------------------------------------------------------------------- real training runs


def _train(configs: Path, overrides: dict[str, Any], tracking: str, tracking_uri: str) -> None:
    """One epoch of ``python -m monai.bundle run training`` with ``--tracking`` and ``--tracking_uri``."""
    files = [configs / "train.json", configs / "demo.json"]
    values = {"epochs": 1, "val_interval": 1, "num_samples": 1, **overrides}
    cmd = bundle_command(files, values, logging_file=configs / "logging.conf")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # it would take precedence over --tracking_uri
    run_checked([*cmd, "--tracking", tracking, "--tracking_uri", tracking_uri], env=env)


def _only_run(client: MlflowClient, experiment_name: str) -> Run:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # trainer and validator share one run
    assert runs[0].info.status == "FINISHED"
    return runs[0]


def _history(client: MlflowClient, run: Run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def _artifacts(client: MlflowClient, run: Run) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run.info.run_id))


def _assert_executed_config(client: MlflowClient, run: Run, dst: Path, expected: dict[str, Any]) -> None:
    (config_name,) = [a for a in _artifacts(client, run) if a.startswith("config_") and a.endswith(".json")]
    executed = json.loads(Path(client.download_artifacts(run.info.run_id, config_name, str(dst))).read_text())
    assert {k: executed[k] for k in expected} == expected


def test_teacher_with_monai_default_tracking_and_with_its_settings_file(
    phantom_data: dict[str, Path], tmp_path: Path
) -> None:
    overrides = {
        **TEACHER_BUNDLE_TINY,
        **phantom_overrides(phantom_data),
        "batch_size": 2,
        "seed": 3,
    }
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    # MONAI's plain `--tracking mlflow`: total loss, learning rate, validation Dice per region, the config
    _train(TEACHER_CONFIGS, {**overrides, "bundle_root": str(tmp_path / "plain")}, "mlflow", uri)
    client = MlflowClient(tracking_uri=uri)
    run = _only_run(client, "monai_experiment")
    assert [step for step, _ in _history(client, run, "train_loss")] == [1]
    for key in REGION_DICE:
        assert [step for step, _ in _history(client, run, key)] == [1], key
    assert any(a.startswith("config_") for a in _artifacts(client, run))

    # the bundle's settings file: also the parameters, and model.pt
    _train(
        TEACHER_CONFIGS, {**overrides, "bundle_root": str(tmp_path / "full")}, str(TEACHER_CONFIGS / "mlflow.json"), uri
    )
    run = _only_run(client, "brats_kd")
    assert run.info.run_name.startswith("hybrid_teacher-")
    params = run.data.params
    assert {k: params[k] for k in ("bundle", "fold", "seed", "epochs", "teacher_config")} == {
        "bundle": "hybrid_teacher",
        "fold": "0",
        "seed": "3",
        "epochs": "1",
        "teacher_config": "demo",
    }
    assert params["patch_size"] == "[32, 32, 32]" and params["network_class"] == "HybridTeacher"
    assert int(params["num_parameters"]) == count_parameters(build_tiny_teacher())
    assert [step for step, _ in _history(client, run, "loss")] == [1]
    for key in REGION_DICE:
        assert [step for step, _ in _history(client, run, key)] == [1], key
    assert "model.pt" in _artifacts(client, run)
    _assert_executed_config(client, run, tmp_path / "download", {"seed": 3, "teacher_config": "demo"})


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """Start ``mlflow server`` on 127.0.0.1 (SQLite store, served artifacts), yield its URI, always stop it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        # its own process group: the server runs uvicorn in a child process, stopped together with it
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"mlflow server exited with {server.returncode}:\n{log_path.read_text()}"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"mlflow server not up after {SERVER_START_TIMEOUT_S} s"
            time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


def test_student_distillation_is_one_run_on_a_tracking_server(phantom_data: dict[str, Path], tmp_path: Path) -> None:
    bundle_root = tmp_path / "bundle"
    overrides = {
        **STUDENT_BUNDLE_TINY,
        **phantom_overrides(phantom_data, bundle_root),
        "teacher_ckpt": str(phantom_data["teacher_ckpt"]),
        "batch_size": 1,
        "log_interval": 1,
        "alpha": 0.5,
        "temperature": 2.0,
    }
    with mlflow_server(tmp_path / "server") as uri:
        _train(STUDENT_CONFIGS, overrides, str(STUDENT_CONFIGS / "mlflow.json"), uri)
        client = MlflowClient(tracking_uri=uri)
        run = _only_run(client, "brats_kd")
        assert run.info.run_name.startswith("distilled_student-")
        params = run.data.params
        expected = {"fold": "0", "seed": "0", "epochs": "1", "alpha": "0.5", "beta": "0.1", "temperature": "2.0"}
        assert {k: params[k] for k in expected} == expected
        assert params["patch_size"] == "[32, 32, 32]" and params["student_init_filters"] == "8"
        assert int(params["num_parameters"]) == count_parameters(build_student())
        assert int(params["teacher_num_parameters"]) == count_parameters(build_tiny_teacher())
        # 2 labelled + 1 unlabelled batches: every loss term at every iteration, the task loss 0 once
        history = {k: _history(client, run, k) for k in ("loss", "loss_task", "loss_soft", "loss_feature")}
        for key, values in history.items():
            assert [step for step, _ in values] == [1, 2, 3], key
        assert sum(value == 0.0 for _, value in history["loss_task"]) == 1
        for (_, total), (_, task), (_, soft), (_, feature) in zip(*history.values(), strict=True):
            assert total == pytest.approx(task + 0.5 * soft + 0.1 * feature, rel=1e-4)
        for key in REGION_DICE:
            ((step, value),) = _history(client, run, key)
            assert step == 1 and 0.0 <= value <= 1.0, key
        artifacts = _artifacts(client, run)
        assert "model.pt" in artifacts
        model = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "download"))
        state = torch.load(model, map_location="cpu", weights_only=True)
        assert set(state) == set(build_student().state_dict())
        _assert_executed_config(client, run, tmp_path / "download", {"alpha": 0.5, "temperature": 2.0})
    # the server stored the artifacts in its own destination, not beside the bundle
    assert list((tmp_path / "server" / "art").rglob("model.pt"))
