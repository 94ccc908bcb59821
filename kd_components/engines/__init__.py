"""Distillation wired into Ignite the MONAI way: the trainer, the frozen teacher, batch mixing, logging."""

from kd_components.engines.features import build_feature_kd_loss, feature_channels
from kd_components.engines.mixing import (
    MIXING_MODES,
    NUM_LABELLED_KEY,
    MixedBatchLoader,
    concat_batches,
    load_unlabelled_split,
)
from kd_components.engines.outputs import LOSS_KEYS, every_n_iterations, loss_components
from kd_components.engines.teacher import TeacherCheckpointError, freeze, load_frozen_teacher, state_dict_mismatches
from kd_components.engines.trainer import SCALE_WEIGHT_SOURCES, DistillationTrainer, brain_mask_from_image

__all__ = [
    "LOSS_KEYS",
    "MIXING_MODES",
    "NUM_LABELLED_KEY",
    "SCALE_WEIGHT_SOURCES",
    "DistillationTrainer",
    "MixedBatchLoader",
    "TeacherCheckpointError",
    "brain_mask_from_image",
    "build_feature_kd_loss",
    "concat_batches",
    "every_n_iterations",
    "feature_channels",
    "freeze",
    "load_frozen_teacher",
    "load_unlabelled_split",
    "loss_components",
    "state_dict_mismatches",
]
