"""The project's comparison: teacher vs distilled students vs label-only students, under a shortage of labels.

Regime (see ``docs/results.md`` for the measured table; every number below is a default of
:class:`BenchmarkSettings` and an option of ``scripts/benchmark_kd.py``):

- **Data.** One phantom data set (``data_seed``; case *i* depends only on the seed and *i*), split by
  case index into 6 labelled training cases, 2 labelled validation cases, 12 unlabelled scans (their
  segmentations are never read: the datalist lists them without a label) and 24 held-out labelled test
  cases on which every row is scored. Test cases cost only inference, so there are many of them: with
  8 (the earlier regime) the interval of a mean was wider than most differences between rows.
- **Model selection.** ``selection="last"`` (default): one validation, after the last epoch, so
  ``model.pt`` holds the final weights (the cosine schedule ends near a learning rate of 0). Choosing
  the best of 4 validations on 2 cases (``selection="best"``, the earlier rule) selects by the Dice of
  two cases, as much noise as quality, and more validation cases would cost every run their inference.
- **Teacher.** The demo ``HybridTeacher`` trained on the labelled cases only, ``teacher_steps``
  optimizer steps, once per seed in ``teacher_seeds`` (default 0 and 1).
- **Students.** Every student row gets the same ``student_steps`` optimizer steps (not epochs: an
  epoch with interleaved unlabelled batches has more batches), the same data, augmentation, schedule
  and seeds. Rows: labels only; + soft-target KD; + soft-target and feature KD; the same with the
  unlabelled scans paired with the labelled batches (each step one labelled and one unlabelled batch, so
  as many labelled batches are seen as in the label-only row); the same with the unlabelled patches centred
  in the tumour the teacher predicts (``--unlabelled_sampling teacher``, :mod:`kd_components.data.guidance`), and
  with the teacher's confident predictions as pseudo-labels on top (``--pseudo_weight 1``); MONAI's model-zoo BraTS
  SegResNet (``init_filters`` 16, blocks 1-2-2-4) on labels only. The unlabelled scans *interleaved* (batches of
  their own, each an optimizer step: a third of the labelled batches of the other rows at equal steps)
  is a row too, but not a default one (``--rows ... soft_feature_unlabelled``); so is each other candidate of
  the CPU student search with soft-target and feature KD (``kd_<name>``, one per entry of
  :data:`~kd_components.networks.candidates.STUDENT_CANDIDATES`; ``scripts/benchmark_students.py``).
- **Seeds (paired).** Each student row is trained with every seed in ``seeds`` (default 0-4; the data
  split is fixed, the seed sets initialisation, patch sampling, augmentation and batch order), so rows
  are compared seed by seed. The *i*-th student seed distils the teacher of
  ``teacher_seeds[i % len(teacher_seeds)]`` (:func:`teacher_seed_for`): students 0, 2, 4 learn from
  teacher 0, students 1, 3 from teacher 1.
- **Statistics.** Per row and metric ``results.json`` holds the score of every (seed, test case)
  (``per_case``, from the ``*_raw.csv`` files of MONAI's ``MetricsSaver`` in ``evaluate.json``), the
  per-seed aggregates (``per_seed``, ``summary``) and (:func:`add_statistics`) the mean with a 95 %
  bootstrap interval over seeds and cases, the paired difference to the label-only student and the gap
  closed, each with its interval (:mod:`kd_components.pipeline.statistics` says what is resampled).
- **BraTS challenge metrics.** ``evaluate.json`` also scores every test case as the BraTS evaluation does
  (panoptica; lesion-wise Dice and HD95, the empty-region rule; :mod:`kd_components.evaluation.lesions`), once as
  the network outputs it (``brats_metrics.csv``) and once after the bundle's post-processing
  (``brats_metrics_post.csv``, thresholds of its ``inference.json``); :data:`BRATS_METRICS` are read from both.
- **False positives.** After its training, every run segments ``probe_cases`` healthy phantoms and as many
  tumour phantoms of a generator seed no network is trained on (:mod:`kd_components.pipeline.false_positives`,
  with ``brats-kd segment``'s engine and post-processing): the predicted whole-tumour volume on brains without a
  tumour, and Dice on an unseen seed.
- **Determinism.** On one machine, a rerun repeats every number: phantoms depend only on (seed, index),
  each bundle run seeds everything with ``monai.utils.set_determinism(seed)`` and loads data in the main
  process (``num_workers`` 0 in ``demo.json``). Across machines the CPU's floating-point summation order
  (vector width, oneDNN/MKL kernel choice, thread count) differs, so the weights drift apart from the
  first step; the page says so and the intervals, not single means, carry the conclusions.
- **Cost.** Parameters, FLOPs per 96^3 patch, and sliding-window inference time and peak memory of
  one BraTS-size volume (4 x 240 x 240 x 155) on this CPU, each network in a fresh process, all in
  the same run; the default (full-size) teacher is measured too, though it is not trained here.

Time budget (:func:`estimate_seconds`, printed by ``scripts/benchmark_kd.py --estimate``). The model:
a label-only student step costs :data:`STEP_SECONDS` (0.4 s; the other rows a multiple,
:attr:`Row.step_cost`: KD 1.3, paired 2.5, SegResNet-16 4.4, demo teacher 2.2), evaluating one phantom case
:data:`CASE_SECONDS` (0.85 s for the student, sliding window and every metric; teacher 4x, SegResNet-16 6x),
starting a bundle process :data:`START_SECONDS` (10 s), a phantom 1 s; the false-positive probe segments its
cases at the cost of a test case each, and the teacher-guided rows segment each unlabelled scan once per teacher
(:data:`GUIDANCE_SECONDS`, 4 s). Fitted to the stage times of the first seed of a run on the idle 2-core CPU
(bf16 training, the strided student; the 2026-11-29 run of ``docs/results.md``): a student trains in 30-50 s and
is tested in 30 s; a teacher trains in 2-2.5 min and is tested in 1.5 min (6 min for the seed-1 teacher, whose
many small false-positive components slow the lesion-wise matching). Treat it as +-30 %.

Every training and evaluation is a stage of :class:`~kd_components.pipeline.stages.StageRunner`, so
an interrupted benchmark continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import concurrent.futures
import csv
import datetime
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_components.constants import MODALITIES, REGIONS
from kd_components.data.brats import discover_cases, validate_cases
from kd_components.data.datalist import build_datalist
from kd_components.handlers.branches import BRANCH_DIAGNOSTICS_FILE
from kd_components.io import save_json_atomic
from kd_components.networks.candidates import DEFAULT_CANDIDATE, MODEL_ZOO_SEGRESNET, STUDENT_CANDIDATES
from kd_components.pipeline.demo import STUDENT_BUNDLE, TEACHER_BUNDLE, bundle_command, config_files
from kd_components.pipeline.report import read_metrics, read_per_case
from kd_components.pipeline.stages import Stage, StageRunner, python_command
from kd_components.pipeline.statistics import finite_mean, gap_closed_interval, mean_interval, paired_difference

__all__ = [
    "BRATS_METRICS",
    "METRICS",
    "RESULTS_INDENT",
    "ROWS",
    "BenchmarkSettings",
    "Row",
    "add_statistics",
    "benchmark_stages",
    "collect_results",
    "environment",
    "estimate_seconds",
    "held_out_cases",
    "measure_costs",
    "measure_inference",
    "network_sizes",
    "read_brats_scores",
    "run_benchmark",
    "schedule",
    "split_cases",
    "teacher_seed_for",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
_GIB = 1024**3


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    Args:
        key: short name used for folders.
        label: the line's name in the table.
        network: name for :func:`kd_components.benchmarking.build_network` (cost columns).
        overrides: bundle overrides of this row.
        unlabelled: how the unlabelled scans are used: ``""`` (not at all), ``"interleave"`` (batches of
            their own, each an optimizer step) or ``"paired"`` (each step one labelled and one unlabelled
            batch); see :class:`~kd_components.data.mixing.MixedBatchLoader`.
        kind: ``teacher``, ``student`` (a distillation row) or ``baseline`` (labels only).
        step_cost: seconds of one optimizer step relative to a label-only student step (cost estimate only).
        case_cost: seconds of evaluating one case relative to the student (cost estimate only).
        teacher: for a distillation row, the key of the teacher row it distils (its overrides name the same
            ``teacher_config``). Defaults to the hybrid teacher, ``"teacher"``.
    """

    key: str
    label: str
    network: str
    overrides: tuple[str, ...] = ()
    unlabelled: str = ""
    kind: str = "student"
    step_cost: float = 1.0
    case_cost: float = 1.0
    teacher: str = "teacher"


