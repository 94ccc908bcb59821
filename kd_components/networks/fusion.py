"""Multi-scale fusion of CNN (VGG) and ViT features with learned per-scale weights."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetrBasicBlock, UnetResBlock, UnetrPrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer

__all__ = ["BRANCHES", "GatedFusionBlock", "MultiScaleFusion", "check_branches", "vit_alignment"]

#: Which encoder branches a fusion (and a :class:`~kd_components.networks.HybridTeacher`) has: both
#: (``"hybrid"``), the CNN alone (``"cnn"``, a VGG-only ablation) or the ViT alone (``"vit"``, UNETR-like).
BRANCHES: tuple[str, ...] = ("hybrid", "cnn", "vit")


def check_branches(branches: str) -> str:
    """``branches`` if it is one of :data:`BRANCHES`, else a ValueError naming the choices."""
    if branches not in BRANCHES:
        raise ValueError(f"branches must be one of {list(BRANCHES)}, got {branches!r}")
    return branches


def _log2_exact(value: int) -> int | None:
    """``log2(value)`` if ``value`` is a positive power of two, else ``None``."""
    return value.bit_length() - 1 if value > 0 and value & (value - 1) == 0 else None


def vit_alignment(
    vit_channels: int, out_channels: int, patch_size: int, scale: int, norm_name: tuple | str = "instance"
) -> nn.Module:
    """A module taking ViT maps ``(B, vit_channels, H/patch_size, ...)`` to ``(B, out_channels, H/scale, ...)``.

    UNETR-style: for a finer scale (``patch_size > scale``) a transposed convolution to
    ``out_channels`` then ``log2(patch_size / scale) - 1`` (transposed convolution + residual block)
    steps (:class:`~monai.networks.blocks.UnetrPrUpBlock`); at the token resolution a residual conv
    block (:class:`~monai.networks.blocks.UnetrBasicBlock`); for a coarser scale average pooling then
    that block.

    Raises:
        ValueError: if the ratio of ``patch_size`` and ``scale`` is not a power of two.
    """
    if patch_size > scale and patch_size % scale == 0 and (n_up := _log2_exact(patch_size // scale)) is not None:
        return UnetrPrUpBlock(
            spatial_dims=3,
            in_channels=vit_channels,
            out_channels=out_channels,
            num_layer=n_up - 1,
            kernel_size=3,
            stride=1,
            upsample_kernel_size=2,
            norm_name=norm_name,
            conv_block=True,
            res_block=True,
        )
    block = UnetrBasicBlock(3, vit_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
    if patch_size == scale:
        return block
    if scale > patch_size and scale % patch_size == 0 and _log2_exact(scale // patch_size) is not None:
        return nn.Sequential(nn.AvgPool3d(kernel_size=scale // patch_size), block)
    raise ValueError(f"the ratio of the ViT patch size {patch_size} and the scale 1/{scale} must be a power of two")


class GatedFusionBlock(nn.Module):
    """
    Fuses a CNN feature map with ViT hidden states at one scale, with a learned voxel-wise gate.

    ``c = norm(conv1x1(cnn))``, ``v = align(vit)`` (see :func:`vit_alignment`),
    ``g = sigmoid(conv3x3x3([c, v]))`` (per voxel and channel), ``fused = g * c + (1 - g) * v``, then a
    residual conv block and a parameter-free instance norm: the output has zero mean and unit
    variance per channel and sample, so its magnitude carries no information (the per-scale weights of
    :class:`MultiScaleFusion` and the decoder set each scale's strength). This output is what a
    forward hook on this module captures (the feature-distillation target); a forward hook on
    ``gate`` captures the gate's logits (``sigmoid`` of them is the CNN's share per voxel and channel).

    With one branch (``branches="cnn"`` or ``"vit"``) the other branch's modules and the gate are
    ``None`` and ``fused`` is ``c`` or ``v``: the ablations of the hybrid.
    """

    def __init__(
        self,
        cnn_channels: int,
        vit_channels: int,
        out_channels: int,
        patch_size: int,
        scale: int,
        norm_name: tuple | str = "instance",
        branches: str = "hybrid",
    ) -> None:
        """
        Args:
            cnn_channels: channels of the CNN feature map.
            vit_channels: channels (hidden size) of the ViT maps.
            out_channels: channels of the fused map.
            patch_size: ViT patch size: the ViT maps are at 1/patch_size of the input resolution.
            scale: downsampling factor of this scale: the CNN map and the output are at 1/scale.
            norm_name: MONAI normalisation of the conv blocks. Defaults to ``"instance"``.
            branches: ``"hybrid"`` (both inputs, gated), ``"cnn"`` or ``"vit"`` (that input alone; the
                other one is not built). Defaults to ``"hybrid"``.
        """
        super().__init__()
        self.scale = scale
        check_branches(branches)
        self.vit_align = (
            vit_alignment(vit_channels, out_channels, patch_size, scale, norm_name) if branches != "cnn" else None
        )
        self.cnn_proj = (
            get_conv_layer(3, cnn_channels, out_channels, kernel_size=1, act=None, norm=norm_name, conv_only=False)
            if branches != "vit"
            else None
        )
        self.gate = (
            get_conv_layer(3, 2 * out_channels, out_channels, kernel_size=3, bias=True, conv_only=True)
            if branches == "hybrid"
            else None
        )
        self.refine = UnetResBlock(3, out_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name)
        self.out_norm = nn.InstanceNorm3d(out_channels, affine=False)

    def forward(self, cnn: torch.Tensor | None, vit: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            cnn: CNN features ``(B, cnn_channels, H/s, W/s, D/s)`` (``s`` = ``scale``); ignored (may be
                ``None``) without a CNN branch.
            vit: ViT features ``(B, vit_channels, H/p, W/p, D/p)`` (``p`` = ``patch_size``); ignored (may be
                ``None``) without a ViT branch.

        Returns:
            the fused map ``(B, out_channels, H/s, W/s, D/s)``, instance-normalised.

        Raises:
            ValueError: if the input of a branch the block has is missing, or the two maps differ in size.
        """
        c: torch.Tensor | None = None
        v: torch.Tensor | None = None
        if self.cnn_proj is not None:
            if cnn is None:
                raise ValueError(f"GatedFusionBlock(scale=1/{self.scale}): the CNN features are missing")
            c = self.cnn_proj(cnn)
        if self.vit_align is not None:
            if vit is None:
                raise ValueError(f"GatedFusionBlock(scale=1/{self.scale}): the ViT features are missing")
            v = self.vit_align(vit)
        if c is None:
            assert v is not None  # a block has at least one branch
            return self.out_norm(self.refine(v))
        if v is None or self.gate is None:
            return self.out_norm(self.refine(c))
        if c.shape[2:] != v.shape[2:]:
            raise ValueError(
                f"GatedFusionBlock(scale=1/{self.scale}): CNN map {list(c.shape[2:])} and aligned ViT map "
                f"{list(v.shape[2:])} differ; the input size must be divisible by 16 and by the patch size"
            )
        g = torch.sigmoid(self.gate(torch.cat([c, v], dim=1)))
        return self.out_norm(self.refine(v + g * (c - v)))


