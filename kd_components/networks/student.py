"""The default distillation student: a compact MONAI SegResNet, and where its features are tapped.

Any MONAI network can be the student (the distillation taps features by module path); this module
holds the default one used by the ``distilled_student`` bundle:
``"network_def": {"_target_": "kd_components.networks.student.build_student", "init_filters": 8}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import SegResNet

from kd_components.constants import MODALITIES, REGIONS
from kd_components.networks.hybrid import FUSED_FEATURE_MODULES
from kd_components.networks.init import init_output_prior

__all__ = ["DEFAULT_FEATURE_PAIRS", "STUDENT_FEATURE_MODULES", "build_student"]

#: Student module paths matched to the teacher's fused features (1/2, 1/4, 1/8, 1/16): SegResNet's
#: ``down_layers.k`` outputs ``init_filters * 2**k`` channels at 1/2**k. The default student has three
#: downsamplings (1/8 at most), so the teacher's 1/16 map is matched by ``down_layers.3`` (1/8), which
#: the adapter resizes to 1/16 (a trilinear halving with ``align_corners=False`` is a 2x2x2 mean).
STUDENT_FEATURE_MODULES: tuple[str, ...] = ("down_layers.1", "down_layers.2", "down_layers.3", "down_layers.3")
#: ``(teacher_path, student_path)`` per scale, finest first, for :class:`~kd_components.losses.FeatureKDLoss`.
DEFAULT_FEATURE_PAIRS: tuple[tuple[str, str], ...] = tuple(
    zip(FUSED_FEATURE_MODULES, STUDENT_FEATURE_MODULES, strict=True)
)


def build_student(
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
    A MONAI :class:`~monai.networks.nets.SegResNet` for ``(B, 4, H, W, D)`` -> ``(B, 3, H, W, D)`` logits.

    With the defaults (``init_filters=8``, blocks 1-2-2-4) it has about 1.18 M parameters: about 150x
    fewer than the default :class:`~kd_components.networks.HybridTeacher` (178.7 M) and 4x fewer than the
    model-zoo SegResNet baseline (``init_filters=16``, 4.70 M). H, W, D must be divisible by
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
        output_prior: initial foreground probability of each output channel (bias of ``conv_final``, see
            :func:`~kd_components.networks.init.init_output_prior`), or ``None`` for PyTorch's default bias.
            Defaults to 0.1.
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
