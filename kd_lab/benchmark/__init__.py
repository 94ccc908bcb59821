"""The project's comparison: teacher vs distilled students vs label-only students, in two regimes of real use.

Regime (see ``docs/results_scarce.md`` and ``docs/results_compression.md`` for the measured tables; every number
below is a default of :class:`BenchmarkSettings` and an option of ``scripts/benchmark_kd.py``):

- **Data.** One phantom data set (``data_seed``; case *i* depends only on the seed and *i*), split by case index into
  48 labelled training cases (``teacher_labelled``), 4 labelled validation cases, 24 unlabelled scans (their
  segmentations are never read: the datalists list them without a label) and 24 held-out labelled test cases on which
  every row is scored.
- **Teacher, as in real use.** The demo ``HybridTeacher`` of each seed in ``teacher_seeds`` (default 0 and 1) trains
  once, on every labelled training case, with a long budget (``teacher_steps``, 1200: more than 10x a student's),
  validated ``teacher_validations`` times (its curve is on the page; its ``model.pt`` is the best validation). It is
  one cached stage (``teacher_seed<k>_train``, fed by its own datalist stage so that a change of the students' split
  does not retrain it), reused by every student row, seed and regime.
- **Student regimes** (``regimes``, one page each): ``scarce``, a student has the first ``labelled`` (6) of the
  teacher's labelled cases and the unlabelled scans; ``compression``, a student has every labelled case the teacher
  had. Each regime has its own training datalist (:func:`~kd_lab.benchmark.plan.training_datalist`) and run folders
  (``runs/<regime>/<row>_seed<s>``).
- **Model selection.** ``selection="last"`` (default): a student validates once, after the last epoch, so
  ``model.pt`` holds the final weights (the cosine schedule ends near a learning rate of 0). Choosing the best of a
  few validations on a handful of cases (``selection="best"``) selects as much by noise as by quality.
- **Students.** Every student row gets the same ``student_steps`` optimizer steps (108; not epochs: an
  epoch with interleaved unlabelled batches has more batches), the same data, augmentation, schedule
  and seeds. Default rows (:data:`~kd_lab.benchmark.rows.DEFAULT_ROWS`): labels only; + soft-target KD; + soft-target
  and feature KD; the same with the unlabelled scans paired with the labelled batches (each step one labelled and one
  unlabelled batch) and their patches centred in the tumour the teacher predicts (``--unlabelled_sampling teacher``,
  :mod:`kd_components.data.guidance`); MONAI's model-zoo BraTS SegResNet (``init_filters`` 16, blocks 1-2-2-4) on
  labels only. Other rows a run can name (``--rows``): the unlabelled scans paired without guidance, interleaved
  (batches of their own, each an optimizer step) or with the teacher's confident predictions as pseudo-labels
  (``--pseudo_weight 1``); each other candidate of the CPU student search with soft-target and feature KD
  (``kd_<name>``, one per entry of :data:`~kd_components.networks.candidates.STUDENT_CANDIDATES`;
  ``scripts/benchmark_students.py``); the teacher-branch rows of :data:`~kd_lab.benchmark.rows.BRANCH_ROWS`.
- **Seeds (paired).** Each student row is trained with every seed in ``seeds`` (default 0-4; the data
  split is fixed, the seed sets initialisation, patch sampling, augmentation and batch order), so rows
  are compared seed by seed. The *i*-th student seed distils the teacher of
  ``teacher_seeds[i % len(teacher_seeds)]`` (:func:`teacher_seed_for`): students 0, 2, 4 learn from
  teacher 0, students 1, 3 from teacher 1.
- **Statistics.** Per row and metric ``results.json`` holds the score of every (seed, test case)
  (``per_case``, from the ``*_raw.csv`` files of MONAI's ``MetricsSaver`` in ``evaluate.json``), the
  per-seed aggregates (``per_seed``, ``summary``) and (:func:`add_statistics`) the mean with a 95 %
  bootstrap interval over seeds and cases, the paired difference to the label-only student and the gap
  closed, each with its interval, and the teacher's lead over the label-only student (its own seeds, the same
  cases); :mod:`kd_lab.statistics` says what is resampled. The page gives the gap closed only where that lead is
  resolved.
- **BraTS challenge metrics.** ``evaluate.json`` also scores every test case as the BraTS evaluation does
  (panoptica; lesion-wise Dice and HD95, the empty-region rule; :mod:`kd_components.evaluation.lesions`), once as
  the network outputs it (``brats_metrics.csv``) and once after the bundle's post-processing
  (``brats_metrics_post.csv``, thresholds of its ``inference.json``); :data:`BRATS_METRICS` are read from both.
- **False positives.** After its training, every run segments ``probe_cases`` healthy phantoms and as many
  tumour phantoms of a generator seed no network is trained on (:mod:`kd_components.evaluation.false_positives`,
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
:attr:`Row.step_cost`: KD 1.3, paired 2.5, SegResNet-16 4.4, demo teacher 3.5), evaluating one phantom case
:data:`CASE_SECONDS` (0.85 s for the student, sliding window and every metric; teacher 4x, SegResNet-16 6x),
starting a bundle process :data:`START_SECONDS` (10 s), a phantom 1 s; the false-positive probe segments its
cases at the cost of a test case each, and the teacher-guided rows segment each unlabelled scan once per teacher
(:data:`GUIDANCE_SECONDS`, 4 s). Fitted to the stage times of the first seed of a run on the idle 2-core CPU
(bf16 training, the strided student; the 2026-11-29 run, before the teacher regime): a student trains in 30-50 s and
is tested in 30 s; a teacher trains in 2-2.5 min and is tested in 1.5 min (6 min for the seed-1 teacher, whose
many small false-positive components slow the lesion-wise matching). The teacher's step was refitted to its long
training (epochs of 24 steps in 33-34 s on the idle CPU, 2026-12-07). Treat it as +-30 %.

Every training and evaluation is a stage of :class:`~kd_lab.stages.StageRunner`, so
an interrupted benchmark continues where it stopped when the same command is run again.
"""

