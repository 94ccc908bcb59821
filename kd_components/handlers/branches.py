"""Branch diagnostics of the hybrid teacher during training: scale weights, fusion gates, branch ablation."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.metrics import DiceMetric

from kd_components.constants import REGIONS
from kd_components.io import save_json_atomic
from kd_components.networks.diagnostics import ABLATIONS, GateRecorder, zero_branch
from kd_components.networks.hybrid import FUSED_FEATURE_SCALES
from kd_components.networks.utils import unwrap_module

__all__ = ["BRANCH_DIAGNOSTICS_FILE", "BranchDiagnostics", "ablation_dice"]

#: The file the handler writes in its ``output_dir`` (the training's TensorBoard folder in the bundle).
BRANCH_DIAGNOSTICS_FILE = "branch_diagnostics.json"

logger = logging.getLogger(__name__)


def _main_process() -> bool:
    """True outside a process group and on its rank 0: the rank that logs and writes."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@torch.no_grad()
def ablation_dice(network: nn.Module, evaluator: Engine, branches: tuple[str | None, ...]) -> dict[str, list[float]]:
    """
    Dice per region on ``evaluator``'s data, with each of ``branches`` removed (``None``: the whole network).

    The evaluator's loader, batch preparation and inferer are used as they are (the sliding window of the
    validation); predictions are ``sigmoid(logits) > 0.5`` per region, scored with MONAI's
    :class:`~monai.metrics.DiceMetric` against the ``label`` regions ``(B, 3, H, W, D)``.

    Returns:
        ``{"full" or branch: [Dice TC, Dice WT, Dice ET, mean]}`` (mean over cases, then over regions).
    """
    net = unwrap_module(network)
    was_training = net.training
    net.eval()
    metrics = {branch: DiceMetric(include_background=True, reduction="mean_batch") for branch in branches}
    try:
        for batch in evaluator.data_loader:
            images, labels = evaluator.prepare_batch(batch, evaluator.state.device, evaluator.non_blocking)[:2]
            for branch, metric in metrics.items():
                with zero_branch(net, branch):
                    logits = evaluator.inferer(images, net)
                metric(y_pred=(torch.sigmoid(logits.float()) > 0.5).float(), y=labels)
    finally:
        net.train(was_training)
    results: dict[str, list[float]] = {}
    for branch, metric in metrics.items():
        per_region = [float(v) for v in metric.aggregate().cpu()]
        results[branch or "full"] = [*per_region, sum(per_region) / len(per_region)]
    return results


