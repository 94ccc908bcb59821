"""The distillation students, and where their features are tapped.

Any MONAI network can be the student (the distillation taps features by module path); this module holds
the two that the ``distilled_student`` bundle names:

- :func:`build_student` (the default, ``"network_def": {"_target_":
  "kd_components.networks.student.build_student"}``): :class:`StridedSegResNet`, a student built for CPUs.
  A stride-2 stem puts the whole MONAI SegResNet body at half resolution (8 filters), with batch
  normalisation (in evaluation a per-channel scale and shift, which OpenVINO fuses into the convolutions),
  and a light head brings the
  logits back to full resolution. ``docs/students.md`` has the measurements that chose it.
- :func:`build_segresnet_student`: the earlier default, a MONAI SegResNet with 8 filters and group
  normalisation at full resolution (``"_target_": "kd_components.networks.student.build_segresnet_student"``).

:func:`feature_pairs` matches the teacher's fused features to a student's SegResNet levels by scale, so
the feature taps follow whichever student the config builds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.segresnet_block import get_conv_layer
from monai.networks.nets import SegResNet

from kd_components.constants import MODALITIES, REGIONS
from kd_components.networks.configs import teacher_config
from kd_components.networks.hybrid import FEATURE_SOURCES, FUSED_FEATURE_SCALES
from kd_components.networks.init import init_output_prior
from kd_components.networks.utils import unwrap_module

__all__ = [
    "StridedSegResNet",
    "build_segresnet_student",
    "build_student",
    "feature_pairs",
    "student_feature_modules",
]


class StridedSegResNet(SegResNet):
    """
    A MONAI :class:`~monai.networks.nets.SegResNet` whose first convolution has stride 2, with a light head back
    to full resolution: ``(B, C_in, H, W, D)`` -> ``(B, C_out, H, W, D)`` logits.

    Why: at full resolution a compact SegResNet has few channels, so its convolutions there are bound by memory
    traffic, not arithmetic, and they cost as much as the rest of the network. Here the stem
    (``(B, C_in, H, W, D)`` -> ``(B, F, H/2, W/2, D/2)``, a 3^3 convolution with stride 2) replaces SegResNet's
    ``convInit``; every residual block then runs at 1/2 ... 1/16 resolution (``down_layers.k`` outputs
    ``F * 2**k`` channels at ``1/2**(k+1)``), the decoder ends at 1/2 with ``C_out`` logits, and the head is
    a trilinear upsampling of those logits plus a 3^3 convolution of the input image (``refine``, zero at
    initialisation, so training starts from the upsampled logits and learns a full-resolution correction from
    the intensities at the boundaries). H, W, D must be divisible by ``2 * 2 ** (len(blocks_down) - 1)``.

    Args:
        in_channels: input channels. Defaults to 4 (``[t1c, t1n, t2w, t2f]``).
        out_channels: output logits. Defaults to 3 (``[TC, WT, ET]``).
        init_filters: channels after the stem (doubled at each further downsampling). Defaults to 16.
        blocks_down: residual blocks per encoder level. Defaults to ``(1, 2, 2, 4)``.
        blocks_up: residual blocks per decoder level. Defaults to ``(1, 1, 1)``.
        norm: MONAI normalisation of the residual blocks. Defaults to ``"BATCH"``: in evaluation mode batch
            normalisation is a scale and shift per channel, which OpenVINO fuses into the convolutions; group or
            instance normalisation need statistics of every activation map at run time.
        dropout_prob: dropout after the stem, or ``None``. Defaults to None.
    """

    #: TorchScript (``ckpt_export``) compiles properties; this one is for Python callers only.
    __jit_unused_properties__ = ["size_divisor"]

    def __init__(
        self,
        in_channels: int = len(MODALITIES),
        out_channels: int = len(REGIONS),
        init_filters: int = 16,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        norm: tuple | str = "BATCH",
        dropout_prob: float | None = None,
    ) -> None:
        super().__init__(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            init_filters=init_filters,
            blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up),
            norm=norm,
            dropout_prob=dropout_prob,
        )
        self.convInit = get_conv_layer(3, in_channels, init_filters, stride=2)
        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.refine = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)

    @property
    def size_divisor(self) -> int:
        """What H, W, D must be divisible by: the stem's 2 times SegResNet's ``2 ** (len(blocks_down) - 1)``."""
        return 2 ** len(self.blocks_down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W, D)`` -> ``(B, C_out, H, W, D)`` logits (SegResNet's encode/decode at 1/2, upsampled,
        plus the refinement of the input; written out rather than ``super().forward`` for TorchScript)."""
        half, skips = self.encode(x)
        skips.reverse()
        return self.upsample(self.decode(half, skips)) + self.refine(x)


