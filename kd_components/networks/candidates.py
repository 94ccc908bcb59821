"""The students measured in the search for a student built for CPUs (``scripts/benchmark_students.py``).

One home for each candidate: its network arguments build it for the cost measurements
(:func:`~kd_lab.measure.build_network`) and become the ``network_def`` overrides of its row in the
distillation benchmark (:data:`~kd_lab.benchmark.ROWS`, key ``kd_<name>``), so the network
that is timed is the one that is trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from kd_components.networks import student

__all__ = ["DEFAULT_CANDIDATE", "MODEL_ZOO_SEGRESNET", "STUDENT_CANDIDATES", "StudentCandidate"]


@dataclass(frozen=True)
class StudentCandidate:
    """A student network: a builder of :mod:`kd_components.networks.student` and its arguments.

    Args:
        name: short name (cost tables, ``kd_<name>`` benchmark rows).
        label: what it is, in words.
        builder: ``build_student`` (:class:`~kd_components.networks.student.StridedSegResNet`) or
            ``build_segresnet_student`` (MONAI's SegResNet at full resolution).
        kwargs: the builder's arguments that differ from its defaults.
    """

    name: str
    label: str
    builder: str = "build_student"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The network, ``(B, 4, H, W, D)`` -> ``(B, 3, H, W, D)`` logits, freshly initialised."""
        return getattr(student, self.builder)(**self.kwargs)

    def overrides(self) -> tuple[str, ...]:
        """``network_def`` overrides for ``python -m monai.bundle run`` that make the bundle build this network."""
        args = ["--network_def#_target_", f"{student.__name__}.{self.builder}"]
        for key, value in self.kwargs.items():
            args += [f"--network_def#{key}", json.dumps(value)]
        return tuple(args)


#: The default student of the ``distilled_student`` bundle (``build_student()``, the bundle's ``network_def``).
DEFAULT_CANDIDATE = StudentCandidate(
    "student", "strided stem, SegResNet body at 1/2 (8 filters, blocks 1-2-2-4 / 1-1-1), batch norm (the default)"
)

#: Every candidate, the default first. Names are also :func:`~kd_lab.measure.build_network` names.
STUDENT_CANDIDATES: dict[str, StudentCandidate] = {
    c.name: c
    for c in (
        DEFAULT_CANDIDATE,
        StudentCandidate(
            "segresnet8",
            "SegResNet at full resolution (8 filters, blocks 1-2-2-4 / 1-1-1), group norm (the earlier default)",
            "build_segresnet_student",
            {"init_filters": 8},
        ),
        StudentCandidate(
            "strided16",
            "strided stem, SegResNet body at 1/2 (16 filters, blocks 1-2-2-4 / 1-1-1), batch norm",
            kwargs={"init_filters": 16},
        ),
        StudentCandidate(
            "strided16_gn",
            "strided stem, SegResNet body at 1/2 (16 filters), group norm (8 groups)",
            kwargs={"init_filters": 16, "norm": ["GROUP", {"num_groups": 8}]},
        ),
        StudentCandidate(
            "strided16_light",
            "strided stem, SegResNet body at 1/2 (16 filters, blocks 1-1-1-1 / 1-1-1), batch norm",
            kwargs={"init_filters": 16, "blocks_down": [1, 1, 1, 1]},
        ),
        StudentCandidate(
            "strided16_noup",
            "strided stem, SegResNet body at 1/2 (16 filters, no decoder blocks: blocks 1-2-2-4 / 0-0-0), batch norm",
            kwargs={"init_filters": 16, "blocks_up": [0, 0, 0]},
        ),
    )
}

#: MONAI's model-zoo BraTS SegResNet (16 filters, blocks 1-2-2-4, group norm, full resolution): the label-only
#: reference of the distillation benchmark (row ``segresnet16``) and of the cost tables, not a search candidate.
MODEL_ZOO_SEGRESNET = StudentCandidate(
    "segresnet16", "model-zoo SegResNet (16 filters, full resolution)", "build_segresnet_student", {"init_filters": 16}
)
