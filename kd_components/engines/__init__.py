"""The distillation step wired into Ignite the MONAI way."""

from kd_components.engines.trainer import DistillationTrainer

__all__ = ["DistillationTrainer"]
