"""Checkpoints: atomic saving, checked loading, resuming a run, and loading the frozen teacher for distillation."""

from kd_components.checkpoints.handlers import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    CheckedCheckpointLoader,
    CheckpointLoadError,
)
from kd_components.checkpoints.resume import LATEST_PREFIX, ResumableCheckpoint, find_latest_checkpoint
from kd_components.checkpoints.state import state_dict_mismatches
from kd_components.checkpoints.teacher import TeacherCheckpointError, freeze, load_frozen_teacher

__all__ = [
    "LATEST_PREFIX",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "CheckedCheckpointLoader",
    "CheckpointLoadError",
    "ResumableCheckpoint",
    "TeacherCheckpointError",
    "find_latest_checkpoint",
    "freeze",
    "load_frozen_teacher",
    "state_dict_mismatches",
]
