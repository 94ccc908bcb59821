"""The benchmark's settings, its split of the cases, each row's schedule and seeds, and the cost model of a run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_lab.benchmark.rows import DEFAULT_ROWS, ROWS, ROWS_BY_KEY, Row, selected_rows

__all__ = [
    "GUIDANCE_SECONDS",
    "REGIMES",
    "SELECTION_RULES",
    "BenchmarkSettings",
    "cli_overrides",
    "estimate_seconds",
    "held_out_datalist",
    "labelled_count",
    "row_schedule",
    "row_seeds",
    "run_dir",
    "run_name",
    "schedule",
    "split_cases",
    "student_cases",
    "teacher_seed_for",
    "training_datalist",
]

#: Model-selection rules: ``last`` (validate once, after the last epoch: the final weights) or ``best`` (the
#: checkpoint of the best validation mean Dice among ``validations`` evenly spaced validations).
SELECTION_RULES: tuple[str, ...] = ("last", "best")
#: The student regimes (see the package docstring): ``scarce`` (the students have the first ``labelled`` of the
#: teacher's labelled cases, and the unlabelled scans) and ``compression`` (the students have every labelled case
#: the teacher had, with the students' short budget).
REGIMES: tuple[str, ...] = ("scarce", "compression")


@dataclass(frozen=True)
class BenchmarkSettings:
    """Data split, budgets, seeds and statistics of the benchmark (defaults: the regime of the module docstring)."""

    output_dir: Path = Path("outputs/benchmark")
    data_seed: int = 100
    #: labelled training cases of the teacher: every label the data set has
    teacher_labelled: int = 48
    #: labelled training cases of a student in the ``scarce`` regime (the first of the teacher's)
    labelled: int = 6
    validation: int = 4
    unlabelled: int = 24
    test: int = 24
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    teacher_seeds: tuple[int, ...] = (0, 1)
    teacher_steps: int = 1200
    #: validations of a teacher's training, evenly spaced (its curve; ``model.pt`` is the best of them)
    teacher_validations: int = 6
    student_steps: int = 108
    regimes: tuple[str, ...] = REGIMES
    selection: str = "last"
    validations: int = 4
    batch_size: int = 2
    #: the default rows (:data:`~kd_lab.benchmark.rows.DEFAULT_ROWS`)
    rows: tuple[str, ...] = DEFAULT_ROWS
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
        if self.labelled > self.teacher_labelled:
            raise ValueError(
                f"the students' {self.labelled} labelled cases are the first of the teacher's, which has "
                f"{self.teacher_labelled}: teacher_labelled must be at least labelled"
            )
        if not self.regimes or set(self.regimes) - set(REGIMES) or len(set(self.regimes)) != len(self.regimes):
            raise ValueError(f"regimes must be one or more of {REGIMES}, each once, got {self.regimes}")
        if any(ROWS_BY_KEY[r].unlabelled for r in self.rows) and not self.unlabelled:
            raise ValueError("rows with unlabelled scans need --unlabelled of at least 1")
        if not self.seeds or not self.teacher_seeds:
            raise ValueError("at least one seed and one teacher seed are needed")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.teacher_seeds)) != len(self.teacher_seeds):
            raise ValueError("seeds and teacher seeds must not repeat")
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"selection must be one of {SELECTION_RULES}, got {self.selection!r}")
        if min(self.validations, self.teacher_validations, self.bootstrap_resamples) < 1:
            raise ValueError("validations, teacher validations and bootstrap resamples must be at least 1")
        if self.jobs < 1:
            raise ValueError("jobs must be at least 1")
        if self.probe_cases < 0:
            raise ValueError(f"probe_cases must be at least 0, got {self.probe_cases}")

    @property
    def num_cases(self) -> int:
        return self.teacher_labelled + self.validation + self.unlabelled + self.test

    @property
    def validations_per_run(self) -> int:
        """Validations per training run: 1 (after the last epoch) for ``selection="last"``, else ``validations``."""
        return 1 if self.selection == "last" else self.validations


def split_cases(case_ids: Sequence[str], settings: BenchmarkSettings) -> dict[str, list[str]]:
    """Sorted case ids -> roles, by index: ``teacher`` (the teacher's labelled training cases), ``validation``,
    ``unlabelled``, ``test`` (in that order); a student's labelled cases are :func:`student_cases` of these."""
    ids = sorted(case_ids)
    if len(ids) < settings.num_cases:
        raise ValueError(f"the benchmark needs {settings.num_cases} cases, found {len(ids)}")
    bounds = [0]
    for n in (settings.teacher_labelled, settings.validation, settings.unlabelled, settings.test):
        bounds.append(bounds[-1] + n)
    names = ("teacher", "validation", "unlabelled", "test")
    return {name: ids[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}


def student_cases(roles: dict[str, list[str]], settings: BenchmarkSettings, regime: str) -> list[str]:
    """The labelled training cases of a student in ``regime``: the first ``labelled`` of the teacher's (``scarce``)
    or all of them (``compression``)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; known: {REGIMES}")
    return roles["teacher"][: settings.labelled] if regime == "scarce" else list(roles["teacher"])


def labelled_count(settings: BenchmarkSettings, row: Row, regime: str | None) -> int:
    """Labelled training cases of ``row``: the teacher's for a teacher, else those of the student ``regime``."""
    if row.kind == "teacher":
        return settings.teacher_labelled
    if regime not in REGIMES:
        raise ValueError(f"a student row needs a regime of {REGIMES}, got {regime!r}")
    return settings.labelled if regime == "scarce" else settings.teacher_labelled


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


def row_schedule(settings: BenchmarkSettings, row: Row, regime: str | None = None) -> tuple[int, int, int]:
    """(epochs, val_interval, batches per epoch) of ``row`` (a student's in ``regime``)."""
    per_epoch = _batches(labelled_count(settings, row, regime), settings.batch_size)
    # interleaved: the unlabelled batches are steps of their own (paired: one rides along with each labelled one)
    if row.unlabelled == "interleave":
        per_epoch += _batches(settings.unlabelled, settings.batch_size)
    if row.kind == "teacher":
        return (*schedule(settings.teacher_steps, per_epoch, settings.teacher_validations), per_epoch)
    return (*schedule(settings.student_steps, per_epoch, settings.validations_per_run), per_epoch)


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
    bundle process; every student row once per regime; the probe's cases count as test cases, and
    :data:`GUIDANCE_SECONDS` per unlabelled scan and teacher when a teacher-guided row is run. The
    inference-cost measurements (``timing``, about 4 min) are not included.
    """
    training = testing = 0.0
    for row in selected_rows(settings):
        case = row.case_cost * CASE_SECONDS
        for regime in (None,) if row.kind == "teacher" else settings.regimes:
            epochs, interval, per_epoch = row_schedule(settings, row, regime)
            runs = len(row_seeds(settings, row))
            training += runs * (
                START_SECONDS
                + epochs * per_epoch * row.step_cost * STEP_SECONDS
                + epochs // interval * settings.validation * case
            )
            testing += runs * (START_SECONDS + (settings.test + 2 * settings.probe_cases) * case)
    guided = [
        r for r in ROWS if r.key in settings.rows and cli_overrides(r.overrides).get("unlabelled_sampling") == "teacher"
    ]
    # teacher-guided sampling: each teacher segments the unlabelled scans once (the cache is shared by the regimes)
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


def training_datalist(settings: BenchmarkSettings, regime: str | None) -> Path:
    """The training datalist of the teachers (``regime`` None) or of the students of ``regime``: labelled training
    cases as fold 1, the validation cases as fold 0, and in a regime's the unlabelled scans under ``testing``."""
    return settings.output_dir / ("teacher_datalist.json" if regime is None else f"datalist_{regime}.json")


def run_name(row: Row, seed: int, regime: str | None = None) -> str:
    """A run's name (its stages are ``<name>_train``, ``_test``, ``_probe``): ``teacher_seed0``, or
    ``scarce_labels_only_seed0`` for a student in a regime."""
    return f"{row.key}_seed{seed}" if row.kind == "teacher" else f"{regime}_{row.key}_seed{seed}"


def run_dir(settings: BenchmarkSettings, row: Row, seed: int, regime: str | None = None) -> Path:
    """The folder of one training run: ``models/``, ``runs/``, ``test/`` and ``probe/``; a teacher's is shared by the
    regimes (``runs/teacher_seed0``), a student's is in its regime's (``runs/scarce/labels_only_seed0``)."""
    if row.kind == "teacher":
        return settings.output_dir / "runs" / f"{row.key}_seed{seed}"
    if regime not in REGIMES:
        raise ValueError(f"a student run needs a regime of {REGIMES}, got {regime!r}")
    return settings.output_dir / "runs" / regime / f"{row.key}_seed{seed}"
