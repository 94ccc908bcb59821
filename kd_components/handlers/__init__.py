"""Ignite handlers used by the bundle configs."""

from kd_components.handlers.metrics import HausdorffDistanceMM, voxel_spacing
from kd_components.handlers.progress import ProgressBar
from kd_components.handlers.region_volumes import RegionVolumeWriter, region_volumes_ml
from kd_components.handlers.resume import ResumableCheckpoint, find_latest_checkpoint

__all__ = [
    "HausdorffDistanceMM",
    "ProgressBar",
    "RegionVolumeWriter",
    "ResumableCheckpoint",
    "find_latest_checkpoint",
    "region_volumes_ml",
    "voxel_spacing",
]
