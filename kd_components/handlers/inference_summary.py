"""The summary of a batch inference run: which cases were written, which were skipped and why."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events
from monai.utils import ImageMetaKey

from kd_components.data.brats import CaseProblem
from kd_components.io import save_json_atomic
from kd_components.writers import case_id_from_path

__all__ = ["InferenceSummary", "SkippedCasesExit"]

logger = logging.getLogger(__name__)


class SkippedCasesExit(SystemExit):
    """Ends a batch inference run that skipped cases with exit status 1 and a one-paragraph message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)  # a string code: Python prints it to stderr and exits with status 1
        self.message = message

    def __str__(self) -> str:
        return self.message


class InferenceSummary:
    """Ignite handler: record the cases an inference run wrote, and report the ones it skipped.

    Attach it to the inference evaluator with the problems found by
    :func:`~kd_components.data.screening.screen_inference_cases`. On completion it writes
    ``<output_dir>/<filename>`` (atomically)::

        {"written": [case ids], "skipped": [{"case_id", "file", "problem"}], "num_written": n, "num_skipped": k}

    and logs one line per skipped problem. Call :meth:`exit_if_skipped` after the run (the bundle's ``run``
    list does) so that a run that left cases out ends with exit status 1 and says which and why, after the
    valid cases were all written.

    Args:
        output_dir: folder of the summary (the label maps' folder).
        skipped: problems of the cases left out before the run.
        filename: name of the summary file.
        image_key: key of the input image in each output dict (its source file names the case).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        skipped: Sequence[CaseProblem] = (),
        filename: str = "inference_summary.json",
        image_key: str = "image",
    ) -> None:
        self.path = Path(output_dir) / filename
        self.skipped = list(skipped)
        self.image_key = image_key
        self.written: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self.write)

    @property
    def skipped_ids(self) -> list[str]:
        """Ids of the cases left out, in input order, each once (a case may have several problems)."""
        return list(dict.fromkeys(p.case_id for p in self.skipped))

    def _reset(self, engine: Engine) -> None:
        self.written = []

    def _record(self, engine: Engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            meta = getattr(item.get(self.image_key), "meta", {}) if isinstance(item, dict) else {}
            source = meta.get(ImageMetaKey.FILENAME_OR_OBJ, "")
            self.written.append(case_id_from_path(source) if source else f"case_{len(self.written)}")

    def write(self, engine: Engine | None = None) -> None:
        """Write the summary file and log the skipped cases."""
        save_json_atomic(
            {
                "num_written": len(self.written),
                "num_skipped": len(self.skipped_ids),
                "written": self.written,
                "skipped": [{"case_id": p.case_id, "file": p.file, "problem": p.problem} for p in self.skipped],
            },
            self.path,
        )
        for problem in self.skipped:
            logger.error("skipped %s", problem)

    def exit_if_skipped(self) -> None:
        """Raise :class:`SkippedCasesExit` (exit status 1) when cases were skipped; do nothing otherwise."""
        if not self.skipped:
            return
        listing = "\n  ".join(str(p) for p in self.skipped)
        raise SkippedCasesExit(
            f"inference wrote {len(self.written)} label map(s) and skipped {len(self.skipped_ids)} invalid case(s):\n"
            f"  {listing}\nsummary: {self.path}"
        )
