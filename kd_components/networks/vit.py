"""A 3D ViT encoder returning UNETR-style intermediate hidden states as feature maps, at any input size."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import ViT
from monai.utils import ensure_tuple_rep

from kd_components.constants import MODALITIES

__all__ = ["ViTEncoder3d"]


class ViTEncoder3d(nn.Module):
    """
    A 3D Vision Transformer (MONAI's :class:`~monai.networks.nets.ViT`: convolutional patch embedding,
    learnable position embeddings, pre-norm transformer blocks) used as an encoder: it returns the
    hidden states after the requested layers reshaped to 3D feature maps on the token grid, as
    UNETR (Hatamizadeh et al., https://arxiv.org/abs/2103.10504) takes z3, z6, z9 and z12.

    The MONAI ViT is kept whole as the submodule ``vit`` (so its state-dict keys, ``vit.*``, are those
    of MONAI's ViT/UNETR checkpoints); this module only writes the forward around its
    ``patch_embedding.patch_embeddings`` (conv), ``patch_embedding.position_embeddings``, ``blocks``
    and ``norm``. Inputs of any size divisible by the patch size are accepted: when the token grid
    differs from the one of ``img_size``, the learned position embeddings are resampled trilinearly
    to it (as ViTs are fine-tuned at new resolutions).

    The ``i``-th returned map passes through the identity module ``hidden_states.i``, so a forward hook there
    captures it (feature distillation from the ViT's own states).

    ``out_layers`` counts transformer blocks from 1: layer ``l`` is the output of block ``l`` (as in
    the UNETR paper; MONAI's UNETR code takes ``hidden_states_out[3]``, i.e. block 4). The last
    output layer must be the last block, and its state goes through the ViT's final LayerNorm (as
    UNETR's deepest feature does); earlier ones are taken raw.

    Example::

        >>> enc = ViTEncoder3d(img_size=64, patch_size=16, hidden_size=48, mlp_dim=96, num_layers=4,
        ...                    num_heads=4, out_layers=(1, 2, 3, 4))
        >>> [f.shape for f in enc(torch.zeros(2, 4, 96, 64, 32))]  # 4 x (2, 48, 6, 4, 2)
    """

    def __init__(
        self,
        in_channels: int = len(MODALITIES),
        img_size: Sequence[int] | int = (96, 96, 96),
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        out_layers: Sequence[int] = (3, 6, 9, 12),
        dropout_rate: float = 0.0,
        pos_embed_type: str = "learnable",
        qkv_bias: bool = False,
    ) -> None:
        """
        Args:
            in_channels: number of input channels. Defaults to ``len(MODALITIES)`` (4).
            img_size: the training patch size ``(H, W, D)``; it sets the grid of the learned position
                embeddings (other input sizes are handled by resampling them). Defaults to 96^3.
            patch_size: ViT patch size (int or one per dimension); ``img_size`` must be divisible by it.
                Defaults to 16.
            hidden_size: token dimension. Defaults to 768 (ViT-B).
            mlp_dim: hidden dimension of the transformer MLPs. Defaults to 3072.
            num_layers: number of transformer blocks. Defaults to 12.
            num_heads: number of attention heads (must divide ``hidden_size``). Defaults to 12.
            out_layers: strictly increasing 1-based block indices whose outputs are returned; the last
                must be ``num_layers`` (otherwise later blocks would be dead weights). Defaults to
                ``(3, 6, 9, 12)`` (UNETR).
            dropout_rate: dropout of the embeddings, attention and MLPs. Defaults to 0.0.
            pos_embed_type: MONAI position embedding type, ``"learnable"``, ``"sincos"`` or ``"none"``.
                Defaults to ``"learnable"``.
            qkv_bias: use a bias in the query/key/value projection. Defaults to False (MONAI's default).

        Raises:
            ValueError: if ``img_size`` is not divisible by ``patch_size`` or ``out_layers`` is invalid.
        """
        super().__init__()
        img = ensure_tuple_rep(img_size, 3)
        patch = ensure_tuple_rep(patch_size, 3)
        if any(i % p != 0 for i, p in zip(img, patch, strict=True)):
            raise ValueError(f"img_size {tuple(img)} must be divisible by patch_size {tuple(patch)}")
        layers = [int(layer) for layer in out_layers]
        if (
            not layers
            or any(b <= a for a, b in itertools.pairwise(layers))
            or layers[0] < 1
            or layers[-1] != num_layers
        ):
            raise ValueError(
                f"out_layers must be strictly increasing 1-based block indices ending with num_layers={num_layers}, "
                f"got {tuple(out_layers)}"
            )
        self.vit = ViT(
            in_channels=in_channels,
            img_size=img,
            patch_size=patch,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type=pos_embed_type,
            classification=False,
            dropout_rate=dropout_rate,
            spatial_dims=3,
            qkv_bias=qkv_bias,
        )
        # MONAI's TransformerBlock always builds a ``norm_cross_attn`` LayerNorm that is unused without
        # cross-attention; freezing it keeps it out of the optimizer and out of DDP's gradient reduction
        # (DDP fails on parameters that require grad but get none) while keeping MONAI's state-dict keys.
        for block in self.vit.blocks:
            block.norm_cross_attn.requires_grad_(False)
        # identity taps, one per output layer: a forward hook on ``hidden_states.i`` captures the i-th 3D token map
        self.hidden_states = nn.ModuleList(nn.Identity() for _ in layers)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.out_layers = layers
        self.patch_size = [int(p) for p in patch]
        self.grid_size = [int(i // p) for i, p in zip(img, patch, strict=True)]

    def token_grid(self, spatial_size: list[int]) -> list[int]:
        """The token grid ``(H/p, W/p, D/p)`` of an input of spatial size ``(H, W, D)``.

        Raises:
            ValueError: if the size is not 3D or not divisible by the patch size.
        """
        if len(spatial_size) != len(self.patch_size):
            raise ValueError(f"ViTEncoder3d expects a (B, C, H, W, D) input, got spatial size {spatial_size}")
        grid: list[int] = []
        for s, p in zip(spatial_size, self.patch_size):  # noqa: B905 (TorchScript: no zip(strict=))
            if s % p != 0:
                raise ValueError(
                    f"ViTEncoder3d: input spatial size {spatial_size} is not divisible by "
                    f"the patch size {self.patch_size}"
                )
            grid.append(s // p)
        return grid

    def position_embeddings(self, grid: list[int]) -> torch.Tensor:
        """Position embeddings ``(1, prod(grid), hidden)`` for a token grid, trilinearly resampled if needed."""
        pos = self.vit.patch_embedding.position_embeddings
        if grid == self.grid_size:
            return pos
        volume = pos.transpose(1, 2).reshape([1, self.hidden_size] + self.grid_size)  # noqa: RUF005 (TorchScript)
        volume = F.interpolate(volume, size=grid, mode="trilinear", align_corners=False)
        return volume.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            x: input volume ``(B, in_channels, H, W, D)``, H, W and D divisible by the patch size ``p``.

        Returns:
            one map per entry of ``out_layers``, in that order: ``(B, hidden_size, H/p, W/p, D/p)``.
        """
        grid = self.token_grid(list(x.shape[2:]))
        tokens = self.vit.patch_embedding.patch_embeddings(x)  # (B, hidden, H/p, W/p, D/p)
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, hidden), N = prod(grid)
        tokens = self.vit.patch_embedding.dropout(tokens + self.position_embeddings(grid))
        outputs: list[torch.Tensor] = []
        for i, block in enumerate(self.vit.blocks):
            tokens = block(tokens)
            if i + 1 in self.out_layers:
                hidden = self.vit.norm(tokens) if i + 1 == self.num_layers else tokens
                outputs.append(hidden.transpose(1, 2).reshape([x.shape[0], self.hidden_size] + grid))  # noqa: RUF005
        maps: list[torch.Tensor] = []
        for i, tap in enumerate(self.hidden_states):
            maps.append(tap(outputs[i]))
        return maps
