"""The terms of the distillation objective: each one a name, a weight and a module in the bundle config.

A term sees one step's :class:`DistillationInputs` (the student's and the teacher's logits, the labels,
the brain mask and the feature maps tapped by module path) and returns a scalar. It says what it needs
(``needs_label``, ``needs_teacher``, ``student_paths``, ``teacher_paths``), so that
:class:`~kd_components.engines.DistillationTrainer` runs the teacher and places feature hooks only when
an active term asks for them. A new term (e.g. a pseudo-label term for unlabelled scans) is a subclass
of :class:`DistillationTerm` and one entry under ``loss_terms`` in the student's ``train.json``::

    "loss_terms": {
        "task": {"_target_": "kd_components.losses.TaskTerm", "loss": "@task_loss"},
        "soft": {"_target_": "kd_components.losses.SoftTargetTerm", "loss": "@soft_loss", "weight": "@alpha"},
        "pseudo": {"_target_": "my_package.PseudoLabelTerm", "threshold": 0.9, "weight": 0.5}
    }

Its unweighted value is then logged as ``loss_pseudo`` by the progress bar, ``StatsHandler``,
TensorBoard and MLflow, with no other edit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from kd_components.hooks import resolve_module
from kd_components.losses.feature import FeatureKDLoss

__all__ = [
    "PSEUDO_LABEL_WEIGHTINGS",
    "SCALE_WEIGHT_SOURCES",
    "DistillationInputs",
    "DistillationTerm",
    "FeatureTerm",
    "PseudoLabelTerm",
    "SoftTargetTerm",
    "TaskTerm",
]

#: How :class:`PseudoLabelTerm` weighs a voxel by the teacher's confidence.
PSEUDO_LABEL_WEIGHTINGS: tuple[str, ...] = ("threshold", "entropy")
#: Where :class:`FeatureTerm` takes its per-scale weights from: the teacher's learned fusion weights
#: (``teacher.scale_weights()``, detached) or the feature loss's own fixed weights.
SCALE_WEIGHT_SOURCES: tuple[str, ...] = ("teacher", "fixed")


@dataclass
class DistillationInputs:
    """What the terms of one distillation step may use.

    Attributes:
        student_logits: the student's logits ``(B, C, H, W, D)``.
        teacher_logits: the frozen teacher's logits ``(B, C, H, W, D)``; ``None`` when no active term
            needs the teacher.
        label: the targets ``(B_l, C, H, W, D)`` of the first ``B_l`` samples, or ``None`` for a batch
            without labels.
        num_labelled: ``B_l`` in a batch of labelled samples followed by unlabelled ones (see
            :func:`~kd_components.data.mixing.concat_batches`); ``None``: every sample has its label.
        mask: brain voxels ``(B, 1, H, W, D)`` (uint8 or bool), or ``None``.
        student_features: the student's tapped feature maps by module path, ``(B, C_i, h_i, w_i, d_i)``.
        teacher_features: the teacher's tapped feature maps by module path (detached).
        teacher: the frozen teacher itself (e.g. for its learned scale weights), or ``None``.
        iteration: the trainer's iteration (1-based) for the terms' ramp-up, or ``None`` (full weights).
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    label: torch.Tensor | None = None
    num_labelled: int | None = None
    mask: torch.Tensor | None = None
    student_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher: nn.Module | None = None
    iteration: int | None = None

    def unlabelled_slice(self) -> slice | None:
        """The samples of the batch without labels: all of a batch without labels, the last ``B - B_l`` of a
        paired batch, ``None`` for a batch whose samples all have labels."""
        if self.label is None:
            return slice(None)
        if self.num_labelled is None or self.num_labelled >= self.student_logits.shape[0]:
            return None
        return slice(self.num_labelled, None)

    def labelled_logits(self) -> torch.Tensor:
        """The student's logits of the labelled samples ``(B_l, C, H, W, D)``.

        Raises:
            ValueError: when ``num_labelled`` does not fit the batch or the labels.
        """
        if self.num_labelled is None:
            return self.student_logits
        batch = self.student_logits.shape[0]
        labels = None if self.label is None else self.label.shape[0]
        if not 0 < self.num_labelled <= batch or labels != self.num_labelled:
            raise ValueError(
                f"num_labelled={self.num_labelled} does not fit a batch of {batch} samples with {labels} labels"
            )
        return self.student_logits[: self.num_labelled]


