"""The summary of a batch inference run: which cases were written, which were skipped and why."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events

from kd_components.data.brats import CaseProblem
from kd_components.io import save_json_atomic
from kd_components.writers import case_id_of

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
    :func:`~kd_components.data.screening.screen_inference_cases`. After every case, and on completion, it
    writes ``<output_dir>/<filename>`` (atomically)::

        {"complete": bool, "written": [case ids], "skipped": [{"case_id", "file", "problem"}],
         "num_written": n, "num_skipped": k}

    so a run stopped by Ctrl-C or a crash still leaves the summary of the cases it finished
    (``"complete": false``), consistent with ``volumes.csv``/``volumes.json``, which are rewritten after every
    case too. A case whose network output was not finite (dropped by
    :class:`~kd_components.transforms.DropNonFinited`: its output dict has a ``problem`` and no ``pred``) is
    skipped, not written. On completion it logs one line per skipped problem. Call :meth:`exit_if_skipped`
    after the run (the bundle's ``run`` list does) so that a run that left cases out ends with exit status 1
    and says which and why, after the valid cases were all written.

    Args:
        output_dir: folder of the summary (the label maps' folder).
        skipped: problems of the cases left out before the run.
        filename: name of the summary file.
        image_key: key of the input image in each output dict (its metadata names the case).
        problem_key: key of the reason a case was dropped during the run.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        skipped: Sequence[CaseProblem] = (),
        filename: str = "inference_summary.json",
        image_key: str = "image",
        problem_key: str = "problem",
    ) -> None:
        self.path = Path(output_dir) / filename
        self.screened = list(skipped)
        self.skipped = list(skipped)
        self.image_key = image_key
        self.problem_key = problem_key
        self.written: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._complete)

    @property
    def skipped_ids(self) -> list[str]:
        """Ids of the cases left out, in input order, each once (a case may have several problems)."""
        return list(dict.fromkeys(p.case_id for p in self.skipped))

    def _reset(self, engine: Engine) -> None:
        self.written = []
        self.skipped = list(self.screened)

    def _record(self, engine: Engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            meta = getattr(item.get(self.image_key), "meta", {}) if isinstance(item, dict) else {}
            case_id = case_id_of(meta) or f"case_{len(self.written) + len(self.skipped)}"
            problem = item.get(self.problem_key) if isinstance(item, dict) else None
            if problem:
                self.skipped.append(CaseProblem(case_id, None, str(problem)))
                logger.error("skipped %s: %s", case_id, problem)
            else:
                self.written.append(case_id)
        self.write(complete=False)

    def _complete(self, engine: Engine) -> None:
        self.write(complete=True)
        for problem in self.screened:  # the cases dropped during the run were logged as they happened
            logger.error("skipped %s", problem)

    def write(self, engine: Engine | None = None, complete: bool = True) -> None:
        """Write the summary file (``complete``: the run went through every case)."""
        save_json_atomic(
            {
                "complete": complete,
                "num_written": len(self.written),
                "num_skipped": len(self.skipped_ids),
                "written": self.written,
                "skipped": [{"case_id": p.case_id, "file": p.file, "problem": p.problem} for p in self.skipped],
            },
            self.path,
        )

    def exit_if_skipped(self) -> None:
        """Raise :class:`SkippedCasesExit` (exit status 1) when cases were skipped; do nothing otherwise."""
        if not self.skipped:
            return
        listing = "\n  ".join(str(p) for p in self.skipped)
        raise SkippedCasesExit(
            f"inference wrote {len(self.written)} label map(s) and skipped {len(self.skipped_ids)} invalid case(s):\n"
            f"  {listing}\nsummary: {self.path}"
        )