class MultiScaleFusion(nn.Module):
    """
    Fuses CNN and ViT features at several scales and weights the scales with learned weights.

    At scale ``i`` the module ``fuse.i`` (a :class:`GatedFusionBlock`; stable module paths
    ``fuse.0`` .. ``fuse.{S-1}``, finest first) combines the CNN map at 1/``scales[i]`` with the ``i``-th
    ViT map (a deeper ViT layer for a coarser scale, as in UNETR). The scale weights
    ``w = softmax(scale_logits)`` (``scale_weights()``, sum 1, uniform at initialisation) then
    multiply the fused maps: the forward returns ``S * w_i * fuse.i(...)`` (``S`` scales, so uniform
    weights leave the maps unchanged). Each ``fuse.i`` output is instance-normalised, so its own blocks
    cannot change its strength; the weights can, and so can the decoder convolution that reads the map.
    That redundancy is why the logits need a learning rate of their own to move at all
    (:func:`~kd_components.networks.utils.parameter_groups`); trained so, they are relative importances of
    the scales (not a calibrated measure), and the student's feature-distillation loss weights the features
    hooked on ``fuse.i`` (unweighted, normalised) by ``w_i``.
    """

    def __init__(
        self,
        cnn_channels: Sequence[int],
        vit_channels: int,
        out_channels: Sequence[int] | int,
        scales: Sequence[int] = (2, 4, 8, 16),
        patch_size: int = 16,
        norm_name: tuple | str = "instance",
        branches: str = "hybrid",
    ) -> None:
        """
        Args:
            cnn_channels: channels of the CNN map at each scale, finest first (one per scale).
            vit_channels: channels (hidden size) of the ViT maps.
            out_channels: channels of the fused map at each scale, finest first, or one int for all.
            scales: downsampling factor of each scale, finest first. Defaults to ``(2, 4, 8, 16)``
                (VGG stages 1..4).
            patch_size: ViT patch size (the ViT maps are at 1/patch_size). Defaults to 16.
            norm_name: MONAI normalisation of the conv blocks. Defaults to ``"instance"``.
            branches: ``"hybrid"``, ``"cnn"`` or ``"vit"``: which inputs the blocks take (see
                :class:`GatedFusionBlock`). Defaults to ``"hybrid"``.

        Raises:
            ValueError: if the per-scale sequences differ in length or the scales are not increasing.
        """
        super().__init__()
        scales = [int(s) for s in scales]
        outs = [int(out_channels)] * len(scales) if isinstance(out_channels, int) else [int(c) for c in out_channels]
        if not scales or len(cnn_channels) != len(scales) or len(outs) != len(scales):
            raise ValueError(
                f"one entry per scale needed: scales={scales}, cnn_channels={list(cnn_channels)}, out_channels={outs}"
            )
        if any(b <= a for a, b in itertools.pairwise(scales)):
            raise ValueError(f"scales must be strictly increasing (finest first), got {scales}")
        self.scales = scales
        self.out_channels = outs
        self.branches = check_branches(branches)
        self.fuse = nn.ModuleList(
            GatedFusionBlock(c, vit_channels, o, patch_size, s, norm_name, branches)
            for c, o, s in zip(cnn_channels, outs, scales, strict=True)
        )
        self.scale_logits = nn.Parameter(torch.zeros(len(scales)))

    def scale_weights(self) -> torch.Tensor:
        """The per-scale weights ``softmax(scale_logits)``, shape ``(num_scales,)``, finest first, summing to 1."""
        return torch.softmax(self.scale_logits, dim=0)

    def forward(self, cnn_features: list[torch.Tensor], vit_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            cnn_features: one CNN map per scale, finest first: ``(B, cnn_channels[i], H/scales[i], ...)``;
                an empty list without a CNN branch.
            vit_features: one ViT map per scale (shallow to deep layers): ``(B, vit_channels, H/p, W/p, D/p)``;
                an empty list without a ViT branch.

        Returns:
            the weighted fused maps, finest first: ``(B, out_channels[i], H/scales[i], W/scales[i], D/scales[i])``.
        """
        n = len(self.scales)
        n_cnn = 0 if self.branches == "vit" else n
        n_vit = 0 if self.branches == "cnn" else n
        if len(cnn_features) != n_cnn or len(vit_features) != n_vit:
            raise ValueError(
                f"MultiScaleFusion(branches='{self.branches}') expects {n_cnn} CNN and {n_vit} ViT maps, "
                f"got {len(cnn_features)} and {len(vit_features)}"
            )
        weights = self.scale_weights() * n
        fused: list[torch.Tensor] = []
        for i, block in enumerate(self.fuse):
            cnn: torch.Tensor | None = cnn_features[i] if n_cnn else None
            vit: torch.Tensor | None = vit_features[i] if n_vit else None
            fused.append(block(cnn, vit) * weights[i])
        return fused
