"""Restartable pipeline stages: each one runs once, is skipped when its result is current, resumes when interrupted.

A stage is a command (a subprocess, e.g. ``python -m monai.bundle run ...``) or a Python callable
that produces known output files. The runner keeps one small JSON stamp per stage in
``state_dir``:

- a stage whose stamp says ``done`` with the same fingerprint (its command and the runs of the
  stages it depends on) and whose outputs all exist is **reused**;
- a training stage whose stamp says ``running`` with the same fingerprint was interrupted: it is
  restarted with ``--resume_from latest`` when its checkpoint folder holds a latest checkpoint,
  so it continues after the last completed epoch instead of from zero;
- anything else is a **fresh** start: the stage's own folders are deleted first, so nothing of
  an earlier, different run is mixed into the new result.

The fingerprint also covers the content of the stage's declared input files (the bundle configs),
so editing a config re-runs what depends on it. A stage that re-runs gets a new run id, which
changes the fingerprint of every stage that depends on it: a new teacher means a new student,
new predictions and a new report.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_components.checkpoints.resume import LATEST_PREFIX
from kd_components.io import save_json_atomic

__all__ = ["Stage", "StageError", "StageRunner", "brats_kd_command", "python_command"]


class StageError(RuntimeError):
    """A stage failed; the message names the stage, what failed and how to continue."""


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline.

    Args:
        name: unique name (also the stamp file name).
        command: argv of a subprocess to run (``sys.executable`` is a good first element), or ``None``.
        action: a Python callable to run instead of ``command``.
        outputs: files that exist after a successful run (checked before the stage is marked done).
        owned_dirs: folders that belong to this stage alone; deleted before a fresh start.
        depends_on: names of stages whose results this one reads.
        resume_dir: checkpoint folder of a training stage; an interrupted run resumes from its
            ``latest*.pt`` by appending ``--resume_from latest`` to ``command``.
        description: one line shown when the stage starts.
        params: values besides the command that determine the result (fingerprinted).
        inputs: files whose content determines the result besides the command (e.g. bundle configs);
            editing one makes the stage run again.
    """

    name: str
    command: Sequence[str] | None = None
    action: Callable[[], Any] | None = None
    outputs: Sequence[Path] = ()
    owned_dirs: Sequence[Path] = ()
    depends_on: Sequence[str] = ()
    resume_dir: Path | None = None
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    inputs: Sequence[Path] = ()

    def __post_init__(self) -> None:
        if (self.command is None) == (self.action is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of command and action")


class StageRunner:
    """Run stages in order, reusing, resuming or replacing their results (see the module docstring).

    Args:
        state_dir: folder of the per-stage stamps.
        fresh: ignore every stamp and start each stage from scratch.
        log: where progress lines go.

    After :meth:`run`, ``timings`` holds the seconds each stage took in this process (0 when reused)
    and ``recorded`` the seconds it took when it ran, from its stamp if it was reused.
    """

    def __init__(self, state_dir: str | Path, fresh: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.fresh = fresh
        self.log = log or (lambda line: print(line, flush=True))
        self.timings: dict[str, float] = {}
        self.recorded: dict[str, float] = {}
        # actions run in this process, one at a time (see run_all)
        self._action_lock = threading.Lock()

    def stamp_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def read_stamp(self, name: str) -> dict[str, Any] | None:
        path = self.stamp_path(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a damaged stamp means "unknown state": start that stage afresh
            return None

    def fingerprint(self, stage: Stage) -> str:
        """Hash of what determines the stage's result: its command or params, and its inputs' run ids."""
        upstream = []
        for dep in stage.depends_on:
            stamp = self.read_stamp(dep)
            if stamp is None or stamp.get("status") != "done":
                raise StageError(f"stage {stage.name!r} needs stage {dep!r}, which has not completed")
            upstream.append(stamp["run_id"])
        what = {
            "command": list(stage.command) if stage.command is not None else None,
            "action": getattr(stage.action, "__qualname__", None),
            "params": stage.params,
            "upstream": upstream,
            "inputs": {str(p): _file_digest(Path(p)) for p in stage.inputs},
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run(self, stage: Stage) -> str:
        """Run ``stage`` if needed; return what happened: ``"reused"``, ``"resumed"`` or ``"ran"``."""
        fingerprint = self.fingerprint(stage)
        stamp = None if self.fresh else self.read_stamp(stage.name)
        same = stamp is not None and stamp.get("fingerprint") == fingerprint
        if same and stamp["status"] == "done" and all(Path(p).exists() for p in stage.outputs):
            self.log(f"[{stage.name}] up to date, reusing {self._first_output(stage)}")
            self.timings[stage.name] = 0.0
            self.recorded[stage.name] = float(stamp.get("seconds", 0.0))
            return "reused"
        resume = same and stamp["status"] == "running" and self._has_latest_checkpoint(stage)
        command = list(stage.command) if stage.command is not None else None
        if resume and command is not None:
            command += ["--resume_from", "latest"]
            self.log(f"[{stage.name}] resuming an interrupted run from its latest checkpoint in {stage.resume_dir}")
        else:
            resume = False
            for folder in stage.owned_dirs:
                if Path(folder).exists():
                    shutil.rmtree(folder)
            self.log(f"[{stage.name}] {stage.description or 'running'}")
        save_json_atomic(
            {"status": "running", "fingerprint": fingerprint, "started": time.time()}, self.stamp_path(stage.name)
        )
        start = time.perf_counter()
        if command is not None:
            returncode = subprocess.call(command)
            if returncode != 0:
                raise StageError(
                    f"stage {stage.name!r} failed with exit status {returncode}; command: {_shell(command)}\n"
                    "Fix the cause and run the same command again: finished stages are reused and an "
                    "interrupted training resumes from its latest checkpoint."
                )
        else:
            with self._action_lock:
                stage.action()
        missing = [str(p) for p in stage.outputs if not Path(p).exists()]
        if missing:
            raise StageError(f"stage {stage.name!r} finished but did not write {missing}")
        seconds = time.perf_counter() - start
        self.timings[stage.name] = self.recorded[stage.name] = seconds
        save_json_atomic(
            {"status": "done", "fingerprint": fingerprint, "run_id": uuid.uuid4().hex, "seconds": round(seconds, 1)},
            self.stamp_path(stage.name),
        )
        self.log(f"[{stage.name}] done in {_duration(seconds)}")
        return "resumed" if resume else "ran"

    def run_all(self, stages: Sequence[Stage], jobs: int = 1) -> None:
        """Run ``stages`` with up to ``jobs`` at a time; a stage starts once every stage of ``stages`` it depends on
        has finished (stages are started in list order among those ready).

        Commands (subprocesses) run side by side; actions (Python callables, in this process's threads) one at a
        time, whatever ``jobs``: what they call need not be thread-safe (two ``torch.onnx.export`` calls at once
        corrupt torch's process-wide dispatch-mode stack).

        With ``jobs`` 1 this is :meth:`run` on each stage in order. When a stage fails, no new stage is started,
        the running ones finish (their results are kept, as after an interruption) and the first failure is raised.
        """
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        names = {stage.name for stage in stages}
        pending, done = list(stages), set()
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            running: dict[Future[str], Stage] = {}
            while pending or running:
                if failure is None:
                    ready = [s for s in pending if all(d in done or d not in names for d in s.depends_on)]
                    for stage in ready[: jobs - len(running)]:
                        pending.remove(stage)
                        running[pool.submit(self.run, stage)] = stage
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    stage = running.pop(future)
                    try:
                        future.result()
                        done.add(stage.name)
                    except BaseException as error:  # first failure wins; the others are already logged
                        failure = failure or error
        if failure is not None:
            raise failure
        if pending:  # only possible with a dependency cycle
            raise StageError(f"stages {[s.name for s in pending]} wait on each other: their dependencies form a cycle")

    @staticmethod
    def _has_latest_checkpoint(stage: Stage) -> bool:
        return stage.resume_dir is not None and any(Path(stage.resume_dir).glob(f"{LATEST_PREFIX}*.pt"))

    @staticmethod
    def _first_output(stage: Stage) -> str:
        return str(stage.outputs[0]) if stage.outputs else "its outputs"


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's content ("missing" when it does not exist)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return "missing"


def _shell(command: Sequence[str]) -> str:
    """A command line a person can copy into a POSIX shell."""
    return shlex.join(command)


def format_minutes(seconds: float) -> str:
    """``"12 min 05 s"``: a stage or run time for logs and reports."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"


def _duration(seconds: float) -> str:
    return format_minutes(seconds) if seconds >= 59.5 else f"{seconds:.1f} s"


def python_command(*args: str) -> list[str]:
    """argv that runs ``python <args>`` with the interpreter running this process."""
    return [sys.executable, *args]


def brats_kd_command(verb: str, *args: str) -> list[str]:
    """argv that runs ``brats-kd VERB <args>`` (the installed command) with the interpreter running this process."""
    return python_command("-m", "kd_components.cli", verb, *args)
