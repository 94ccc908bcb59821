"""Soft-target (Hinton) distillation of the teacher's voxel-wise logits."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SOFT_TARGET_MODES", "SoftTargetKDLoss", "check_same_shape", "masked_reduce"]

#: The output activations :class:`SoftTargetKDLoss` distils: independent sigmoids or a softmax over channels.
SOFT_TARGET_MODES: tuple[str, ...] = ("sigmoid", "softmax")
_REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    """Raise a ValueError unless ``student`` and ``teacher`` are ``(B, C, *spatial)`` maps of the same shape.

    Args:
        student: student tensor ``(B, C, *spatial)``.
        teacher: teacher tensor ``(B, C, *spatial)``.
        what: what the tensors are, for the message (e.g. ``"logits"``).
    """
    if student.ndim < 3:
        raise ValueError(f"{what}: expected (B, C, *spatial) tensors, got shape {list(student.shape)}")
    if student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"{what}: student spatial size {list(student.shape[2:])} differs from the teacher's "
            f"{list(teacher.shape[2:])}; resample one of them first (sizes must match exactly)"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {list(student.shape)} differs from the teacher's {list(teacher.shape)} "
            "(batch and channels must match)"
        )


def _voxel_weights(mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A mask ``(B, 1, *spatial)`` or ``(B, *spatial)`` (bool or float) as float weights ``(B, *spatial)``."""
    batch, spatial = reference.shape[0], reference.shape[2:]
    if mask.shape == (batch, 1, *spatial):
        mask = mask[:, 0]
    if mask.shape != (batch, *spatial):
        raise ValueError(
            f"mask of shape {list(mask.shape)} does not fit logits of shape {list(reference.shape)}: "
            f"expected {[batch, 1, *spatial]} or {[batch, *spatial]}"
        )
    return mask.to(device=reference.device, dtype=torch.float32)


def masked_reduce(values: torch.Tensor, weights: torch.Tensor | None, reduction: str, eps: float) -> torch.Tensor:
    """Reduce voxel-wise values with optional voxel weights.

    Args:
        values: voxel-wise values ``(B, *spatial)``.
        weights: voxel weights ``(B, *spatial)`` (0 = ignored voxel), or ``None`` for all voxels.
        reduction: ``"mean"`` (weighted mean over the batch and voxels), ``"sum"`` (weighted sum) or
            ``"none"`` (the weighted values ``(B, *spatial)``).
        eps: floor of the total weight in ``"mean"``: an empty mask gives 0, not NaN.

    Returns:
        a scalar tensor, or ``(B, *spatial)`` for ``reduction="none"``.
    """
    if weights is not None:
        # where, not a product: values outside the mask (even inf/NaN) cannot leak into the result
        values = torch.where(weights > 0, values * weights, torch.zeros_like(values))
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if weights is None:
        return values.mean()
    return values.sum() / weights.clamp_min(0).sum().clamp_min(eps)


class SoftTargetKDLoss(nn.Module):
    """
    Soft-target knowledge distillation (Hinton et al., 2015) of voxel-wise segmentation logits.

    Both logit maps are softened by the temperature ``T`` and the student is pulled towards the
    teacher's softened distribution with a KL divergence, multiplied by ``T^2`` so that the gradient
    magnitude does not shrink as ``T`` grows:

    - ``mode="sigmoid"`` (the project's default: three independent sigmoid channels ``[TC, WT, ET]``):
      per voxel and channel, ``KL(Bern(sigmoid(t / T)) || Bern(sigmoid(s / T)))``
      ``= p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q))`` with ``p = sigmoid(t / T)``,
      ``q = sigmoid(s / T)``, computed from the logits with ``logsigmoid`` (``log(1 - p) =
      logsigmoid(-t / T)``), so it stays finite for saturated logits; then averaged over channels.
    - ``mode="softmax"``: per voxel, ``KL(softmax_c(t / T) || softmax_c(s / T))`` (summed over the
      channels, as a KL between distributions over the channels is).

    The voxel-wise divergences are then reduced over the batch and the (masked) voxels. The teacher
    logits are detached here: the gradient flows to the student only. Computations run in float32
    (safe under AMP).

    Example::

        loss = SoftTargetKDLoss(temperature=4.0)
        kd = loss(student(x), teacher(x), mask=(x[:, :1] > 0))  # brain voxels only
    """

    def __init__(
        self, temperature: float = 4.0, mode: str = "sigmoid", reduction: str = "mean", eps: float = 1e-6
    ) -> None:
        """
        Args:
            temperature: softening temperature ``T > 0``; the loss is multiplied by ``T^2``. Defaults to 4.0.
            mode: ``"sigmoid"`` (independent Bernoulli per channel) or ``"softmax"`` (a distribution over
                the channels). Defaults to ``"sigmoid"``.
            reduction: ``"mean"`` (over the batch and the masked voxels; mask values weight the voxels),
                ``"sum"`` (over the batch and the masked voxels) or ``"none"`` (the voxel-wise divergence
                ``(B, *spatial)``, zero outside the mask). Defaults to ``"mean"``.
            eps: floor of the mask total in the mean, so that an empty mask gives 0 (not NaN). Defaults to 1e-6.

        Raises:
            ValueError: for a non-positive temperature or eps, or an unknown mode or reduction.
        """
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if mode not in SOFT_TARGET_MODES:
            raise ValueError(f"mode must be one of {SOFT_TARGET_MODES}, got {mode!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.temperature = float(temperature)
        self.mode = mode
        self.reduction = reduction
        self.eps = float(eps)

    def voxel_divergence(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """
        The unscaled divergence per voxel (without ``T^2``, mask or reduction).

        Args:
            student_logits: ``(B, C, *spatial)``.
            teacher_logits: ``(B, C, *spatial)``, detached by the caller.

        Returns:
            ``(B, *spatial)``: the channel mean of the Bernoulli KLs (sigmoid) or the KL of the channel
            distributions (softmax).
        """
        s = student_logits.float() / self.temperature
        t = teacher_logits.float() / self.temperature
        if self.mode == "softmax":
            log_p, log_q = F.log_softmax(t, dim=1), F.log_softmax(s, dim=1)
            return (log_p.exp() * (log_p - log_q)).sum(dim=1)
        log_p, log_1mp = F.logsigmoid(t), F.logsigmoid(-t)
        log_q, log_1mq = F.logsigmoid(s), F.logsigmoid(-s)
        kl = log_p.exp() * (log_p - log_q) + log_1mp.exp() * (log_1mp - log_1mq)
        return kl.mean(dim=1)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            student_logits: student logits ``(B, C, H, W, D)`` (no activation).
            teacher_logits: teacher logits ``(B, C, H, W, D)`` (no activation); detached here.
            mask: optional voxels to distil, ``(B, 1, H, W, D)`` or ``(B, H, W, D)``, bool or float
                (e.g. brain voxels, so that the background does not dominate). Voxels where it is 0 do
                not change the loss; an empty mask gives 0.

        Returns:
            a scalar (``"mean"``, ``"sum"``) or ``(B, H, W, D)`` (``"none"``), already multiplied by ``T^2``;
            zero where the student equals the teacher.

        Raises:
            ValueError: if the shapes (spatial sizes included) differ or the mask does not fit.
        """
        teacher_logits = teacher_logits.detach()
        check_same_shape(student_logits, teacher_logits, "SoftTargetKDLoss logits")
        weights = None if mask is None else _voxel_weights(mask, student_logits)
        divergence = self.voxel_divergence(student_logits, teacher_logits) * self.temperature**2
        return masked_reduce(divergence, weights, self.reduction, self.eps)