def _feature_sources(*sources: str) -> tuple[str, ...]:
    """The overrides of a distillation row whose feature pairs come from ``sources`` (``--feature_sources``)."""
    return ("--feature_sources", json.dumps(list(sources)))


ROWS: tuple[Row, ...] = (
    Row("teacher", "hybrid teacher (demo size)", "demo", kind="teacher", step_cost=2.2, case_cost=4.0),
    # the hybrid with its fusion scale logits at the base learning rate (as before fusion_lr_factor)
    Row(
        "teacher_fusion_lr1",
        "hybrid teacher (demo size), fusion scale weights at the base learning rate",
        "demo",
        ("--fusion_lr_factor", "1"),
        kind="teacher",
        step_cost=2.2,
        case_cost=4.0,
    ),
    # the teacher's branch ablations (the same size without the ViT, or without the VGG) and a student of each
    Row(
        "teacher_cnn",
        "VGG-only teacher (demo size, no ViT)",
        "demo_cnn",
        ("--teacher_config", "demo_cnn"),
        kind="teacher",
        step_cost=1.2,
        case_cost=2.0,
    ),
    Row(
        "teacher_vit",
        "ViT-only teacher (demo size, no VGG; UNETR-like)",
        "demo_vit",
        ("--teacher_config", "demo_vit"),
        kind="teacher",
        step_cost=1.6,
        case_cost=3.0,
    ),
    Row("labels_only", "student, labels only", "student", ("--alpha", "0", "--beta", "0"), kind="baseline"),
    Row(
        "soft",
        "student + soft-target KD",
        "student",
        ("--alpha", "1", "--beta", "0", "--use_unlabelled", "false"),
        step_cost=1.3,
    ),
    Row(
        "soft_feature",
        "student + soft-target + feature KD",
        "student",
        ("--alpha", "1", "--use_unlabelled", "false"),
        step_cost=1.3,
    ),
    Row(
        "soft_feature_unlabelled",
        "student + soft-target + feature KD + unlabelled scans",
        "student",
        ("--alpha", "1", "--use_unlabelled", "true", "--unlabelled_mixing", "interleave"),
        unlabelled="interleave",
        step_cost=1.3,
    ),
    Row(
        "soft_feature_paired",
        "student + soft-target + feature KD + unlabelled scans, paired",
        "student",
        ("--alpha", "1", "--use_unlabelled", "true", "--unlabelled_mixing", "paired"),
        unlabelled="paired",
        step_cost=2.5,
    ),
    Row(
        "guided_paired",
        "student + soft-target + feature KD + unlabelled scans, paired, teacher-guided patches",
        "student",
        (
            *("--alpha", "1", "--use_unlabelled", "true", "--unlabelled_mixing", "paired"),
            *("--unlabelled_sampling", "teacher"),
        ),
        unlabelled="paired",
        step_cost=2.5,
    ),
    Row(
        "guided_pseudo_paired",
        "student + soft-target + feature KD + unlabelled scans, paired, teacher-guided patches + pseudo-labels",
        "student",
        (
            *("--alpha", "1", "--use_unlabelled", "true", "--unlabelled_mixing", "paired"),
            *("--unlabelled_sampling", "teacher", "--pseudo_weight", "1"),
        ),
        unlabelled="paired",
        step_cost=2.5,
    ),
    Row(
        "soft_feature_from_cnn",
        "student + soft-target + feature KD from the VGG-only teacher",
        "student",
        ("--alpha", "1", "--use_unlabelled", "false", "--teacher_config", "demo_cnn"),
        step_cost=1.2,
        teacher="teacher_cnn",
    ),
    Row(
        "soft_feature_from_vit",
        "student + soft-target + feature KD from the ViT-only teacher",
        "student",
        ("--alpha", "1", "--use_unlabelled", "false", "--teacher_config", "demo_vit"),
        step_cost=1.25,
        teacher="teacher_vit",
    ),
    # feature distillation from the hybrid's branches as well as (or instead of) its fused maps
    *(
        Row(
            f"features_{'_'.join(sources)}",
            f"student + soft-target + feature KD, features: {' + '.join(sources)}",
            "student",
            ("--alpha", "1", "--use_unlabelled", "false", *_feature_sources(*sources)),
            step_cost=1.4,
        )
        for sources in (("fused", "vit"), ("fused", "cnn", "vit"), ("cnn", "vit"))
    ),
    Row(
        "segresnet16",
        "model-zoo SegResNet (16 filters), labels only",
        "segresnet16",
        ("--alpha", "0", "--beta", "0", *MODEL_ZOO_SEGRESNET.overrides()),
        kind="baseline",
        step_cost=4.4,
        case_cost=6.0,
    ),
    # the other students of the CPU student search (scripts/benchmark_students.py), with soft-target + feature KD
    *(
        Row(
            f"kd_{c.name}",
            f"{c.name} + soft-target + feature KD",
            c.name,
            ("--alpha", "1", "--use_unlabelled", "false", *c.overrides()),
            step_cost=1.3,
        )
        for c in STUDENT_CANDIDATES.values()
        if c is not DEFAULT_CANDIDATE
    ),
)

