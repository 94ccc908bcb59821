"""Distillation losses: soft targets, multi-scale features, and the objective as named, weighted terms."""

from kd_components.losses.combined import LOSS_PREFIX, DistillationLoss, loss_key
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
from kd_components.losses.terms import (
    PSEUDO_LABEL_WEIGHTINGS,
    SCALE_WEIGHT_SOURCES,
    DistillationInputs,
    DistillationTerm,
    FeatureTerm,
    PseudoLabelTerm,
    SoftTargetTerm,
    TaskTerm,
)

__all__ = [
    "FEATURE_DISTANCES",
    "LOSS_PREFIX",
    "PSEUDO_LABEL_WEIGHTINGS",
    "SCALE_WEIGHT_SOURCES",
    "SOFT_TARGET_MODES",
    "DistillationInputs",
    "DistillationLoss",
    "DistillationTerm",
    "FeatureAdapter",
    "FeatureKDLoss",
    "FeatureTerm",
    "PseudoLabelTerm",
    "SoftTargetKDLoss",
    "SoftTargetTerm",
    "TaskTerm",
    "build_feature_kd_loss",
    "channel_wise_distillation",
    "loss_key",
    "normalized_mse",
    "standardize_channels",
]