def build_student(
    in_channels: int = len(MODALITIES),
    out_channels: int = len(REGIONS),
    init_filters: int = 8,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    norm: tuple | str = "BATCH",
    dropout_prob: float | None = None,
    output_prior: float | None = 0.1,
) -> StridedSegResNet:
    """
    The default student, :class:`StridedSegResNet` (``(B, 4, H, W, D)`` -> ``(B, 3, H, W, D)`` logits; H, W, D
    divisible by 16). Its size and cost per patch: ``docs/networks.md``; the bundle's ``metadata.json`` states its
    parameter count (checked by ``tests/test_bundle_metadata.py``).

    Args:
        init_filters: channels after the stem. Defaults to 8 (:class:`StridedSegResNet`'s own default is 16).
        in_channels, out_channels, blocks_down, blocks_up, norm, dropout_prob: see :class:`StridedSegResNet`.
        output_prior: initial foreground probability of each output channel (bias of ``conv_final``, see
            :func:`~kd_components.networks.init.init_output_prior`), or ``None`` for PyTorch's default bias.
            Defaults to 0.1.
    """
    network = StridedSegResNet(in_channels, out_channels, init_filters, blocks_down, blocks_up, norm, dropout_prob)
    if output_prior is not None:
        init_output_prior(network.conv_final, output_prior)
    return network


def build_segresnet_student(
    in_channels: int = len(MODALITIES),
    out_channels: int = len(REGIONS),
    init_filters: int = 8,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    norm: tuple | str = ("GROUP", {"num_groups": 8}),
    dropout_prob: float | None = None,
    output_prior: float | None = 0.1,
) -> SegResNet:
    """
    A MONAI :class:`~monai.networks.nets.SegResNet` at full resolution for ``(B, 4, H, W, D)`` -> ``(B, 3, H, W,
    D)`` logits: the earlier default student (``init_filters=8``) and, with
    ``init_filters=16``, MONAI's model-zoo BraTS SegResNet (sizes: ``docs/networks.md``). H, W, D must be divisible by
    ``2 ** (len(blocks_down) - 1)`` (8 by default).

    Args:
        in_channels: input channels ``[t1c, t1n, t2w, t2f]``. Defaults to 4.
        out_channels: output logits ``[TC, WT, ET]``. Defaults to 3.
        init_filters: channels of the first level (doubled at each downsampling). Defaults to 8.
        blocks_down: residual blocks per encoder level. Defaults to ``(1, 2, 2, 4)``.
        blocks_up: residual blocks per decoder level. Defaults to ``(1, 1, 1)``.
        norm: MONAI normalisation (group norm with 8 groups by default, as in SegResNet; ``init_filters``
            must then be a multiple of 8). Defaults to ``("GROUP", {"num_groups": 8})``.
        dropout_prob: dropout after the first convolution, or ``None``. Defaults to None.
        output_prior: as in :func:`build_student`. Defaults to 0.1.
    """
    network = SegResNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
        norm=norm,
        dropout_prob=dropout_prob,
    )
    if output_prior is not None:
        init_output_prior(network.conv_final, output_prior)
    return network


