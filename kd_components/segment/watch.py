"""Watch folders for new cases: one process, its network loaded once, segments scans as they arrive.

A clinic that segments each scan on arrival would otherwise pay the command's start-up (Python, the imports, the
engine) for every scan. ``brats-kd segment IN -o OUT --watch`` keeps the process and its engine and polls ``IN``:

- a case is taken once all its files have kept their size and modification time over one polling interval (a
  folder still being copied is left until it is complete);
- a case whose label map is already in ``OUT`` is not segmented again (a restarted watch goes on where it
  stopped); a file there that no brats-kd run wrote is kept and reported once; a case that failed is tried again
  only when one of its files changes;
- a folder that is not a case, or a case with a missing or broken file, is reported once it has stayed so for
  one interval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from kd_components.data.brats import BratsCase
from kd_components.segment.inputs import foreign_output_problem, resolve_inputs

__all__ = ["FolderWatch"]

#: A case's files as seen at one poll: (path, size, modification time in ns) of each.
Signature = tuple[tuple[str, int, int], ...]


def _signature(case: BratsCase) -> Signature | None:
    """The case's files' sizes and modification times (``None`` when one cannot be read)."""
    paths = [*case.images.values(), *([case.label] if case.label is not None else [])]
    try:
        stats = [(str(p), p.stat()) for p in paths]
    except OSError:
        return None
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


class FolderWatch:
    """The cases of ``inputs`` (folders of case folders, or case folders) to segment into ``output``, poll by poll.

    Args:
        inputs: the folders watched.
        output: the output folder (a case with ``output/<case_id>.nii.gz`` is done).
    """

    def __init__(self, inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> None:
        self.inputs = [Path(p) for p in inputs]
        self.output = Path(output)
        self._seen: dict[str, Signature | None] = {}  # the signature of each case or problem at the last poll
        self._tried: dict[str, Signature | None] = {}  # cases handed out, with their signature then
        self._reported: set[str] = set()

    def poll(self) -> tuple[list[BratsCase], list[str]]:
        """The cases ready now (complete, unchanged since the last poll, not done, not tried as they are) and the
        problems new since the last poll (each reported once, after it stayed for one interval)."""
        found = resolve_inputs(self.inputs, output_dir=self.output)
        ready: list[BratsCase] = []
        problems: list[str] = []
        current: dict[str, Signature | None] = {}
        for case in found.cases:
            signature = _signature(case)
            key = case.case_id
            current[key] = signature
            stable = signature is not None and self._seen.get(key) == signature
            if not stable or self._tried.get(key) == signature:
                continue
            if case.problems:
                problems += [str(p) for p in case.problems if f"{key}:{p}" not in self._reported]
                self._reported.update(f"{key}:{p}" for p in case.problems)
                continue
            self._tried[key] = signature
            foreign = foreign_output_problem(self.output / f"{key}.nii.gz")
            if foreign is not None:  # a file of the user's where its label map would go: kept, and said once
                problems.append(f"{key}: {foreign}")
            elif not (self.output / f"{key}.nii.gz").exists():
                ready.append(case)
        for problem in found.problems:
            text = str(problem)
            current[text] = ()
            if self._seen.get(text) == () and text not in self._reported:
                self._reported.add(text)
                problems.append(text)
        self._seen = current
        return ready, problems