from __future__ import annotations

from kd_lab.benchmark.collect import (
    BRATS_METRICS,
    METRICS,
    RESULTS_INDENT,
    add_statistics,
    collect_results,
    environment,
    held_out_cases,
    read_brats_scores,
)
from kd_lab.benchmark.costs import measure_costs, measure_inference, network_sizes
from kd_lab.benchmark.graph import benchmark_stages, regime_results, regime_rows, run_benchmark
from kd_lab.benchmark.plan import (
    GUIDANCE_SECONDS,
    REGIMES,
    SELECTION_RULES,
    BenchmarkSettings,
    cli_overrides,
    estimate_seconds,
    row_schedule,
    run_dir,
    run_name,
    schedule,
    split_cases,
    student_cases,
    teacher_seed_for,
    training_datalist,
)
from kd_lab.benchmark.rows import BRANCH_ROWS, ROW_SETS, ROWS, ROWS_BY_KEY, Row, expand_rows, selected_rows

__all__ = [
    "BRANCH_ROWS",
    "BRATS_METRICS",
    "GUIDANCE_SECONDS",
    "METRICS",
    "REGIMES",
    "RESULTS_INDENT",
    "ROWS",
    "ROWS_BY_KEY",
    "ROW_SETS",
    "SELECTION_RULES",
    "BenchmarkSettings",
    "Row",
    "add_statistics",
    "benchmark_stages",
    "cli_overrides",
    "collect_results",
    "environment",
    "estimate_seconds",
    "expand_rows",
    "held_out_cases",
    "measure_costs",
    "measure_inference",
    "network_sizes",
    "read_brats_scores",
    "regime_results",
    "regime_rows",
    "row_schedule",
    "run_benchmark",
    "run_dir",
    "run_name",
    "schedule",
    "selected_rows",
    "split_cases",
    "student_cases",
    "teacher_seed_for",
    "training_datalist",
]
