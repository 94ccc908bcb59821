"""Distillation losses: soft targets, multi-scale features, and their weighted sum."""

from kd_components.losses.combined import DistillationLoss
from kd_components.losses.feature import (
    FEATURE_DISTANCES,
    FeatureAdapter,
    FeatureKDLoss,
    build_feature_kd_loss,
    channel_wise_distillation,
    normalized_mse,
    standardize_channels,
)
from kd_components.losses.soft_target import SOFT_TARGET_MODES, SoftTargetKDLoss

__all__ = [
    "FEATURE_DISTANCES",
    "SOFT_TARGET_MODES",
    "DistillationLoss",
    "FeatureAdapter",
    "FeatureKDLoss",
    "SoftTargetKDLoss",
    "build_feature_kd_loss",
    "channel_wise_distillation",
    "normalized_mse",
    "standardize_channels",
]