def student_feature_modules(network: nn.Module) -> tuple[str, ...]:
    """
    Module paths in a SegResNet student matched to the teacher's fused scales (1/2, 1/4, 1/8, 1/16), finest first.

    ``down_layers.k`` of a SegResNet is at ``1/2**k`` (``1/2**(k+1)`` in a :class:`StridedSegResNet`); each
    teacher scale takes the level at that scale, or the coarsest level where the student has none as coarse (the
    feature adapter resizes it: a trilinear halving with ``align_corners=False`` is a 2x2x2 mean). The full-size
    SegResNet student thus gives ``down_layers.1, .2, .3, .3`` and the strided one ``down_layers.0, .1, .2, .3``.
    A wrapper (DDP, DataParallel) is looked through: the paths are those of the bare network.

    Raises:
        TypeError: for a network that is not a SegResNet: give ``feature_pairs`` explicitly in the config.
    """
    net = unwrap_module(network)
    if not isinstance(net, SegResNet):
        raise TypeError(
            f"cannot tell where to tap the features of a {type(net).__name__}: set feature_pairs in the config "
            "to [[teacher_module, student_module], ...], one pair per teacher scale"
        )
    return tuple(_student_level(net, scale) for scale in FUSED_FEATURE_SCALES)


def _student_level(net: SegResNet, scale: int) -> str:
    """The path of ``net``'s encoder level at 1/``scale``, or of its coarsest level where it has none as coarse."""
    stem = 1 if isinstance(net, StridedSegResNet) else 0
    level = min(max(scale.bit_length() - 1 - stem, 0), len(net.down_layers) - 1)
    return f"down_layers.{level}"


def feature_pairs(
    network: nn.Module, sources: Sequence[str] = ("fused",), teacher: str = "default"
) -> list[tuple[str, str]]:
    """
    ``(teacher_path, student_path)`` pairs for :class:`~kd_components.losses.FeatureKDLoss`, source by source,
    each finest first.

    - ``"fused"``: the teacher's fused maps (``fusion.fuse.i``), each with the student level at its scale
      (:func:`student_feature_modules`).
    - ``"cnn"``: the teacher's VGG stages at the same scales (``vgg.stages.1`` .. ``.4``), the same student levels.
    - ``"vit"``: the teacher's ViT hidden states (``vit.hidden_states.0`` .. ``.3``): all four live on the token
      grid at 1/(the teacher's ViT patch size), so each is paired with the student level at that scale (the
      same student map learns the four depths through four adapters; resampling a fine student map down to the
      token grid would alias).

    Args:
        network: the student (a SegResNet; a parallel wrapper is looked through).
        sources: the teacher's feature sources, keys of :data:`~kd_components.networks.hybrid.FEATURE_SOURCES`.
            Defaults to the fused maps alone.
        teacher: the name of the teacher's configuration (:data:`~kd_components.networks.TEACHER_CONFIGS`), for
            its ViT patch size. Defaults to ``"default"``.

    Raises:
        ValueError: for an unknown or repeated source, or none.
        TypeError: for a student that is not a SegResNet (see :func:`student_feature_modules`).
    """
    sources = list(sources)
    unknown = [s for s in sources if s not in FEATURE_SOURCES]
    if not sources or unknown or len(set(sources)) != len(sources):
        raise ValueError(f"sources must be distinct names among {sorted(FEATURE_SOURCES)}, got {sources}")
    per_scale = student_feature_modules(network)
    token_level = _student_level(unwrap_module(network), int(teacher_config(teacher)["vit_patch_size"]))
    pairs: list[tuple[str, str]] = []
    for source in sources:
        students = [token_level] * len(per_scale) if source == "vit" else per_scale
        pairs += list(zip(FEATURE_SOURCES[source], students, strict=True))
    return pairs
