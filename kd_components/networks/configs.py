"""Named HybridTeacher configurations: the one home of the ``demo`` and ``default`` sizes.

The bundle configs and ``scripts/benchmark_networks.py`` take the network arguments from here:
in a bundle, ``"network_def": {"_target_": "kd_components.networks.build_teacher", "config": "demo"}``
(extra keys override single arguments, e.g. ``"freeze_vgg_stages": 2``); in Python,
``build_teacher("demo")`` or ``HybridTeacher(**teacher_config("demo"))``.
"""

from __future__ import annotations

import copy
from typing import Any

from kd_components.networks.hybrid import HybridTeacher
from kd_components.networks.vgg import VGG19_WIDTH

__all__ = ["TEACHER_CONFIGS", "build_teacher", "teacher_config"]

#: Keyword arguments of :class:`~kd_components.networks.HybridTeacher` by configuration name.
#: ``demo``: small enough to train on a CPU in minutes on 64^3-96^3 patches.
#: ``default``: VGG19 (width 64) + ViT-B/16 (hidden 768, 12 layers, 12 heads, MLP 3072), as in UNETR.
#: ``<size>_cnn`` and ``<size>_vit``: the branch ablations of each size (``branches="cnn"``: VGG only;
#: ``"vit"``: ViT only, UNETR-like), the same arguments otherwise.
_HYBRID_CONFIGS: dict[str, dict[str, Any]] = {
    "demo": {
        "img_size": (96, 96, 96),
        "vgg_width": 8,
        "vit_hidden_size": 96,
        "vit_mlp_dim": 384,
        "vit_num_layers": 4,
        "vit_num_heads": 4,
        "vit_patch_size": 16,
        "vit_out_layers": (1, 2, 3, 4),
        "fusion_channels": (8, 16, 32, 64),
        "decoder_channels": (8, 16, 32, 64),
    },
    "default": {
        "img_size": (96, 96, 96),
        "vgg_width": VGG19_WIDTH,
        "vit_hidden_size": 768,
        "vit_mlp_dim": 3072,
        "vit_num_layers": 12,
        "vit_num_heads": 12,
        "vit_patch_size": 16,
        "vit_out_layers": (3, 6, 9, 12),
        "fusion_channels": (32, 64, 128, 256),
        "decoder_channels": (16, 32, 64, 128),
    },
}
TEACHER_CONFIGS: dict[str, dict[str, Any]] = {
    **_HYBRID_CONFIGS,
    **{
        f"{size}_{branch}": {**arguments, "branches": branch}
        for size, arguments in _HYBRID_CONFIGS.items()
        for branch in ("cnn", "vit")
    },
}


def teacher_config(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of ``TEACHER_CONFIGS[name]`` updated with ``overrides``, ready for ``HybridTeacher(**config)``."""
    if name not in TEACHER_CONFIGS:
        raise KeyError(f"unknown teacher configuration {name!r}; expected one of {sorted(TEACHER_CONFIGS)}")
    return {**copy.deepcopy(TEACHER_CONFIGS[name]), **overrides}


def build_teacher(config: str = "demo", **overrides: Any) -> HybridTeacher:
    """A :class:`HybridTeacher` of the named configuration (``"demo"``, ``"default"``, ``"demo_cnn"`` ...), with
    ``overrides``."""
    return HybridTeacher(**teacher_config(config, **overrides))
