"""The distillation step wired into Ignite the MONAI way."""

from kd_components.engines.trainer import SCALE_WEIGHT_SOURCES, DistillationTrainer

__all__ = ["SCALE_WEIGHT_SOURCES", "DistillationTrainer"]
