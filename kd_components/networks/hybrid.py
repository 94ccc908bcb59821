"""The hybrid teacher: a 3D VGG19 and a 3D ViT in parallel, fused at four scales, with a U-Net decoder."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetResBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from monai.utils import ensure_tuple_rep

from kd_components.constants import MODALITIES, REGIONS
from kd_components.networks.fusion import MultiScaleFusion, check_branches
from kd_components.networks.init import init_output_prior
from kd_components.networks.vgg import VGG19_STAGE_MULTIPLIERS, VGG19_WIDTH, VGG19Encoder3d
from kd_components.networks.vit import ViTEncoder3d

__all__ = ["FEATURE_SOURCES", "FUSED_FEATURE_MODULES", "FUSED_FEATURE_SCALES", "DecoderUpBlock", "HybridTeacher"]

#: Downsampling factors of the fused scales, finest first (VGG19 stages 1..4).
FUSED_FEATURE_SCALES: tuple[int, ...] = (2, 4, 8, 16)
#: Module paths, in a :class:`HybridTeacher`, of the fused features at each scale (finest first),
#: for forward hooks (feature distillation): ``model.get_submodule(path).register_forward_hook(...)``.
FUSED_FEATURE_MODULES: tuple[str, ...] = tuple(f"fusion.fuse.{i}" for i in range(len(FUSED_FEATURE_SCALES)))
#: Module paths of the teacher's features by source, one per fused scale, finest first: the fused maps, the VGG
#: stages at the same scales (``vgg.stages.1`` .. ``.4``) and the ViT hidden states that feed them
#: (``vit.hidden_states.0`` .. ``.3``, 3D token maps at 1/``vit_patch_size``), for feature distillation.
FEATURE_SOURCES: dict[str, tuple[str, ...]] = {
    "fused": FUSED_FEATURE_MODULES,
    "cnn": tuple(f"vgg.stages.{k + 1}" for k in range(len(FUSED_FEATURE_SCALES))),
    "vit": tuple(f"vit.hidden_states.{i}" for i in range(len(FUSED_FEATURE_SCALES))),
}
#: VGG19's total downsampling: inputs must be divisible by it.
_VGG_DIVISOR = 16


class DecoderUpBlock(nn.Module):
    """
    One U-Net decoder step: a 2x2x2 transposed convolution of the coarser map, concatenation with the
    skip map, and a residual conv block (:class:`~monai.networks.blocks.UnetResBlock`). Like MONAI's
    :class:`~monai.networks.blocks.UnetrUpBlock`, but the skip may have any number of channels.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, norm_name: tuple | str = "instance"
    ) -> None:
        """
        Args:
            in_channels: channels of the coarser input map.
            skip_channels: channels of the skip map (at twice the input resolution).
            out_channels: channels of the output map.
            norm_name: MONAI normalisation of the residual block. Defaults to ``"instance"``.
        """
        super().__init__()
        self.transp_conv = get_conv_layer(
            3, in_channels, out_channels, kernel_size=2, stride=2, conv_only=True, is_transposed=True
        )
        self.conv_block = UnetResBlock(
            3, out_channels + skip_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: coarser map ``(B, in_channels, h, w, d)``.
            skip: skip map ``(B, skip_channels, 2h, 2w, 2d)``.

        Returns:
            ``(B, out_channels, 2h, 2w, 2d)``.
        """
        return self.conv_block(torch.cat([self.transp_conv(x), skip], dim=1))


class HybridTeacher(nn.Module):
    """
    The hybrid CNN-transformer teacher for BraTS segmentation.

    - ``vgg``: :class:`VGG19Encoder3d`, 5 stages at 1, 1/2, 1/4, 1/8, 1/16 of the input resolution.
    - ``vit``: :class:`ViTEncoder3d`, hidden states after ``vit_out_layers`` (default 3, 6, 9, 12) on
      the token grid at 1/``vit_patch_size``.
    - ``fusion``: :class:`MultiScaleFusion` at 1/2, 1/4, 1/8, 1/16: ``fusion.fuse.i`` gates VGG stage
      ``i + 1`` with the ``i``-th ViT state (deeper layer -> coarser scale, UNETR-style learned
      upsampling); the fused maps are scaled by the learned scale weights (``scale_weights()``).
    - ``decoder``: 4 :class:`DecoderUpBlock`, coarse to fine (``decoder.0`` outputs 1/8, ...,
      ``decoder.3`` full resolution), starting from the fused 1/16 map with skips from the fused
      1/8, 1/4, 1/2 maps and the full-resolution VGG stage 0.
    - ``head``: a 1x1x1 convolution to ``out_channels`` logits ([TC, WT, ET]; no sigmoid here: the
      loss and post-processing apply it).

    The fused feature of each scale is the output of the module at :data:`FUSED_FEATURE_MODULES`
    (``feature_modules()``), for forward hooks; so are the branches' own features (``vgg.stages.k``,
    ``vit.hidden_states.i``: :meth:`branch_feature_modules`). The module is TorchScript-scriptable.

    **Ablations** (``branches``): ``"cnn"`` builds no ViT (a VGG-only U-Net: each fused map is the
    projected VGG stage); ``"vit"`` builds no VGG (UNETR-like: each fused map is the aligned ViT state,
    and the full-resolution skip comes from a residual conv block on the input, ``stem``, as UNETR's
    ``encoder1``). Module paths, the decoder and the head are the same in all three.

    Inputs must have spatial sizes divisible by ``lcm(16, vit_patch_size)``; with instance norm, at
    least 32 per dimension in training (instance norm needs more than one voxel at 1/16).
    """

    def __init__(
        self,
        in_channels: int = len(MODALITIES),
        out_channels: int = len(REGIONS),
        img_size: Sequence[int] | int = (96, 96, 96),
        vgg_width: int = VGG19_WIDTH,
        vgg_norm: tuple | str | None = ("instance", {"affine": True}),
        freeze_vgg_stages: int = 0,
        vgg_pretrained_path: str | os.PathLike[str] | None = None,
        vit_hidden_size: int = 768,
        vit_mlp_dim: int = 3072,
        vit_num_layers: int = 12,
        vit_num_heads: int = 12,
        vit_patch_size: int = 16,
        vit_out_layers: Sequence[int] = (3, 6, 9, 12),
        fusion_channels: Sequence[int] = (32, 64, 128, 256),
        decoder_channels: Sequence[int] = (16, 32, 64, 128),
        dropout_rate: float = 0.0,
        norm_name: tuple | str = "instance",
        output_prior: float | None = 0.1,
        branches: str = "hybrid",
    ) -> None:
        """
        Args:
            in_channels: input channels, ``[t1c, t1n, t2w, t2f]``. Defaults to ``len(MODALITIES)`` (4).
            out_channels: output logit channels, ``[TC, WT, ET]``. Defaults to ``len(REGIONS)`` (3).
            img_size: training patch size ``(H, W, D)``; sets the ViT position-embedding grid (other sizes
                are accepted at run time). Defaults to 96^3.
            vgg_width: channels of VGG stage 0 (64 = VGG19; stages have ``width * (1, 2, 4, 8, 8)``).
            vgg_norm: normalisation after each VGG convolution (``None`` = exact VGG19). Defaults to
                instance norm with affine (see :class:`VGG19Encoder3d`).
            freeze_vgg_stages: number of leading VGG stages to freeze (0..5). Defaults to 0.
            vgg_pretrained_path: optional torchvision VGG19 state dict, inflated to 3D (needs ``vgg_width=64``).
            vit_hidden_size: ViT token dimension. Defaults to 768 (ViT-B).
            vit_mlp_dim: ViT MLP hidden dimension. Defaults to 3072.
            vit_num_layers: number of transformer blocks. Defaults to 12.
            vit_num_heads: number of attention heads. Defaults to 12.
            vit_patch_size: ViT patch size. Defaults to 16.
            vit_out_layers: 1-based blocks whose outputs feed the scales 1/2, 1/4, 1/8, 1/16 (4 entries,
                the last equal to ``vit_num_layers``). Defaults to ``(3, 6, 9, 12)``.
            fusion_channels: channels of the fused maps at 1/2, 1/4, 1/8, 1/16. Defaults to ``(32, 64, 128, 256)``.
            decoder_channels: channels of the decoder outputs at 1, 1/2, 1/4, 1/8 (finest first).
                Defaults to ``(16, 32, 64, 128)``.
            dropout_rate: dropout in the ViT (embeddings, attention, MLP). Defaults to 0.0.
            norm_name: MONAI normalisation of the fusion and decoder blocks. Defaults to ``"instance"``.
            output_prior: initial foreground probability of every output channel (the head's bias is set
                to its logit, see :func:`~kd_components.networks.init.init_output_prior`); ``None`` keeps
                PyTorch's default bias. Defaults to 0.1.
            branches: ``"hybrid"`` (VGG and ViT), or an ablation with one encoder: ``"cnn"`` (VGG only)
                or ``"vit"`` (ViT only). Defaults to ``"hybrid"``.

        Raises:
            ValueError: if the channel sequences do not have 4 entries, ``img_size`` is not divisible
                by ``lcm(16, vit_patch_size)``, or VGG settings are given to the ViT-only teacher.
        """
        super().__init__()
        n_scales = len(FUSED_FEATURE_SCALES)
        if len(fusion_channels) != n_scales or len(decoder_channels) != n_scales or len(vit_out_layers) != n_scales:
            raise ValueError(
                f"fusion_channels, decoder_channels and vit_out_layers need {n_scales} entries each, got "
                f"{list(fusion_channels)}, {list(decoder_channels)}, {list(vit_out_layers)}"
            )
        self.size_divisor = math.lcm(_VGG_DIVISOR, vit_patch_size)
        img = ensure_tuple_rep(img_size, 3)
        if any(s % self.size_divisor for s in img):
            raise ValueError(
                f"img_size {tuple(img)} must be divisible by {self.size_divisor} (VGG pooling: 16, ViT patch size)"
            )
        self.vit_patch_size = vit_patch_size
        self.feature_channels = [int(c) for c in fusion_channels]
        self.feature_scales = list(FUSED_FEATURE_SCALES)
        self.branches = check_branches(branches)
        if branches == "vit" and (freeze_vgg_stages or vgg_pretrained_path is not None):
            raise ValueError("the ViT-only teacher (branches='vit') has no VGG to freeze or to load weights into")

        self.vgg = (
            VGG19Encoder3d(
                in_channels=in_channels,
                width=vgg_width,
                norm=vgg_norm,
                freeze_stages=freeze_vgg_stages,
                pretrained_path=vgg_pretrained_path,
            )
            if branches != "vit"
            else None
        )
        self.vit = (
            ViTEncoder3d(
                in_channels=in_channels,
                img_size=img,
                patch_size=vit_patch_size,
                hidden_size=vit_hidden_size,
                mlp_dim=vit_mlp_dim,
                num_layers=vit_num_layers,
                num_heads=vit_num_heads,
                out_layers=vit_out_layers,
                dropout_rate=dropout_rate,
            )
            if branches != "cnn"
            else None
        )
        # VGG19's channels per stage; the ViT-only ablation has no VGG but the same skip widths
        cnn_channels = [vgg_width * m for m in VGG19_STAGE_MULTIPLIERS]
        self.stem = (
            UnetrBasicBlock(
                3, in_channels, cnn_channels[0], kernel_size=3, stride=1, norm_name=norm_name, res_block=True
            )
            if self.vgg is None
            else None
        )
        self.fusion = MultiScaleFusion(
            cnn_channels=cnn_channels[1:],
            vit_channels=vit_hidden_size,
            out_channels=self.feature_channels,
            scales=FUSED_FEATURE_SCALES,
            patch_size=vit_patch_size,
            norm_name=norm_name,
            branches=branches,
        )
        # coarse to fine: inputs fused 1/16 -> dec 1/8 -> 1/4 -> 1/2; skips fused 1/8, 1/4, 1/2, VGG stage 0
        dec = [int(c) for c in decoder_channels]
        fus = self.feature_channels
        in_chs = [fus[3], dec[3], dec[2], dec[1]]
        skip_chs = [fus[2], fus[1], fus[0], cnn_channels[0]]
        out_chs = [dec[3], dec[2], dec[1], dec[0]]
        self.decoder = nn.ModuleList(
            DecoderUpBlock(i, s, o, norm_name) for i, s, o in zip(in_chs, skip_chs, out_chs, strict=True)
        )
        self.head = UnetOutBlock(3, dec[0], out_channels)
        if output_prior is not None:
            init_output_prior(self.head, output_prior)

    @staticmethod
    def feature_modules() -> list[str]:
        """Module paths of the fused features, finest first (1/2, 1/4, 1/8, 1/16): :data:`FUSED_FEATURE_MODULES`."""
        return list(FUSED_FEATURE_MODULES)

    def branch_feature_modules(self) -> dict[str, list[str]]:
        """Module paths of each branch's own features at the fused scales (1/2 .. 1/16), finest first, for hooks.

        :data:`FEATURE_SOURCES` without the branch the network lacks (an ablation). A hook on
        ``vit.hidden_states.i`` captures the ViT state of the ``i``-th output layer as a 3D token map
        ``(B, hidden, H/p, W/p, D/p)``.
        """
        present = {"fused": True, "cnn": self.vgg is not None, "vit": self.vit is not None}
        return {source: list(paths) for source, paths in FEATURE_SOURCES.items() if present[source]}

    def scale_weights(self) -> torch.Tensor:
        """The learned per-scale weights ``(4,)`` of the fused features, finest first, summing to 1."""
        return self.fusion.scale_weights()

    def check_input_size(self, spatial_size: list[int]) -> None:
        """Raise a ValueError unless ``spatial_size`` is 3D and divisible by ``size_divisor`` in every dimension."""
        if len(spatial_size) != 3 or any(s % self.size_divisor != 0 for s in spatial_size):
            raise ValueError(
                f"HybridTeacher: input spatial shape {spatial_size} must be 3D and divisible by {self.size_divisor} "
                f"in every dimension (VGG19 pooling: 16, ViT patch size: {self.vit_patch_size})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input volume ``(B, in_channels, H, W, D)``, H, W, D divisible by ``size_divisor``.

        Returns:
            logits ``(B, out_channels, H, W, D)`` (no sigmoid).
        """
        self.check_input_size(list(x.shape[2:]))
        cnn: list[torch.Tensor] = []
        vit: list[torch.Tensor] = []
        if self.vgg is not None:
            cnn = self.vgg(x)  # 5 maps at 1, 1/2, 1/4, 1/8, 1/16
        if self.vit is not None:
            vit = self.vit(x)  # 4 maps at 1/patch
        if self.stem is not None:
            first = self.stem(x)  # the ViT-only ablation's full-resolution skip
        else:
            first = cnn[0]
        fused = self.fusion(cnn[1:], vit)  # 4 weighted maps at 1/2, 1/4, 1/8, 1/16
        skips = [first] + fused[:-1]  # noqa: RUF005 (TorchScript)  finest first: 1, 1/2, 1/4, 1/8
        y = fused[-1]
        for i, up in enumerate(self.decoder):
            y = up(y, skips[len(skips) - 1 - i])
        return self.head(y)
