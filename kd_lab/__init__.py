"""The main job as restartable stages (``demo``), its report (``report``) and the stage runner (``stages``)."""

from kd_lab.report import ModelRun, write_report
from kd_lab.stages import Stage, StageError, StageRunner

__all__ = ["ModelRun", "Stage", "StageError", "StageRunner", "write_report"]
