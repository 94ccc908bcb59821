"""Distillation losses: soft targets, multi-scale features, their weighted sum, and feature hooks."""

from kd_components.losses.combined import DistillationLoss
from kd_components.losses.feature import (
    FEATURE_DISTANCES,
    FeatureAdapter,
    FeatureKDLoss,
    channel_wise_distillation,
    normalized_mse,
    standardize_channels,
)
from kd_components.losses.hooks import FeatureHooks, resolve_module
from kd_components.losses.soft_target import SOFT_TARGET_MODES, SoftTargetKDLoss

__all__ = [
    "FEATURE_DISTANCES",
    "SOFT_TARGET_MODES",
    "DistillationLoss",
    "FeatureAdapter",
    "FeatureHooks",
    "FeatureKDLoss",
    "SoftTargetKDLoss",
    "channel_wise_distillation",
    "normalized_mse",
    "resolve_module",
    "standardize_channels",
]