#: The rows of the teacher-branch comparison (``make benchmark-branches``, ``docs/branches.md``): the hybrid teacher
#: with its scale logits at the base learning rate, its two single-branch ablations and a student distilled from
#: each, and students distilled from the branches' own features; ``soft_feature`` is the hybrid's student with the
#: fused maps alone.
BRANCH_ROWS: tuple[str, ...] = (
    "teacher_fusion_lr1",
    "teacher_cnn",
    "teacher_vit",
    "soft_feature_from_cnn",
    "soft_feature_from_vit",
    "features_fused_vit",
    "features_fused_cnn_vit",
    "features_cnn_vit",
)
ROWS_BY_KEY: dict[str, Row] = {r.key: r for r in ROWS}


def selected_rows(settings: BenchmarkSettings) -> list[Row]:
    """The rows a run has, in :data:`ROWS` order: those of ``settings.rows``, the hybrid teacher (every run
    has it) and the teacher of every selected distillation row."""
    keys = {"teacher", *settings.rows}
    keys |= {ROWS_BY_KEY[k].teacher for k in settings.rows if ROWS_BY_KEY[k].kind == "student"}
    return [r for r in ROWS if r.key in keys]


#: The test metrics of ``evaluate.json`` read per case (``<metric>_raw.csv``, column ``mean``: for
#: ``val_mean_dice`` the mean over the three regions of that case, NaN-skipping).
METRICS: tuple[str, ...] = (
    "val_dice_tc",
    "val_dice_wt",
    "val_dice_et",
    "val_mean_dice",
    "val_hd95_tc",
    "val_hd95_wt",
    "val_hd95_et",
)
#: The BraTS challenge scores read per case from the test stage (:func:`read_brats_scores`): for each prefix
#: (``""``: as the network outputs it, ``brats_metrics.csv``; ``"post_"``: after the bundle's post-processing,
#: ``brats_metrics_post.csv``) and each column of :data:`BRATS_COLUMNS`, one key per region
#: (``brats_dice_tc`` ... ``post_brats_lesion_hd95_et``) and, for Dice, the mean over the regions
#: (``brats_dice_mean``, ``brats_lesion_dice_mean``, ...). ``fp``: false-positive lesions of the case.
BRATS_FILES: dict[str, str] = {"": "brats_metrics.csv", "post_": "brats_metrics_post.csv"}
BRATS_COLUMNS: tuple[str, ...] = ("dice", "lesion_dice", "lesion_hd95", "fp")
BRATS_METRICS: tuple[str, ...] = tuple(
    f"{prefix}brats_{column}_{region}"
    for prefix in BRATS_FILES
    for column in BRATS_COLUMNS
    for region in (*(r.lower() for r in REGIONS), *(("mean",) if "dice" in column else ()))
)
#: ``results.json`` is written without indentation: with every per-case score of every row, indented, it passes 1 MiB.
RESULTS_INDENT: int | None = None
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


