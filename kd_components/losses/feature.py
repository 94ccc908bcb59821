"""Multi-scale feature distillation: student-to-teacher adapters, feature distances and their weighted sum."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import get_norm_layer

from kd_components.constants import MODALITIES
from kd_components.hooks import feature_channels
from kd_components.losses.soft_target import check_same_shape
from kd_components.networks.utils import parameter_device

__all__ = [
    "FEATURE_DISTANCES",
    "FeatureAdapter",
    "FeatureKDLoss",
    "build_feature_kd_loss",
    "channel_wise_distillation",
    "normalized_mse",
    "standardize_channels",
]

_INTERPOLATION_MODES: dict[int, str] = {1: "linear", 2: "bilinear", 3: "trilinear"}


def standardize_channels(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """
    Standardise each channel of each sample over space (parameter-free instance norm).

    Args:
        x: feature map ``(B, C, *spatial)``.
        eps: added to the (biased) variance. Defaults to 1e-5.

    Returns:
        ``(B, C, *spatial)`` with zero mean and unit variance per ``(b, c)`` (a constant channel becomes 0).
    """
    dims = tuple(range(2, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """
    Mean squared error between feature maps standardised per channel over space.

    Each map is standardised per sample and channel over the spatial positions (zero mean, unit
    variance: :func:`standardize_channels`, the same normalisation as the teacher's instance-normalised
    fused features), then the squared differences are averaged over all elements. Equivalently (up to
    ``eps``), the mean over samples and channels of ``2 * (1 - r)``, ``r`` the Pearson correlation over
    space of the two channels: it lies in ``[0, 4]``, ignores each channel's offset and (positive)
    scale, and measures only the spatial pattern.

    Args:
        student: student (adapted) features ``(B, C, *spatial)``.
        teacher: teacher features ``(B, C, *spatial)``; detach it beforehand to keep its gradient out.
        eps: added to the variances. Defaults to 1e-5.

    Returns:
        a scalar tensor (float32).

    Raises:
        ValueError: if the shapes differ.
    """
    check_same_shape(student, teacher, "normalized_mse")
    s, t = standardize_channels(student.float(), eps), standardize_channels(teacher.float(), eps)
    return F.mse_loss(s, t)


def channel_wise_distillation(student: torch.Tensor, teacher: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """
    Channel-wise distillation (CWD; Shu et al., "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021).

    Each channel is turned into a distribution over the spatial positions, ``softmax_n(x / tau)``,
    and the student's is pulled to the teacher's with ``KL(teacher || student)`` summed over the
    positions, averaged over channels and samples and multiplied by ``tau^2``. The loss depends on the
    scale of the maps: for unit-variance features (e.g. the teacher's instance-normalised fused maps)
    a small ``tau`` (about 1) keeps the distributions from becoming nearly uniform.

    Args:
        student: student (adapted) features ``(B, C, *spatial)``.
        teacher: teacher features ``(B, C, *spatial)``; detach it beforehand to keep its gradient out.
        tau: temperature, positive. Defaults to 4.0.

    Returns:
        a scalar tensor (float32).

    Raises:
        ValueError: if the shapes differ or ``tau`` is not positive.
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    check_same_shape(student, teacher, "channel_wise_distillation")
    b, c = student.shape[:2]
    log_q = F.log_softmax(student.float().reshape(b, c, -1) / tau, dim=-1)
    log_p = F.log_softmax(teacher.float().reshape(b, c, -1) / tau, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (B, C)
    return kl.mean() * tau**2


#: Feature distances by name, for :class:`FeatureKDLoss`: ``distance(student, teacher, ...) -> scalar``.
FEATURE_DISTANCES: dict[str, Callable[..., torch.Tensor]] = {
    "nmse": normalized_mse,
    "cwd": channel_wise_distillation,
}


class FeatureAdapter(nn.Module):
    """
    Maps a student feature map to a teacher feature map's channels and spatial size.

    A 1x1x1 convolution from the student's to the teacher's channels, a trilinear resize **of the
    student map to the teacher map's size** (when the sizes differ; the teacher map is never resampled)
    and a normalisation (instance norm by default, so that the output has the per-channel statistics
    of the teacher's instance-normalised fused features). The convolution and the interpolation
    commute, so the convolution runs on the smaller of the two grids; the normalisation comes last, on
    the teacher's grid. (Downsampling by trilinear interpolation does not low-pass filter first; the
    student maps are normally the same size as the teacher's or smaller.)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 3,
        norm: tuple | str | None = ("instance", {"affine": True}),
        resize: bool = True,
    ) -> None:
        """
        Args:
            in_channels: channels of the student map.
            out_channels: channels of the teacher map.
            spatial_dims: number of spatial dimensions (1, 2 or 3). Defaults to 3.
            norm: MONAI normalisation after the convolution (``None``: none, and the convolution gets a
                bias). Defaults to instance norm with a learned affine.
            resize: resample the student map when its spatial size differs from the target; if False,
                a size mismatch raises a ValueError. Defaults to True.
        """
        super().__init__()
        if spatial_dims not in _INTERPOLATION_MODES:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.resize = resize
        self.mode = _INTERPOLATION_MODES[spatial_dims]
        self.conv = Convolution(
            spatial_dims, in_channels, out_channels, kernel_size=1, bias=norm is None, conv_only=True
        )
        self.norm = nn.Identity() if norm is None else get_norm_layer(norm, spatial_dims, out_channels)

    def forward(self, x: torch.Tensor, target_size: Sequence[int] | None = None) -> torch.Tensor:
        """
        Args:
            x: student features ``(B, in_channels, h, w, d)``.
            target_size: the teacher map's spatial size ``(H, W, D)``; ``None`` keeps ``(h, w, d)``.

        Returns:
            ``(B, out_channels, H, W, D)``.

        Raises:
            ValueError: if ``x`` has the wrong number of channels, or the sizes differ and ``resize`` is False.
        """
        if x.ndim < 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"FeatureAdapter expects (B, {self.in_channels}, *spatial) student features, got {list(x.shape)}"
            )
        size = tuple(x.shape[2:]) if target_size is None else tuple(int(s) for s in target_size)
        if len(size) != x.ndim - 2:
            raise ValueError(f"target_size {list(size)} does not match the student map {list(x.shape)}")
        if size == tuple(x.shape[2:]):
            return self.norm(self.conv(x))
        if not self.resize:
            raise ValueError(
                f"student feature size {list(x.shape[2:])} differs from the teacher's {list(size)} and "
                "resize=False; enable resize or tap a student layer at the teacher's scale"
            )
        if math.prod(x.shape[2:]) <= math.prod(size):  # upsampling: convolve on the small grid
            y = F.interpolate(self.conv(x), size=size, mode=self.mode, align_corners=False)
        else:
            y = self.conv(F.interpolate(x, size=size, mode=self.mode, align_corners=False))
        return self.norm(y)


def _as_weights(weights: torch.Tensor | Sequence[float], num_scales: int, what: str) -> torch.Tensor:
    """Validate non-negative per-scale weights ``(num_scales,)`` and normalise them to sum to 1 (float32)."""
    w = torch.as_tensor(weights).detach().to(torch.float32)
    if w.shape != (num_scales,):
        raise ValueError(f"{what}: expected {num_scales} per-scale weights, got shape {list(w.shape)}")
    if not bool((torch.isfinite(w) & (w >= 0)).all() & (w.sum() > 0)):
        raise ValueError(f"{what}: weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


class FeatureKDLoss(nn.Module):
    """
    Multi-scale feature distillation: ``sum_i w_i * d(adapter_i(s_i), t_i)`` over the tapped scales.

    ``pairs`` names, finest first, the teacher and student modules whose outputs are matched (tap them
    with :class:`~kd_components.hooks.FeatureHooks`, e.g. the teacher's ``fusion.fuse.i`` from
    ``HybridTeacher.feature_modules()``). One learned :class:`FeatureAdapter` per pair (``adapters.i``)
    maps the student map to the teacher map's channels and size; the teacher features are detached.
    The adapters are parameters of this loss: give them to the optimiser with the student's.

    **Scale weights** ``w`` (non-negative, summing to 1) are never learned by minimising this loss:
    minimising ``sum_i w_i d_i`` over ``w`` on the simplex puts all weight on the scale with the smallest
    distance (the easiest one), and the others stop being distilled. They come from either

    - the constructor (``scale_weights``): ``None``/``"uniform"`` (the default) or a sequence of
      non-negative numbers (normalised to sum 1), kept in a non-persistent buffer ``fixed_weights``,
      not a parameter (the config stays their one home); or
    - the caller, per forward (``forward(..., scale_weights=w)``), e.g. the teacher's learned fusion
      weights ``teacher.scale_weights().detach()``, which the teacher learned for segmentation and which
      say how strongly each fused scale speaks to its decoder. They are detached and renormalised here.

    The last per-scale distances and the weights used are kept (detached) in ``last_distances`` and
    ``last_weights`` ``(num_scales,)`` for logging.

    Example::

        loss = FeatureKDLoss(
            pairs=[("fusion.fuse.0", "down_layers.1"), ("fusion.fuse.1", "down_layers.2")],
            student_channels=[16, 32], teacher_channels=teacher.feature_channels[:2],
        )
        value = loss(student_hooks.features(), teacher_hooks.features(), teacher.scale_weights()[:2].detach())
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        distance: str = "nmse",
        scale_weights: str | Sequence[float] | None = None,
        tau: float = 4.0,
        spatial_dims: int = 3,
        adapter_norm: tuple | str | None = ("instance", {"affine": True}),
        resize: bool = True,
    ) -> None:
        """
        Args:
            pairs: ``(teacher_module_path, student_module_path)`` per scale, finest first.
            student_channels: channels of the student map of each pair.
            teacher_channels: channels of the teacher map of each pair.
            distance: ``"nmse"`` (:func:`normalized_mse`) or ``"cwd"`` (:func:`channel_wise_distillation`).
                Defaults to ``"nmse"``.
            scale_weights: fixed per-scale weights: ``None`` or ``"uniform"`` (equal weights), or one
                non-negative number per pair (normalised to sum 1). Overridden by weights passed to
                ``forward``. Defaults to uniform.
            tau: temperature of ``"cwd"`` (unused by ``"nmse"``). Defaults to 4.0.
            spatial_dims: number of spatial dimensions. Defaults to 3.
            adapter_norm: normalisation of the adapters (see :class:`FeatureAdapter`).
            resize: let the adapters resample student maps to the teacher's size; if False, a size
                mismatch raises a ValueError. Defaults to True.

        Raises:
            ValueError: for empty or malformed pairs, channel lists of another length, an unknown
                distance or invalid weights.
        """
        super().__init__()
        if not pairs or any(len(p) != 2 or not all(isinstance(m, str) for m in p) for p in pairs):
            raise ValueError(
                f"pairs must be a non-empty list of (teacher_path, student_path) strings, got {list(pairs)}"
            )
        n = len(pairs)
        if len(student_channels) != n or len(teacher_channels) != n:
            raise ValueError(
                f"one channel count per pair needed: {n} pairs, student_channels={list(student_channels)}, "
                f"teacher_channels={list(teacher_channels)}"
            )
        if distance not in FEATURE_DISTANCES:
            raise ValueError(f"distance must be one of {sorted(FEATURE_DISTANCES)}, got {distance!r}")
        self.pairs: list[tuple[str, str]] = [(t, s) for t, s in pairs]
        self.distance_name = distance
        self.distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            functools.partial(channel_wise_distillation, tau=tau) if distance == "cwd" else FEATURE_DISTANCES[distance]
        )
        self.adapters = nn.ModuleList(
            FeatureAdapter(s, t, spatial_dims=spatial_dims, norm=adapter_norm, resize=resize)
            for s, t in zip(student_channels, teacher_channels, strict=True)
        )
        if scale_weights is None or (isinstance(scale_weights, str) and scale_weights == "uniform"):
            fixed = torch.full((n,), 1.0 / n)
        elif isinstance(scale_weights, str):
            raise ValueError(f"scale_weights must be None, 'uniform' or {n} numbers, got {scale_weights!r}")
        else:
            fixed = _as_weights(scale_weights, n, "FeatureKDLoss(scale_weights=...)")
        self.fixed_weights: torch.Tensor
        self.register_buffer("fixed_weights", fixed, persistent=False)
        self.last_distances: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None

    @property
    def num_scales(self) -> int:
        """The number of distilled scales (pairs)."""
        return len(self.pairs)

    @property
    def teacher_paths(self) -> list[str]:
        """Teacher module paths, finest first (for :class:`~kd_components.hooks.FeatureHooks`)."""
        return [t for t, _ in self.pairs]

    @property
    def student_paths(self) -> list[str]:
        """Student module paths, finest first (for :class:`~kd_components.hooks.FeatureHooks`)."""
        return [s for _, s in self.pairs]

    def forward(
        self,
        student_feats: Sequence[torch.Tensor],
        teacher_feats: Sequence[torch.Tensor],
        scale_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            student_feats: one student map per pair, finest first: ``(B, student_channels[i], h_i, w_i, d_i)``.
            teacher_feats: one teacher map per pair, finest first: ``(B, teacher_channels[i], H_i, W_i, D_i)``;
                detached here.
            scale_weights: optional per-scale weights ``(num_scales,)``, non-negative (detached and
                normalised to sum 1), used instead of ``fixed_weights`` for this call.

        Returns:
            the scalar ``sum_i w_i d_i`` (float32).

        Raises:
            ValueError: for the wrong number of maps or weights, or shapes the adapters cannot align.
        """
        n = self.num_scales
        if len(student_feats) != n or len(teacher_feats) != n:
            raise ValueError(
                f"FeatureKDLoss has {n} pairs {self.pairs}; got {len(student_feats)} student and "
                f"{len(teacher_feats)} teacher feature maps"
            )
        distances = []
        for adapter, s, t in zip(self.adapters, student_feats, teacher_feats, strict=True):
            t = t.detach()
            distances.append(self.distance(adapter(s, t.shape[2:]), t))
        d = torch.stack(distances)
        w = self.fixed_weights if scale_weights is None else _as_weights(scale_weights, n, "scale_weights")
        w = w.to(device=d.device, dtype=d.dtype)
        self.last_distances, self.last_weights = d.detach(), w.detach()
        return (w * d).sum()


def build_feature_kd_loss(
    student: nn.Module,
    teacher: nn.Module,
    pairs: Sequence[Sequence[str]],
    probe_size: Sequence[int] = (32, 32, 32),
    in_channels: int = len(MODALITIES),
    **kwargs: Any,
) -> FeatureKDLoss:
    """
    A :class:`~kd_components.losses.FeatureKDLoss` for ``pairs``, with the channel counts read from the
    networks (:func:`feature_channels`) and the adapters on the student's device.

    In a bundle config::

        "feature_loss": {"_target_": "kd_components.losses.build_feature_kd_loss", "student": "@network",
                         "teacher": "@teacher", "pairs": [["fusion.fuse.0", "down_layers.1"], ...]}

    Args:
        student: the student network (eager; a ``DistributedDataParallel`` wrapper is looked through).
        teacher: the teacher network (eager).
        pairs: ``(teacher_path, student_path)`` per scale, finest first.
        probe_size: spatial size of the probe input for networks that must be run to know their channels.
        in_channels: channels of the probe input.
        kwargs: further arguments of :class:`~kd_components.losses.FeatureKDLoss` (``distance``,
            ``scale_weights``, ``tau``, ``adapter_norm``, ``resize``).
    """
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"pairs must be a non-empty list of (teacher_path, student_path), got {pairs}")
    teacher_channels = feature_channels(teacher, [t for t, _ in pairs], probe_size, in_channels)
    student_channels = feature_channels(student, [s for _, s in pairs], probe_size, in_channels)
    loss = FeatureKDLoss(pairs, student_channels, teacher_channels, **kwargs)
    return loss.to(parameter_device(student))
