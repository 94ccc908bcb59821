"""BraTS challenge metrics (:mod:`kd_components.evaluation.lesions`) as an Ignite metric of ``evaluate.json``.

:class:`LesionWiseMetrics` scores each case's region channels ``[TC, WT, ET]`` with the official evaluator's
rules and puts the means over cases of lesion-wise Dice and HD95 into ``engine.state.metrics``: as the BraTS 2023
ranking counts them (every false-positive and missed lesion scoring 0 / 373 mm), ``ranking_lesion_dice_tc`` ...
``ranking_lesion_hd95_et``, and over matched lesions only, ``matched_lesion_dice_tc`` ... (so MONAI's
``MetricsSaver`` writes them into ``metrics.csv`` beside the MONAI rows, and their per-case values as
``ranking_lesion_dice_tc_raw.csv`` ...). :class:`CaseScoresWriter` writes every score of every case (global Dice /
HD95 / NSD, both forms of lesion-wise Dice and HD95, matched-lesion NSD, lesion TP / FP / FN per region) to one CSV
beside them.

With ``postprocess`` (a :class:`~kd_components.postprocess.PostprocessSettings`: in ``evaluate.json`` the bundle's
thresholds, those of its ``inference.json``) the prediction is post-processed as ``inference.json`` does
(:func:`~kd_components.postprocess.postprocess_regions`) before it is scored, and the results are named with
``suffix`` (``ranking_lesion_dice_tc_post`` ...): one evaluation measures the network with and without its
post-processing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.metrics import Cumulative
from monai.utils import string_list_all_gather

from kd_components.constants import REGIONS
from kd_components.evaluation.lesions import RegionScores, case_row, score_region, write_case_table
from kd_components.handlers.metrics import voxel_spacing
from kd_components.postprocess import PostprocessSettings, postprocess_regions
from kd_components.writers import case_id_of

__all__ = ["CaseScoresWriter", "LesionWiseMetrics"]

#: The fields of :class:`RegionScores`, in the order they are buffered.
_FIELDS: tuple[str, ...] = tuple(RegionScores.__dataclass_fields__)
#: The means that go into ``metrics.csv``: (metric name prefix, field).
_REPORTED: tuple[tuple[str, str], ...] = tuple(
    (name, name)
    for name in ("ranking_lesion_dice", "ranking_lesion_hd95", "matched_lesion_dice", "matched_lesion_hd95")
)
#: The fields :class:`RegionScores` is built from (the ranking forms are computed from them).
_INIT_FIELDS: tuple[str, ...] = tuple(k for k, f in RegionScores.__dataclass_fields__.items() if f.init)


class LesionWiseMetrics(Metric):
    """Lesion-wise Dice and HD95 per region, BraTS's way, as one Ignite metric with several results.

    Declared once under ``validate#additional_metrics`` (any name), it sets ``engine.state.metrics`` entries
    ``ranking_lesion_dice_<region>``, ``ranking_lesion_hd95_<region>``, ``matched_lesion_dice_<region>`` and
    ``matched_lesion_hd95_<region>`` (means over cases; every case has a value: empty regions follow BraTS's rule),
    and their per-case values in ``engine.state.metric_details`` for ``MetricsSaver``.
    :attr:`rows` holds every score of every case for :class:`CaseScoresWriter`.

    Args:
        output_transform: gives ``(preds, labels)``: lists of binary region tensors ``(C, H, W, D)``, channels
            ``regions``; MetaTensors, whose affine gives the voxel spacing (HD95 in mm) and whose metadata the case
            id. E.g. ``monai.handlers.from_engine(['pred', 'label'])``.
        regions: the names of the channels. Defaults to ``[TC, WT, ET]``.
        device: where the buffers live.
        postprocess: score the prediction after these post-processing rules (regions must be ``[TC, WT, ET]``).
        suffix: appended to every result name (e.g. ``"_post"`` for the post-processed scores).
    """

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = lambda x: x,
        regions: Sequence[str] = REGIONS,
        device: str | torch.device = "cpu",
        postprocess: PostprocessSettings | None = None,
        suffix: str = "",
    ) -> None:
        self.regions = tuple(regions)
        if postprocess is not None and self.regions != tuple(REGIONS):
            raise ValueError(f"post-processing needs the region channels {list(REGIONS)}, got {list(self.regions)}")
        self.postprocess = postprocess
        self.suffix = suffix
        self._scores = Cumulative()
        self._case_ids: list[str] = []
        self.rows: list[dict[str, Any]] = []
        super().__init__(output_transform=output_transform, device=device, metrics_result_mode="flatten")

    def reset(self) -> None:
        self._scores.reset()
        self._case_ids = []

    def update(self, output: Sequence[Sequence[torch.Tensor]]) -> None:
        if len(output) != 2:
            raise ValueError(f"output must have length 2 (y_pred, y), got {len(output)}")
        preds, labels = output
        for pred, label in zip(preds, labels, strict=True):
            if pred.shape[0] != len(self.regions) or label.shape != pred.shape:
                raise ValueError(
                    f"expected prediction and label of {len(self.regions)} region channels {self.regions} and the "
                    f"same shape, got {tuple(pred.shape)} and {tuple(label.shape)}"
                )
            spacing = voxel_spacing(label)
            p = pred.detach().cpu().numpy() > 0.5
            y = label.detach().cpu().numpy() > 0.5
            if self.postprocess is not None:
                p, _ = postprocess_regions(p, spacing, self.postprocess)
            scores = [score_region(p[i], y[i], spacing).as_dict() for i in range(len(self.regions))]
            self._scores.extend(torch.tensor([[[float(s[f]) for f in _FIELDS] for s in scores]], dtype=torch.float64))
            case = case_id_of(getattr(pred, "meta", None)) or case_id_of(getattr(label, "meta", None))
            self._case_ids.append(case or f"case{len(self._case_ids)}")

    def _gathered(self) -> tuple[torch.Tensor, list[str]]:
        buffer = self._scores.get_buffer()  # all ranks' cases under torch.distributed
        if buffer is None or len(buffer) == 0:
            raise RuntimeError("LesionWiseMetrics: no case was scored (compute before any update)")
        ids = self._case_ids
        if dist.is_available() and dist.is_initialized():
            ids = string_list_all_gather(ids)
        return torch.as_tensor(buffer), ids

    def compute(self) -> dict[str, float]:
        """Means over cases: ``{"ranking_lesion_dice_tc<suffix>": ..., "matched_lesion_hd95_et<suffix>": ...}``;
        fills :attr:`rows`."""
        data, ids = self._gathered()
        self.rows = [
            case_row(case, {r: _region_scores(data[c, i]) for i, r in enumerate(self.regions)})
            for c, case in enumerate(ids)
        ]
        out = {}
        for name, field in _REPORTED:
            for i, region in enumerate(self.regions):
                out[f"{name}_{region.lower()}{self.suffix}"] = float(data[:, i, _FIELDS.index(field)].mean())
        return out

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        data, _ = self._gathered()
        details = getattr(engine.state, "metric_details", None)
        if details is None:
            details = engine.state.metric_details = {}
        for metric, field in _REPORTED:
            for i, region in enumerate(self.regions):
                details[f"{metric}_{region.lower()}{self.suffix}"] = data[:, i, _FIELDS.index(field)][:, None].float()


def _region_scores(values: torch.Tensor) -> RegionScores:
    """Buffered floats ``(len(_FIELDS),)`` back to :class:`RegionScores` (the lesion counts are integers)."""
    values = dict(zip(_FIELDS, values.tolist(), strict=True))
    return RegionScores(**{k: int(values[k]) if k in ("tp", "fp", "fn") else float(values[k]) for k in _INIT_FIELDS})


class CaseScoresWriter:
    """Write every BraTS score of every case, as computed by a :class:`LesionWiseMetrics`, to
    ``<output_dir>/<filename>`` (one row per case, atomically) when the evaluator's epoch completes.

    Args:
        metric: the evaluator's :class:`LesionWiseMetrics` (``@validate#additional_metrics#<name>``).
        output_dir: the folder (``metrics.csv`` is written there too).
        filename: the CSV's name. Defaults to ``brats_metrics.csv``.
    """

    def __init__(
        self, metric: LesionWiseMetrics, output_dir: str | os.PathLike[str], filename: str = "brats_metrics.csv"
    ) -> None:
        self.metric = metric
        self.path = Path(output_dir) / filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        write_case_table(self.metric.rows, self.path)
