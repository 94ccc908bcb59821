"""Ignite handlers used by the bundle configs."""

from kd_components.handlers.checkpoint import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    CheckedCheckpointLoader,
    CheckpointLoadError,
)
from kd_components.handlers.finite_loss import FiniteLossGuard, NonFiniteLossError
from kd_components.handlers.inference_summary import InferenceSummary, SkippedCasesExit
from kd_components.handlers.metrics import HausdorffDistanceMM, voxel_spacing
from kd_components.handlers.progress import ProgressBar
from kd_components.handlers.region_volumes import RegionVolumeWriter, region_volumes_ml
from kd_components.handlers.resume import ResumableCheckpoint, find_latest_checkpoint

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "CheckedCheckpointLoader",
    "CheckpointLoadError",
    "FiniteLossGuard",
    "HausdorffDistanceMM",
    "InferenceSummary",
    "NonFiniteLossError",
    "ProgressBar",
    "RegionVolumeWriter",
    "ResumableCheckpoint",
    "SkippedCasesExit",
    "find_latest_checkpoint",
    "region_volumes_ml",
    "voxel_spacing",
]