class DistillationTerm(nn.Module):
    """One weighted term of :class:`~kd_components.losses.DistillationLoss`.

    Subclasses implement :meth:`forward` (``DistillationInputs -> scalar``, the *unweighted* value) and
    set what they need. A term is *active* when its weight is non-zero and it is usable (see
    :attr:`active`); an inactive term is not computed and logs 0.

    Attributes:
        needs_label: the term is computed only for batches with labels (skipped, and logged 0, otherwise).
        needs_teacher: the term uses ``teacher_logits`` (the trainer then runs the teacher).
        needs_mask: the term uses the brain ``mask`` (the trainer then provides it).

    Args:
        weight: the term's weight in the total, non-negative. Defaults to 1.0.
        ramp_up: iterations over which the weight rises from about 0 to ``weight`` (:meth:`weight_at`); 0: the
            full weight from the first iteration. Defaults to 0.

    Raises:
        ValueError: for a negative or non-finite weight, or a negative ramp-up.
    """

    needs_label: bool = False
    needs_teacher: bool = False
    needs_mask: bool = False

    def __init__(self, weight: float = 1.0, ramp_up: int = 0) -> None:
        super().__init__()
        weight = float(weight)
        if not (weight >= 0 and weight != float("inf")):
            raise ValueError(f"{type(self).__name__}: weight must be a finite non-negative number, got {weight}")
        if int(ramp_up) != ramp_up or ramp_up < 0:
            raise ValueError(f"{type(self).__name__}: ramp_up must be a whole number of iterations >= 0, got {ramp_up}")
        self.weight = weight
        self.ramp_up = int(ramp_up)

    def weight_at(self, iteration: int | None) -> float:
        """The weight at ``iteration`` (1-based): ``weight * exp(-5 (1 - t)^2)`` with ``t = min(iteration /
        ramp_up, 1)``, the sigmoid-shaped ramp of the mean-teacher method (Tarvainen and Valpola, 2017); the full
        weight without a ramp-up or an iteration."""
        if not self.ramp_up or iteration is None:
            return self.weight
        t = min(max(iteration, 0) / self.ramp_up, 1.0)
        return self.weight * math.exp(-5.0 * (1.0 - t) ** 2)

    @property
    def active(self) -> bool:
        """Whether the term is computed: a non-zero weight (subclasses add their own conditions)."""
        return self.weight != 0

    @property
    def student_paths(self) -> list[str]:
        """Module paths of the student whose outputs this term uses (feature hooks go there)."""
        return []

    @property
    def teacher_paths(self) -> list[str]:
        """Module paths of the teacher whose outputs this term uses."""
        return []

    def check_networks(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Fail before training when the networks cannot serve this term (by default: unknown module paths).

        Args:
            student: the bare student (not a DDP wrapper).
            teacher: the frozen teacher, or ``None``.

        Raises:
            ValueError: for an unknown module path (the message lists valid paths nearby), or a missing teacher.
        """
        for path in self.student_paths:
            resolve_module(student, path)
        if self.teacher_paths and teacher is None:
            raise ValueError(f"{type(self).__name__} taps the teacher's {self.teacher_paths}, but there is no teacher")
        for path in self.teacher_paths:
            resolve_module(teacher, path)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        """The unweighted value of the term for one step (a scalar tensor)."""
        raise NotImplementedError


class TaskTerm(DistillationTerm):
    """The supervised term: ``loss(student_logits[:B_l], label)`` on the labelled samples of the batch.

    Args:
        loss: a supervised loss ``loss(logits, label) -> scalar``, e.g. MONAI's ``DiceCELoss(sigmoid=True)``
            on the ``[TC, WT, ET]`` channels.
        weight: its weight. Defaults to 1.0.
    """

    needs_label = True

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weight: float = 1.0) -> None:
        super().__init__(weight)
        self.loss = loss

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        if inputs.label is None:
            raise ValueError("TaskTerm: the batch has no label")
        return self.loss(inputs.labelled_logits(), inputs.label)


class SoftTargetTerm(DistillationTerm):
    """Soft targets: ``loss(student_logits, teacher_logits, mask=brain)`` over every sample of the batch.

    Args:
        loss: a soft-target loss called as ``loss(student_logits, teacher_logits, mask=...)``, e.g.
            :class:`~kd_components.losses.SoftTargetKDLoss`; ``None`` makes the term inactive.
        weight: its weight (``alpha``). Defaults to 1.0.
        masked: restrict it to the brain mask of :class:`DistillationInputs` (when there is one).
            Defaults to True.
    """

    needs_teacher = True

    def __init__(self, loss: nn.Module | None, weight: float = 1.0, masked: bool = True) -> None:
        super().__init__(weight)
        self.loss = loss
        self.masked = masked
        self.needs_mask = masked

    @property
    def active(self) -> bool:
        return self.loss is not None and super().active

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        if self.loss is None or inputs.teacher_logits is None:
            raise ValueError("SoftTargetTerm needs a loss and the teacher's logits")
        mask = inputs.mask if self.masked else None
        return self.loss(inputs.student_logits, inputs.teacher_logits, mask=mask)


class FeatureTerm(DistillationTerm):
    """Multi-scale feature distillation with a :class:`~kd_components.losses.FeatureKDLoss` (its adapters
    are this term's parameters), on the maps tapped at the loss's ``pairs``.

    The per-scale weights are the teacher's learned fusion weights (``scale_weights="teacher"``:
    ``teacher.scale_weights()`` detached, each pair taking the weight of its teacher map's scale, then
    normalised over the pairs; needs a teacher with ``scale_weights()`` and ``feature_modules()``, a
    :class:`~kd_components.networks.HybridTeacher`, whose ``branch_feature_modules()`` place the VGG stages and
    ViT states of pairs from both branches on the same scales) or the loss's own fixed weights (``"fixed"``).

    Args:
        loss: the feature loss (e.g. from :func:`~kd_components.losses.build_feature_kd_loss`); ``None``
            makes the term inactive (the bundle disables it when ``beta`` is 0).
        weight: its weight (``beta``). Defaults to 1.0.
        scale_weights: ``"teacher"`` or ``"fixed"``. Defaults to "teacher".

    Raises:
        ValueError: for an unknown ``scale_weights``.
    """

    def __init__(self, loss: FeatureKDLoss | None, weight: float = 1.0, scale_weights: str = "teacher") -> None:
        super().__init__(weight)
        if scale_weights not in SCALE_WEIGHT_SOURCES:
            raise ValueError(f"scale_weights must be one of {SCALE_WEIGHT_SOURCES}, got {scale_weights!r}")
        self.loss = loss
        self.scale_weights = scale_weights
        self._scale_index: list[int] | None = None

    @property
    def active(self) -> bool:
        return self.loss is not None and super().active

    @property
    def student_paths(self) -> list[str]:
        return [] if self.loss is None else self.loss.student_paths

    @property
    def teacher_paths(self) -> list[str]:
        return [] if self.loss is None else self.loss.teacher_paths

    def check_networks(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Resolve the paths and, with ``"teacher"`` weights, find the tapped scales among the teacher's.

        Raises:
            ValueError: for unknown paths, or ``"teacher"`` weights with a teacher that has no learned
                scale weights or whose weighted scales are not the tapped ones.
        """
        super().check_networks(student, teacher)
        if self.scale_weights == "teacher" and self.teacher_paths:
            self._scale_index = self._teacher_scale_index(teacher)

    def _teacher_scale_index(self, teacher: nn.Module | None) -> list[int]:
        """Positions of the tapped teacher paths among the teacher's weighted scales (``feature_modules()``)."""
        has = [callable(getattr(teacher, name, None)) for name in ("scale_weights", "feature_modules")]
        if not all(has):
            raise ValueError(
                f'scale_weights="teacher" needs a teacher with scale_weights() and feature_modules() '
                f'(a HybridTeacher); {type(teacher).__name__} has not: use "fixed"'
            )
        # the fused maps, and where the teacher names them the branches' own features at the same scales
        sources = [list(teacher.feature_modules())]
        if callable(getattr(teacher, "branch_feature_modules", None)):
            sources += list(teacher.branch_feature_modules().values())
        scale_of = {path: i for paths in sources for i, path in enumerate(paths)}
        unknown = [p for p in self.teacher_paths if p not in scale_of]
        if unknown:
            raise ValueError(
                f'scale_weights="teacher": teacher paths {unknown} are not among its weighted scales '
                f'{sources}; tap those, or use "fixed"'
            )
        return [scale_of[p] for p in self.teacher_paths]

    def teacher_scale_weights(self, teacher: nn.Module | None) -> torch.Tensor | None:
        """The per-scale weights ``(num_pairs,)`` taken from ``teacher``, or ``None`` for the loss's fixed ones."""
        if self.scale_weights != "teacher" or teacher is None:
            return None
        if self._scale_index is None:
            self._scale_index = self._teacher_scale_index(teacher)
        with torch.no_grad():
            weights = teacher.scale_weights().detach().float()
        return weights[self._scale_index]

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        if self.loss is None:
            raise ValueError("FeatureTerm has no feature loss")
        # float32 for the adapters and the distances, also when the networks ran under bf16 autocast
        student = [inputs.student_features[p].float() for p in self.student_paths]
        teacher = [inputs.teacher_features[p].float() for p in self.teacher_paths]
        return self.loss(student, teacher, scale_weights=self.teacher_scale_weights(inputs.teacher))


class PseudoLabelTerm(DistillationTerm):
    """The teacher's confident predictions as labels for the samples of the batch that have none.

    Per voxel (inside the brain mask, when there is one) and region channel, with the teacher's probability
    ``p = sigmoid(teacher_logit)``: the target is ``p > 0.5`` and the voxel's weight is, for ``weighting``

    - ``"threshold"``: 1 where the teacher is confident, ``max(p, 1 - p) >= threshold``, else 0;
    - ``"entropy"``: ``1 - H(p) / ln 2`` (``H`` the binary entropy): 1 at ``p`` = 0 or 1, 0 at 0.5.

    The value is the weighted mean of the student's binary cross-entropy against the targets,
    ``sum(w * bce) / sum(w)`` (0 where no voxel has weight). Samples with labels are left to the task term: the
    term is 0 for a batch whose samples all have labels.

    Args:
        weight: its weight. Defaults to 1.0.
        threshold: the confidence a voxel needs with ``"threshold"`` weighting, in (0.5, 1]. Defaults to 0.9.
        weighting: ``"threshold"`` or ``"entropy"``. Defaults to "threshold".
        masked: restrict it to the brain mask. Defaults to True.
        ramp_up: see :class:`DistillationTerm`. Defaults to 0.

    Raises:
        ValueError: for an unknown weighting or a threshold outside (0.5, 1].
    """

    needs_teacher = True

    def __init__(
        self,
        weight: float = 1.0,
        threshold: float = 0.9,
        weighting: str = "threshold",
        masked: bool = True,
        ramp_up: int = 0,
    ) -> None:
        super().__init__(weight, ramp_up)
        if weighting not in PSEUDO_LABEL_WEIGHTINGS:
            raise ValueError(f"PseudoLabelTerm: weighting must be one of {PSEUDO_LABEL_WEIGHTINGS}, got {weighting!r}")
        if not 0.5 < float(threshold) <= 1.0:
            raise ValueError(f"PseudoLabelTerm: threshold must be in (0.5, 1], got {threshold}")
        self.threshold = float(threshold)
        self.weighting = weighting
        self.masked = masked
        self.needs_mask = masked

    def voxel_weights(self, probability: torch.Tensor) -> torch.Tensor:
        """The confidence weight of every voxel, same shape as ``probability``."""
        if self.weighting == "threshold":
            return (torch.maximum(probability, 1 - probability) >= self.threshold).float()
        p = probability.clamp(1e-6, 1 - 1e-6)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log())
        return (1 - entropy / math.log(2)).clamp(0.0, 1.0)

    def forward(self, inputs: DistillationInputs) -> torch.Tensor:
        if inputs.teacher_logits is None:
            raise ValueError("PseudoLabelTerm needs the teacher's logits")
        samples = inputs.unlabelled_slice()
        if samples is None:
            return inputs.student_logits.sum() * 0.0
        student = inputs.student_logits[samples].float()
        probability = torch.sigmoid(inputs.teacher_logits[samples].float().detach())
        weights = self.voxel_weights(probability)
        if self.masked and inputs.mask is not None:
            weights = weights * inputs.mask[samples].to(weights.dtype)
        bce = nn.functional.binary_cross_entropy_with_logits(student, (probability > 0.5).float(), reduction="none")
        total = weights.sum()
        if total <= 0:
            return student.sum() * 0.0
        return (weights * bce).sum() / total
