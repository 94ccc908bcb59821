"""The benchmark's settings, its split of the cases, each row's schedule and seeds, and the cost model of a run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_lab.benchmark.rows import BRANCH_ROWS, ROWS, Row, selected_rows

__all__ = [
    "GUIDANCE_SECONDS",
    "SELECTION_RULES",
    "BenchmarkSettings",
    "cli_overrides",
    "estimate_seconds",
    "held_out_datalist",
    "row_schedule",
    "row_seeds",
    "run_dir",
    "schedule",
    "split_cases",
    "teacher_seed_for",
]

#: Model-selection rules: ``last`` (validate once, after the last epoch: the final weights) or ``best`` (the
#: checkpoint of the best validation mean Dice among ``validations`` evenly spaced validations).
SELECTION_RULES: tuple[str, ...] = ("last", "best")


@dataclass(frozen=True)
class BenchmarkSettings:
    """Data split, budgets, seeds and statistics of the benchmark (defaults: the regime of the module docstring)."""

    output_dir: Path = Path("outputs/benchmark")
    data_seed: int = 100
    labelled: int = 6
    validation: int = 2
    unlabelled: int = 12
    test: int = 24
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    teacher_seeds: tuple[int, ...] = (0, 1)
    teacher_steps: int = 120
    student_steps: int = 36
    selection: str = "last"
    validations: int = 4
    batch_size: int = 2
    #: the default rows: all but the interleaved unlabelled scans, the student search's ``kd_*`` rows and the
    #: teacher-branch rows of :data:`BRANCH_ROWS`
    rows: tuple[str, ...] = tuple(
        r.key for r in ROWS if r.key != "soft_feature_unlabelled" and r.key[:3] != "kd_" and r.key not in BRANCH_ROWS
    )
    bootstrap_resamples: int = 10_000
    bootstrap_seed: int = 0
    #: healthy and unseen-seed phantoms, each, segmented by every run (0: no false-positive probe)
    probe_cases: int = 4
    timing_networks: tuple[str, ...] = ("default", "demo", "student", "segresnet16")
    timing_shape: tuple[int, int, int] = (240, 240, 155)
    timing_roi: int = 96
    timing_overlap: float = 0.25
    jobs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.rows) - {r.key for r in ROWS}
        if unknown:
            raise ValueError(f"unknown rows {sorted(unknown)}; known: {[r.key for r in ROWS]}")
        if min(self.labelled, self.validation, self.test) < 1 or self.unlabelled < 0:
            raise ValueError("labelled, validation and test need at least one case each")
        if not self.seeds or not self.teacher_seeds:
            raise ValueError("at least one seed and one teacher seed are needed")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.teacher_seeds)) != len(self.teacher_seeds):
            raise ValueError("seeds and teacher seeds must not repeat")
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"selection must be one of {SELECTION_RULES}, got {self.selection!r}")
        if self.validations < 1 or self.bootstrap_resamples < 1:
            raise ValueError("validations and bootstrap resamples must be at least 1")
        if self.jobs < 1:
            raise ValueError("jobs must be at least 1")
        if self.probe_cases < 0:
            raise ValueError(f"probe_cases must be at least 0, got {self.probe_cases}")

    @property
    def num_cases(self) -> int:
        return self.labelled + self.validation + self.unlabelled + self.test

    @property
    def validations_per_run(self) -> int:
        """Validations per training run: 1 (after the last epoch) for ``selection="last"``, else ``validations``."""
        return 1 if self.selection == "last" else self.validations


def split_cases(case_ids: Sequence[str], settings: BenchmarkSettings) -> dict[str, list[str]]:
    """Sorted case ids -> roles, by index: labelled, validation, unlabelled, test (in that order)."""
    ids = sorted(case_ids)
    if len(ids) < settings.num_cases:
        raise ValueError(f"the benchmark needs {settings.num_cases} cases, found {len(ids)}")
    bounds = [0]
    for n in (settings.labelled, settings.validation, settings.unlabelled, settings.test):
        bounds.append(bounds[-1] + n)
    names = ("labelled", "validation", "unlabelled", "test")
    return {name: ids[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}


def schedule(steps: int, batches_per_epoch: int, validations: int) -> tuple[int, int]:
    """(epochs, val_interval) for about ``steps`` optimizer steps with ``validations`` evenly spaced validations.

    The epochs are rounded up to a multiple of the interval so that the last epoch is validated
    (the steps actually run are ``epochs * batches_per_epoch``; the results table gives them).
    """
    epochs = max(1, math.ceil(steps / batches_per_epoch))
    interval = max(1, epochs // validations)
    return interval * math.ceil(epochs / interval), interval


def _batches(cases: int, batch_size: int) -> int:
    return math.ceil(cases / batch_size)


def row_schedule(settings: BenchmarkSettings, row: Row) -> tuple[int, int, int]:
    """(epochs, val_interval, batches per epoch) of ``row``."""
    per_epoch = _batches(settings.labelled, settings.batch_size)
    if row.unlabelled == "interleave":  # paired: one unlabelled batch rides along with each labelled one
        per_epoch += _batches(settings.unlabelled, settings.batch_size)
    steps = settings.teacher_steps if row.kind == "teacher" else settings.student_steps
    return (*schedule(steps, per_epoch, settings.validations_per_run), per_epoch)


def row_seeds(settings: BenchmarkSettings, row: Row) -> tuple[int, ...]:
    """The seeds ``row`` is trained with: ``teacher_seeds`` for the teacher, ``seeds`` for the others."""
    return settings.teacher_seeds if row.kind == "teacher" else settings.seeds


def teacher_seed_for(settings: BenchmarkSettings, seed: int) -> int:
    """The teacher a student of ``seed`` distils: the ``i``-th student seed gets teacher seed
    ``teacher_seeds[i % len(teacher_seeds)]`` (seeds 0-4 with teacher seeds 0, 1: students 0, 2, 4 learn
    from teacher 0, students 1, 3 from teacher 1), so every teacher teaches about as many students."""
    return settings.teacher_seeds[settings.seeds.index(seed) % len(settings.teacher_seeds)]


#: Cost model of :func:`estimate_seconds` on 2 CPU cores (see the module docstring for where the numbers
#: come from): one label-only student step, one case evaluated by the student (sliding window and metrics),
#: starting one bundle process, and generating one phantom case.
STEP_SECONDS = 0.4
CASE_SECONDS = 0.85
START_SECONDS = 10.0
PHANTOM_SECONDS = 1.0
#: Seconds for the frozen teacher to segment one unlabelled scan for teacher-guided sampling (once per teacher).
GUIDANCE_SECONDS = 4.0


def estimate_seconds(settings: BenchmarkSettings) -> dict[str, float]:
    """Predicted wall time of a fresh benchmark on 2 CPU cores, by part: ``phantoms``, ``training`` (optimizer
    steps, validations and process starts), ``testing`` (the test cases of every run) and ``total``.

    A model, not a measurement: each row's steps times its :attr:`Row.step_cost` times :data:`STEP_SECONDS`,
    each evaluated case times its :attr:`Row.case_cost` times :data:`CASE_SECONDS`, :data:`START_SECONDS` per
    bundle process; the probe's cases count as test cases, and :data:`GUIDANCE_SECONDS` per unlabelled scan and
    teacher when a teacher-guided row is run. The inference-cost measurements (``timing``, about 4 min) are not
    included.
    """
    training = testing = 0.0
    for row in selected_rows(settings):
        epochs, _, per_epoch = row_schedule(settings, row)
        runs = len(row_seeds(settings, row))
        case = row.case_cost * CASE_SECONDS
        training += runs * (
            START_SECONDS
            + epochs * per_epoch * row.step_cost * STEP_SECONDS
            + settings.validations_per_run * settings.validation * case
        )
        testing += runs * (START_SECONDS + (settings.test + 2 * settings.probe_cases) * case)
    guided = [
        r for r in ROWS if r.key in settings.rows and cli_overrides(r.overrides).get("unlabelled_sampling") == "teacher"
    ]
    # teacher-guided sampling: each teacher segments the unlabelled scans once
    training += len({r.teacher for r in guided}) * len(settings.teacher_seeds) * settings.unlabelled * GUIDANCE_SECONDS
    phantoms = settings.num_cases * PHANTOM_SECONDS
    return {"phantoms": phantoms, "training": training, "testing": testing, "total": phantoms + training + testing}


def cli_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Bundle command-line overrides (``--key value`` pairs, as :attr:`Row.overrides`) as a config dict; values
    that read as JSON (numbers, ``true``) are parsed, the others stay strings."""
    if len(args) % 2 or not all(a.startswith("--") for a in args[::2]):
        raise ValueError(f"overrides must be --key value pairs, got {list(args)}")
    out: dict[str, Any] = {}
    for key, value in zip(args[::2], args[1::2], strict=True):
        try:
            out[key[2:]] = json.loads(value)
        except json.JSONDecodeError:
            out[key[2:]] = value
    return out


def held_out_datalist(settings: BenchmarkSettings) -> Path:
    """The datalist of the held-out test cases (their fold 0)."""
    return settings.output_dir / "test_datalist.json"


def run_dir(settings: BenchmarkSettings, row: Row, seed: int) -> Path:
    """The folder of one training run: ``models/``, ``runs/``, ``test/`` and ``probe/``."""
    return settings.output_dir / "runs" / f"{row.key}_seed{seed}"