def write_datalists(settings: BenchmarkSettings) -> None:
    """Validate the phantoms, then write ``datalist.json`` (training: labelled = fold 1, validation = fold 0;
    testing: the unlabelled scans, without labels) and ``test_datalist.json`` (the test cases as fold 0)."""
    data = settings.output_dir / "data"
    full = build_datalist(validate_cases(discover_cases(data)), data, num_folds=2)
    entries = {e["case_id"]: e for e in full["training"]}
    roles = split_cases(list(entries), settings)
    train = [entries[c] | {"fold": 1} for c in roles["labelled"]] + [
        entries[c] | {"fold": 0} for c in roles["validation"]
    ]
    unlabelled = [{k: v for k, v in entries[c].items() if k in ("case_id", "image")} for c in roles["unlabelled"]]
    test = [entries[c] | {"fold": 0} for c in roles["test"]]
    common = {k: full[k] for k in ("modalities", "labels", "regions", "et_label")}
    save_json_atomic(
        common | {"name": "benchmark", "roles": roles, "training": train, "testing": unlabelled},
        settings.output_dir / "datalist.json",
    )
    save_json_atomic(common | {"name": "benchmark test set", "training": test, "testing": []}, _test_datalist(settings))


def _test_datalist(settings: BenchmarkSettings) -> Path:
    return settings.output_dir / "test_datalist.json"


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


