"""The distillation objective: the task loss plus weighted soft-target and feature KD terms."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["DistillationLoss"]


class DistillationLoss(nn.Module):
    """
    ``loss = task(student_logits, label) + alpha * soft(student_logits, teacher_logits)
    + beta * feature(student_feats, teacher_feats)``.

    The task term is used only when a ``label`` is given: unlabelled batches learn from the KD terms
    alone. A KD term is *active* when its loss is given and its weight is non-zero; an inactive term is
    not computed at all (no teacher outputs needed), so ``alpha = beta = 0`` is exactly the task loss:
    the no-distillation baseline. The feature loss's adapters are submodules of this module: give
    ``loss.parameters()`` to the optimiser along with the student's.

    ``forward`` returns a dict: ``"loss"`` (the total, with its graph) and ``"loss_task"``,
    ``"loss_soft"``, ``"loss_feature"``: the unweighted terms, detached for logging (zero tensors for
    terms not computed), so that ``loss = loss_task + alpha * loss_soft + beta * loss_feature``.

    Example::

        loss = DistillationLoss(DiceFocalLoss(sigmoid=True), SoftTargetKDLoss(4.0), FeatureKDLoss(...), 1.0, 0.5)
        out = loss(student_logits, teacher_logits, label, s_hooks.features(), t_hooks.features(), mask=brain)
        out["loss"].backward()
    """

    def __init__(
        self,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        soft_loss: nn.Module | None = None,
        feature_loss: nn.Module | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
    ) -> None:
        """
        Args:
            task_loss: supervised loss ``task_loss(student_logits, label) -> scalar``, e.g. MONAI's
                ``DiceFocalLoss(sigmoid=True)`` on the ``[TC, WT, ET]`` channels.
            soft_loss: the soft-target term, ``soft_loss(student_logits, teacher_logits, mask=...)``
                (a :class:`~kd_components.losses.SoftTargetKDLoss`), or ``None``.
            feature_loss: the feature term, ``feature_loss(student_feats, teacher_feats, scale_weights=...)``
                (a :class:`~kd_components.losses.FeatureKDLoss`), or ``None``.
            alpha: weight of the soft-target term, non-negative. Defaults to 1.0.
            beta: weight of the feature term, non-negative. Defaults to 1.0.

        Raises:
            ValueError: for a negative weight.
        """
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got alpha={alpha}, beta={beta}")
        self.task_loss = task_loss
        self.soft_loss = soft_loss
        self.feature_loss = feature_loss
        self.alpha = float(alpha)
        self.beta = float(beta)

    @property
    def soft_active(self) -> bool:
        """Whether the soft-target term is computed (a loss is given and ``alpha != 0``)."""
        return self.soft_loss is not None and self.alpha != 0

    @property
    def feature_active(self) -> bool:
        """Whether the feature term is computed (a loss is given and ``beta != 0``)."""
        return self.feature_loss is not None and self.beta != 0

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
        student_feats: Sequence[torch.Tensor] | None = None,
        teacher_feats: Sequence[torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        scale_weights: torch.Tensor | None = None,
        num_labelled: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            student_logits: student logits ``(B, C, H, W, D)``.
            teacher_logits: teacher logits ``(B, C, H, W, D)``; needed when the soft term is active.
            label: target for the task loss, e.g. ``(B, C, H, W, D)`` region masks, or ``None`` for an
                unlabelled batch.
            student_feats: student feature maps, one per scale (needed when the feature term is active).
            teacher_feats: teacher feature maps, one per scale (needed when the feature term is active).
            mask: optional voxel mask ``(B, 1, H, W, D)`` for the soft term (e.g. brain voxels).
            scale_weights: optional per-scale weights ``(S,)`` for the feature term (e.g. the teacher's
                ``scale_weights().detach()``).
            num_labelled: in a batch of labelled and unlabelled samples (the labelled first, see
                :func:`~kd_components.data.mixing.concat_batches`), the number ``B_l`` of labelled ones:
                ``label`` is ``(B_l, C, H, W, D)`` and the task term uses ``student_logits[:B_l]``; the
                distillation terms use the whole batch. ``None``: every sample has its label.

        Returns:
            ``{"loss": total, "loss_task": ..., "loss_soft": ..., "loss_feature": ...}`` (the last three
            detached scalars).

        Raises:
            ValueError: with no label and no active KD term (nothing to learn from), or when an active
                term's teacher/student inputs are missing.
        """
        if label is None and not (self.soft_active or self.feature_active):
            raise ValueError(
                "DistillationLoss: no label and no active distillation term (alpha * soft_loss and "
                "beta * feature_loss are both off): this batch has nothing to learn from"
            )
        zero = torch.zeros((), device=student_logits.device)
        terms = {"loss_task": zero, "loss_soft": zero, "loss_feature": zero}
        total: torch.Tensor | None = None
        if label is not None:
            labelled_logits = student_logits
            if num_labelled is not None:
                if not 0 < num_labelled <= student_logits.shape[0] or label.shape[0] != num_labelled:
                    raise ValueError(
                        f"DistillationLoss: num_labelled={num_labelled} does not fit a batch of "
                        f"{student_logits.shape[0]} samples with {label.shape[0]} labels"
                    )
                labelled_logits = student_logits[:num_labelled]
            terms["loss_task"] = total = self.task_loss(labelled_logits, label)
        if self.soft_active:
            if teacher_logits is None:
                raise ValueError("DistillationLoss: alpha > 0 with a soft_loss needs teacher_logits")
            terms["loss_soft"] = soft = self.soft_loss(student_logits, teacher_logits, mask=mask)
            total = self.alpha * soft if total is None else total + self.alpha * soft
        if self.feature_active:
            if student_feats is None or teacher_feats is None:
                raise ValueError("DistillationLoss: beta > 0 with a feature_loss needs student_feats and teacher_feats")
            terms["loss_feature"] = feat = self.feature_loss(student_feats, teacher_feats, scale_weights=scale_weights)
            total = self.beta * feat if total is None else total + self.beta * feat
        assert total is not None  # guaranteed by the check above
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}
