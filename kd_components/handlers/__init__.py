"""Ignite handlers used by the bundle configs."""

from kd_components.handlers.region_volumes import RegionVolumeWriter, region_volumes_ml

__all__ = ["RegionVolumeWriter", "region_volumes_ml"]
