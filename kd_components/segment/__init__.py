"""Segmenting scans with a trained bundle: ``brats-kd segment`` and the engines behind it."""

from kd_components.segment.crop import brain_box, window_count, window_starts
from kd_components.segment.engines import ENGINES, PRECISIONS, EngineError, build_engine, cached_export, resolve_device
from kd_components.segment.inputs import SegmentInputs, resolve_inputs
from kd_components.segment.segmenter import CaseFailed, Segmentation, Segmenter, default_bundle

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "CaseFailed",
    "EngineError",
    "SegmentInputs",
    "Segmentation",
    "Segmenter",
    "brain_box",
    "build_engine",
    "cached_export",
    "default_bundle",
    "resolve_device",
    "resolve_inputs",
    "window_count",
    "window_starts",
]
