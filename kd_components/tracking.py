"""Experiment tracking helpers that the bundles' ``configs/mlflow.json`` settings reference.

MONAI's ``--tracking`` option (``python -m monai.bundle run ... --tracking configs/mlflow.json``) adds
``MLFlowHandler`` instances to the trainer, the validator and the evaluator. These functions supply what
MONAI's default settings lack: the run's parameters (``experiment_param``) and a run name shared by the
trainer's and the validator's handlers, so one training is one MLflow run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

__all__ = ["MAX_PARAM_LENGTH", "count_parameters", "run_name", "run_params"]

#: MLflow rejects parameter values longer than this (characters).
MAX_PARAM_LENGTH = 6000


def count_parameters(network: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters (elements) of ``network``; with ``trainable_only``, those with a gradient."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)


def _param_value(value: Any) -> str | int | float | bool:
    """One MLflow parameter value: scalars as they are, everything else (lists, dicts, devices) as JSON."""
    if isinstance(value, bool | int | float | str):
        text: Any = value
    else:
        text = json.dumps(value, default=str)
    if isinstance(text, str) and len(text) > MAX_PARAM_LENGTH:
        raise ValueError(f"parameter value is longer than MLflow's {MAX_PARAM_LENGTH} characters: {text[:80]}...")
    return text


def run_params(
    values: Mapping[str, Any],
    network: nn.Module | None = None,
    teacher: nn.Module | None = None,
    bundle: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str | int | float | bool]:
    """
    The parameters of a training run, for ``MLFlowHandler(experiment_param=...)``.

    Args:
        values: settings to record as they are, e.g. ``{"fold": 0, "seed": 0, "patch_size": [96, 96, 96]}``
            (a bundle passes its ``settings``); lists and other non-scalars are written as JSON, ``None`` as ``"null"``.
        network: the trained network: adds ``network_class``, ``num_parameters`` and
            ``num_trainable_parameters``.
        teacher: a distillation teacher (``None`` when distillation is off): adds ``teacher_class`` and
            ``teacher_num_parameters``.
        bundle: the bundle's name, recorded as ``bundle``.
        extra: further values recorded like ``values`` (e.g. a network argument such as ``init_filters``).

    In a config::

        "experiment_param": {"_target_": "kd_components.tracking.run_params", "bundle": "hybrid_teacher",
                             "values": "@settings", "network": "@network"}
    """
    params = {} if bundle is None else {"bundle": bundle}
    params.update({str(k): _param_value(v) for k, v in {**values, **(extra or {})}.items()})
    if network is not None:
        params["network_class"] = type(network).__name__
        params["num_parameters"] = count_parameters(network)
        params["num_trainable_parameters"] = count_parameters(network, trainable_only=True)
    if teacher is not None:
        params["teacher_class"] = type(teacher).__name__
        params["teacher_num_parameters"] = count_parameters(teacher)
    return params


def run_name(prefix: str, timestamp: str | None = None) -> str:
    """A readable, unique MLflow run name: ``<prefix>-<YYYYmmdd-HHMMSS>`` (``timestamp`` defaults to now).

    MONAI's trainer and validator ``MLFlowHandler`` find their common run by this name, so a config
    evaluates it once per workflow (one config id that both handlers reference).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S") if timestamp is None else timestamp
    return f"{prefix}-{stamp}"