def run_dir(settings: BenchmarkSettings, row: Row, seed: int) -> Path:
    return settings.output_dir / "runs" / f"{row.key}_seed{seed}"


def benchmark_stages(settings: BenchmarkSettings) -> list[Stage]:
    """Data, datalists, then per seed: teacher training, each student row, and each row's test evaluation."""
    out = settings.output_dir
    data = out / "data"
    stages = [
        Stage(
            "phantoms",
            command=python_command(
                str(REPO_ROOT / "scripts" / "make_phantoms.py"),
                *("--output-dir", str(data), "--num-cases", str(settings.num_cases)),
                *("--seed", str(settings.data_seed), "--profile", "small", "--preview"),
            ),
            outputs=(data / "preview.png",),
            owned_dirs=(data,),
            description=f"{settings.num_cases} phantom cases (seed {settings.data_seed}) -> {data}",
        ),
        Stage(
            "datalists",
            action=lambda: write_datalists(settings),
            outputs=(out / "datalist.json", _test_datalist(settings)),
            depends_on=("phantoms",),
            params={k: getattr(settings, k) for k in ("data_seed", "labelled", "validation", "unlabelled", "test")},
            description="validating every case; benchmark datalist and held-out test datalist",
        ),
    ]
    common = ["--dataset_dir", str(data), "--batch_size", str(settings.batch_size)]
    rows = selected_rows(settings)
    teachers = [r for r in rows if r.kind == "teacher"]
    students = [r for r in rows if r.kind != "teacher"]
    # the teachers first (every student needs one), then seed by seed every student row
    runs = [(t, seed) for t in teachers for seed in settings.teacher_seeds]
    runs += [(r, s) for s in settings.seeds for r in students]
    for row, seed in runs:
        folder = run_dir(settings, row, seed)
        bundle = TEACHER_BUNDLE if row.kind == "teacher" else STUDENT_BUNDLE
        epochs, val_interval, per_epoch = row_schedule(settings, row)
        args = [*common, "--seed", str(seed), *row.overrides, "--ckpt_dir", str(folder / "models")]
        train_args = [
            *args,
            *("--data_list_file_path", str(out / "datalist.json")),
            *("--epochs", str(epochs), "--val_interval", str(val_interval)),
        ]
        deps: tuple[str, ...] = ("datalists",)
        if row.kind == "student":
            teacher_seed = teacher_seed_for(settings, seed)
            teacher = ROWS_BY_KEY[row.teacher]
            train_args += ["--teacher_ckpt", str(run_dir(settings, teacher, teacher_seed) / "models" / "model.pt")]
            deps += (f"{teacher.key}_seed{teacher_seed}_train",)
        name = f"{row.key}_seed{seed}"
        stages.append(
            Stage(
                f"{name}_train",
                command=bundle_command(
                    bundle,
                    "training",
                    ("train.json", "demo.json"),
                    *train_args,
                    "--output_dir",
                    str(folder / "runs"),
                ),
                inputs=config_files(bundle, ("train.json", "demo.json")),
                outputs=(folder / "models" / "model.pt",),
                owned_dirs=(folder / "models", folder / "runs"),
                depends_on=deps,
                resume_dir=folder / "models",
                description=f"{row.label}, seed {seed}: {epochs} epochs x {per_epoch} batches",
            ),
        )
        stages.append(
            Stage(
                f"{name}_test",
                command=bundle_command(
                    bundle,
                    None,
                    ("train.json", "demo.json", "evaluate.json"),
                    *args,
                    *("--data_list_file_path", str(_test_datalist(settings)), "--fold", "0"),
                    "--output_dir",
                    str(folder / "test"),
                ),
                inputs=config_files(bundle, ("train.json", "demo.json", "evaluate.json")),
                outputs=(
                    folder / "test" / "metrics.csv",
                    *(folder / "test" / f"{m}_raw.csv" for m in METRICS),
                    *(folder / "test" / f for f in BRATS_FILES.values()),
                ),
                owned_dirs=(folder / "test",),
                depends_on=(f"{name}_train",),
                description=f"{row.label}, seed {seed}: Dice and HD95 on the {settings.test} test cases",
            ),
        )
        if settings.probe_cases:
            stages.append(
                Stage(
                    f"{name}_probe",
                    action=lambda row=row, seed=seed: probe_run(settings, row, seed),
                    params={"probe_cases": settings.probe_cases, "overrides": list(row.overrides)},
                    inputs=config_files(bundle, ("inference.json", "demo.json")),
                    outputs=(folder / "probe" / "probe.json",),
                    owned_dirs=(folder / "probe",),
                    depends_on=(f"{name}_train",),
                    description=f"{row.label}, seed {seed}: {settings.probe_cases} healthy and unseen-seed phantoms",
                ),
            )
    return stages


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


