"""Ignite handlers used by the bundle configs (checkpoint handlers live in :mod:`kd_components.checkpoints`)."""

from kd_components.handlers.branches import BranchDiagnostics
from kd_components.handlers.finite_loss import FiniteLossGuard, NonFiniteLossError
from kd_components.handlers.inference_summary import InferenceSummary, SkippedCasesExit
from kd_components.handlers.lesion_metrics import CaseScoresWriter, LesionWiseMetrics
from kd_components.handlers.loss_logging import every_n_iterations, loss_components
from kd_components.handlers.main_process import MAIN_PROCESS_HANDLER_TYPES, main_process_handlers
from kd_components.handlers.metrics import HausdorffDistanceMM, voxel_spacing
from kd_components.handlers.progress import ProgressBar
from kd_components.handlers.region_volumes import RegionVolumeWriter, region_volumes_ml
from kd_components.handlers.validation import FinalValidationHandler

__all__ = [
    "MAIN_PROCESS_HANDLER_TYPES",
    "BranchDiagnostics",
    "CaseScoresWriter",
    "FinalValidationHandler",
    "FiniteLossGuard",
    "HausdorffDistanceMM",
    "InferenceSummary",
    "LesionWiseMetrics",
    "NonFiniteLossError",
    "ProgressBar",
    "RegionVolumeWriter",
    "SkippedCasesExit",
    "every_n_iterations",
    "loss_components",
    "main_process_handlers",
    "region_volumes_ml",
    "voxel_spacing",
]