class BranchDiagnostics:
    """
    What each branch of a :class:`~kd_components.networks.HybridTeacher` does while it trains; attach to the trainer.

    - After every epoch: the fusion's scale weights (``fusion.scale_weights()``, finest first).
    - At every validation of ``evaluator``: the gates of each scale (the CNN's share per voxel and channel: mean
      and 10th/50th/90th percentiles over the validation volumes,
      :class:`~kd_components.networks.diagnostics.GateRecorder`).
    - After the last epoch (``ablation=True``): Dice on the validation data with the ViT hidden states zeroed, with
      the CNN features zeroed, and with neither (:func:`ablation_dice`; three passes over the validation cases).

    Everything is logged and written (atomically, after each epoch) to ``output_dir/branch_diagnostics.json``; a
    resumed training keeps what the interrupted one wrote for the epochs before it.

    Under ``torch.distributed`` the handler runs on **every rank** (it is not one of the rank-0-only handler types
    of :func:`~kd_components.handlers.main_process_handlers`): the ablation's Dice is gathered across the ranks'
    shares of the validation cases (MONAI's ``DiceMetric.aggregate`` is a collective, so every rank must reach it),
    and only rank 0 logs and writes. The scale weights are the same on every rank; the gate statistics are rank 0's
    share of the validation cases. The file's layout:
    ``{"regions", "scale_weights": [{"epoch", "iteration", "weights"}], "gates": [{"epoch", "scales": [...]}],
    "ablation": {"epoch", "dice": {"full" | "vit" | "cnn": [TC, WT, ET, mean]}}}``. A single-branch network
    (an ablation teacher) has no gates and no branch to remove: those entries stay empty.

    In a bundle config (``train#handlers``)::

        {"_target_": "kd_components.handlers.BranchDiagnostics", "network": "@network",
         "evaluator": "@validate#evaluator", "output_dir": "@output_dir"}
    """

    def __init__(
        self,
        network: nn.Module,
        evaluator: Engine | None = None,
        output_dir: str | os.PathLike[str] = ".",
        ablation: bool = True,
    ) -> None:
        """
        Args:
            network: the teacher being trained (a parallel wrapper is looked through).
            evaluator: the validation evaluator (gates and ablation); ``None`` records the scale weights only.
            output_dir: where ``branch_diagnostics.json`` goes.
            ablation: run the branch ablation after the last epoch. Defaults to True.
        """
        self.network = network
        self.evaluator = evaluator
        self.path = Path(output_dir) / BRANCH_DIAGNOSTICS_FILE
        self.ablation = ablation
        self.record: dict[str, Any] = {"regions": list(REGIONS), "scale_weights": [], "gates": [], "ablation": None}
        self._gates: GateRecorder | None = None
        self._continued = False

    def _fusion_weights(self) -> list[float]:
        return [round(float(w), 5) for w in unwrap_module(self.network).scale_weights().detach().cpu()]

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer) and on the evaluator."""
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_STARTED, self._start_gates)
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._stop_gates)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        if self.ablation and self.evaluator is not None:
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def _start_gates(self, _evaluator: Engine) -> None:
        self._gates = GateRecorder(self.network).__enter__()

    def _stop_gates(self, evaluator: Engine) -> None:
        if self._gates is None:
            return
        self._gates.__exit__()
        scales = self._gates.summary()
        self._gates = None
        if scales:
            self.record["gates"].append({"epoch": int(evaluator.state.epoch), "scales": scales})
            means = ", ".join(f"1/{k}: {s['mean']:.2f}" for k, s in zip(FUSED_FEATURE_SCALES, scales, strict=True))
            if _main_process():
                logger.info(f"fusion gates, the CNN's mean share per scale: {means}")

    def _continue_record(self, epoch: int) -> None:
        """After a resumed run's first epoch: take over what the interrupted run wrote for the epochs before."""
        self._continued = True
        if not self.path.is_file():
            return
        try:
            earlier = json.loads(self.path.read_text())
        except (OSError, ValueError):
            logger.warning(f"{self.path} is unreadable; the branch diagnostics start again from epoch {epoch}")
            return
        for key in ("scale_weights", "gates"):
            kept = [e for e in earlier.get(key, []) if e.get("epoch", epoch) < epoch]
            self.record[key] = kept + [e for e in self.record[key] if e["epoch"] >= epoch]

    def epoch_completed(self, engine: Engine) -> None:
        """Record the scale weights and write the file."""
        if not self._continued:
            self._continue_record(int(engine.state.epoch))
        weights = self._fusion_weights()
        self.record["scale_weights"].append(
            {"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration), "weights": weights}
        )
        if _main_process():
            logger.info(f"fusion scale weights (1/2 .. 1/16): {weights}")
            save_json_atomic(self.record, self.path)

    def completed(self, engine: Engine) -> None:
        """Run the branch ablation on the validation data (every rank, its share) and write the file (rank 0)."""
        assert self.evaluator is not None
        net = unwrap_module(self.network)
        present = tuple(b for b, attribute in ABLATIONS.items() if getattr(net, attribute, None) is not None)
        if len(present) < 2:  # a single-branch network: nothing to remove
            return
        dice = ablation_dice(net, self.evaluator, (None, *present))
        self.record["ablation"] = {"epoch": int(engine.state.epoch), "dice": dice}
        if _main_process():
            summary = ", ".join(f"{k}: {v[-1]:.3f}" for k, v in dice.items())
            logger.info(f"branch ablation, validation mean Dice (full / without the ViT / without the CNN): {summary}")
            save_json_atomic(self.record, self.path)