def network_sizes(networks: Sequence[str], roi: int) -> dict[str, dict[str, float]]:
    """Parameters and forward GFLOPs per ``roi``^3 patch of each network, counted on the meta device
    (no weights are allocated, nothing is timed): the size columns of the results table."""
    from kd_components.benchmarking import build_network, count_flops
    from kd_components.tracking import count_parameters

    sizes = {}
    for name in dict.fromkeys(networks):
        with torch.device("meta"):
            params = count_parameters(build_network(name, roi))
        sizes[name] = {"params": params, "gflops_patch": count_flops(name, roi)[0] / 1e9}
    return sizes


def measure_inference(network: str, shape: Sequence[int], roi: int, overlap: float) -> dict[str, Any]:
    """Parameters, FLOPs per ``roi``^3 patch, and sliding-window inference time and peak memory on one
    random ``(1, 4, *shape)`` volume with MONAI's ``SlidingWindowInferer`` (batch 1 per window, eval
    mode, ``torch.no_grad()``). Meant to run in a fresh process (:func:`measure_inference_in_fresh_process`)."""
    from monai.inferers import SlidingWindowInferer

    from kd_components.benchmarking import build_network, cpu_description

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB
    size = network_sizes([network], roi)[network]
    torch.manual_seed(0)
    model = build_network(network, roi).eval()
    volume = torch.randn(1, len(MODALITIES), *shape)
    inferer = SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=1, overlap=overlap, mode="gaussian")
    import time

    load = os.getloadavg()[0]
    start = time.perf_counter()
    with torch.no_grad():
        output = inferer(volume, model)
    seconds = time.perf_counter() - start
    return {
        "network": network,
        **size,
        "inference_s": seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB,
        "baseline_rss_gib": baseline,
        "output_shape": list(output.shape),
        "load": (load, os.getloadavg()[0]),
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),
    }


def measure_inference_in_fresh_process(network: str, shape: Sequence[int], roi: int, overlap: float) -> dict[str, Any]:
    """:func:`measure_inference` in a new (spawned) process, so peak memory is that network's alone."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_inference, network, tuple(shape), roi, overlap).result()


def held_out_cases(settings: BenchmarkSettings) -> list[str]:
    """The held-out test case ids, in the column order of every per-case array (``test_datalist.json``)."""
    return [entry["case_id"] for entry in json.loads(_test_datalist(settings).read_text())["training"]]


def read_case_scores(evaluation_dir: Path, cases: Sequence[str]) -> dict[str, list[float]]:
    """Per metric of :data:`METRICS`: the values of ``cases`` (in that order) from ``<metric>_raw.csv``."""
    scores = {}
    for metric in METRICS:
        by_case = read_per_case(evaluation_dir, metric)
        missing = sorted(set(cases) - set(by_case))
        if missing:
            raise ValueError(f"{evaluation_dir / (metric + '_raw.csv')} has no row for test cases {missing}")
        scores[metric] = [by_case[c] for c in cases]
    return scores


def read_brats_scores(evaluation_dir: Path, cases: Sequence[str]) -> dict[str, list[float]]:
    """Per key of :data:`BRATS_METRICS`: the values of ``cases`` (in that order) from the test stage's
    ``brats_metrics.csv`` and ``brats_metrics_post.csv`` (:class:`~kd_components.handlers.CaseScoresWriter`)."""
    scores: dict[str, list[float]] = {}
    for prefix, filename in BRATS_FILES.items():
        path = evaluation_dir / filename
        with path.open(newline="") as f:
            by_case = {row["case_id"]: row for row in csv.DictReader(f)}
        missing = sorted(set(cases) - set(by_case))
        if missing:
            raise ValueError(f"{path} has no row for test cases {missing}")
        for column in BRATS_COLUMNS:
            per_region = {r: [float(by_case[c][f"{column}_{r}"]) for c in cases] for r in (x.lower() for x in REGIONS)}
            for region, values in per_region.items():
                scores[f"{prefix}brats_{column}_{region}"] = values
            if "dice" in column:
                scores[f"{prefix}brats_{column}_mean"] = [
                    statistics.fmean(v) for v in zip(*per_region.values(), strict=True)
                ]
    return scores


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


def probe_run(settings: BenchmarkSettings, row: Row, seed: int) -> None:
    """The false-positive probe of one trained run (:func:`kd_components.pipeline.false_positives.measure`, with
    the bundle's ``inference.json``, its demo overlay and the row's overrides) -> ``<run>/probe/probe.json``."""
    from kd_components.pipeline.false_positives import make_probe_data, measure
    from kd_components.segment import Segmenter

    bundle = TEACHER_BUNDLE if row.kind == "teacher" else STUDENT_BUNDLE
    folder = run_dir(settings, row, seed)
    overlay = json.loads((bundle / "configs" / "demo.json").read_text())
    segmenter = Segmenter(
        bundle, folder / "models" / "model.pt", overrides=overlay | cli_overrides(row.overrides), log=lambda line: None
    )
    folders = make_probe_data(settings.output_dir / "probe_data", settings.probe_cases)
    save_json_atomic(measure(segmenter, folders), folder / "probe" / "probe.json")


def collect_results(settings: BenchmarkSettings) -> dict[str, Any]:
    """Per row: the aggregated test metrics of each seed (``metrics.csv``), the per-(seed, case) scores of every
    metric (``*_raw.csv``), mean and standard deviation over seeds, and the bootstrap statistics
    (:func:`add_statistics`)."""
    cases = held_out_cases(settings)
    results: dict[str, Any] = {}
    for row in selected_rows(settings):
        seeds = row_seeds(settings, row)
        per_seed = {seed: read_metrics(run_dir(settings, row, seed) / "test") for seed in seeds}
        per_case_by_seed = {
            seed: read_case_scores(run_dir(settings, row, seed) / "test", cases)
            | read_brats_scores(run_dir(settings, row, seed) / "test", cases)
            for seed in seeds
        }
        per_case = {"cases": cases} | {m: [per_case_by_seed[s][m] for s in seeds] for m in (*METRICS, *BRATS_METRICS)}
        diagnostics = [run_dir(settings, row, seed) / "runs" / BRANCH_DIAGNOSTICS_FILE for seed in seeds]
        diagnostics = [json.loads(p.read_text()) for p in diagnostics if p.is_file()]
        probes = [run_dir(settings, row, seed) / "probe" / "probe.json" for seed in seeds]
        probe = [json.loads(p.read_text()) for p in probes] if settings.probe_cases else None
        summary = {}
        for key in sorted(next(iter(per_seed.values()))):
            values = [per_seed[s][key] for s in seeds]
            finite = [v for v in values if math.isfinite(v)]
            summary[key] = {
                "mean": statistics.fmean(finite) if finite else float("nan"),
                "std": statistics.stdev(finite) if len(finite) > 1 else None,
                "n": len(finite),
                "values": values,
            }
            if key in METRICS:  # the same, from the per-case scores: per seed the mean over the test cases
                summary[key]["case_means"] = [finite_mean(v) for v in per_case[key]]
        epochs, _, per_epoch = row_schedule(settings, row)
        results[row.key] = {
            "label": row.label,
            "kind": row.kind,
            "network": row.network,
            "unlabelled": row.unlabelled,
            "epochs": epochs,
            "steps": epochs * per_epoch,
            "seeds": list(seeds),
            "teacher_seeds": [teacher_seed_for(settings, s) for s in seeds] if row.kind == "student" else None,
            "teacher": row.teacher if row.kind == "student" else None,
            "per_seed": per_seed,
            "per_case": per_case,
            "summary": summary,
            "probe": probe,
            "branch_diagnostics": diagnostics or None,
        }
    return add_statistics(results, settings.bootstrap_resamples, settings.bootstrap_seed)


def add_statistics(
    rows: dict[str, Any], resamples: int, seed: int, base: str = "labels_only", teacher: str = "teacher"
) -> dict[str, Any]:
    """Add ``statistics`` to each row of ``rows`` (as :func:`collect_results` builds them, ``per_case`` holding
    a ``(seeds, cases)`` list per metric): per metric the mean with its bootstrap interval and, for every row
    trained on the same seeds as ``base`` (except ``base`` itself), the paired difference to ``base`` and the
    gap closed towards ``teacher`` (see :mod:`kd_components.pipeline.statistics`); for a ``post_`` metric of
    :data:`BRATS_METRICS` also ``postprocessing_effect``, its paired difference to the same score without
    post-processing. Intervals are
    :meth:`~kd_components.pipeline.statistics.Interval.as_dict`; absent statistics are None. Returns ``rows``."""
    options = {"resamples": resamples, "seed": seed}

    def scores(key: str, metric: str) -> np.ndarray:
        return np.array([[math.nan if v is None else v for v in seed] for seed in rows[key]["per_case"][metric]])

    for key, row in rows.items():
        paired = key not in (base, teacher) and base in rows and row["seeds"] == rows[base]["seeds"]
        row["statistics"] = {}
        for metric in (*METRICS, *BRATS_METRICS):
            if metric not in row["per_case"]:
                continue
            own = scores(key, metric)
            entry: dict[str, Any] = {"mean": mean_interval(own, **options).as_dict(), "difference": None}
            entry["gap_closed"] = None
            if paired:
                reference = scores(base, metric)
                entry["difference"] = paired_difference(own, reference, **options).as_dict()
                if teacher in rows:
                    gap = gap_closed_interval(own, reference, scores(teacher, metric), **options)
                    entry["gap_closed"] = gap.as_dict()
            if metric.startswith("post_") and metric[len("post_") :] in row["per_case"]:
                # what the bundle's post-processing changes, paired over the same seeds and cases
                raw = scores(key, metric[len("post_") :])
                entry["postprocessing_effect"] = paired_difference(own, raw, **options).as_dict()
            row["statistics"][metric] = entry
    return rows


def environment(jobs: int) -> dict[str, Any]:
    """Where the trainings and evaluations of this run ran: CPU, GPU (None without CUDA), versions, parallel stages."""
    import monai

    from kd_components.benchmarking import cpu_description

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_description(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "jobs": jobs,
    }


def measure_costs(settings: BenchmarkSettings) -> list[dict[str, Any]]:
    """Time every network of ``settings.timing_networks`` (each in a fresh process) and save the list as
    ``OUTPUT_DIR/inference_cost.json``, which later ``--no-timing`` runs in that folder show."""
    costs = []
    for network in settings.timing_networks:
        print(f"[timing] sliding-window inference of {network} on 4x{'x'.join(map(str, settings.timing_shape))}")
        costs.append(
            measure_inference_in_fresh_process(
                network, settings.timing_shape, settings.timing_roi, settings.timing_overlap
            )
        )
        print(f"[timing] {network}: {costs[-1]['inference_s']:.1f} s")
    save_json_atomic(costs, settings.output_dir / "inference_cost.json")
    return costs


def run_benchmark(
    settings: BenchmarkSettings, fresh: bool = False, timing: bool = True, command: str = ""
) -> dict[str, Any]:
    """Train and test every row for every seed (restartable; ``settings.jobs`` stages at a time), measure inference
    cost, return everything (also saved as ``OUTPUT_DIR/results.json``, with ``command``, the command line that
    ran it)."""
    runner = StageRunner(settings.output_dir / ".stages", fresh=fresh)
    estimate = estimate_seconds(settings)["total"]
    print(f"[benchmark] a fresh run takes about {estimate / 3600:.1f} h on 2 CPU cores (finished stages are reused)")
    if settings.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # share the cores between the parallel stages
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.jobs))
    runner.run_all(benchmark_stages(settings), jobs=settings.jobs)
    results = {"command": command, "settings": _jsonable(asdict(settings)), "rows": collect_results(settings)}
    results["estimate_seconds"] = estimate_seconds(settings)
    results["environment"] = environment(settings.jobs)
    results["sizes"] = network_sizes([row["network"] for row in results["rows"].values()], settings.timing_roi)
    cost_path = settings.output_dir / "inference_cost.json"
    if timing:
        measure_costs(settings)
    results["cost"] = json.loads(cost_path.read_text()) if cost_path.exists() else []
    results["finished"] = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
    results["stage_seconds"] = runner.timings
    results["stage_seconds_recorded"] = runner.recorded
    save_json_atomic(_jsonable(results), settings.output_dir / "results.json", indent=RESULTS_INDENT)
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
