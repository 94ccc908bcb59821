"""The benchmark's row catalogue: every teacher and student configuration it can train, and the named row sets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kd_components.networks.candidates import DEFAULT_CANDIDATE, MODEL_ZOO_SEGRESNET, STUDENT_CANDIDATES

if TYPE_CHECKING:
    from kd_lab.benchmark.plan import BenchmarkSettings

__all__ = ["BRANCH_ROWS", "DEFAULT_ROWS", "ROWS", "ROWS_BY_KEY", "ROW_SETS", "Row", "expand_rows", "selected_rows"]


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    Args:
        key: short name used for folders.
        label: the line's name in the table.
        network: name for :func:`kd_lab.measure.build_network` (cost columns).
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
    # the teacher's step: 1.4 s (epochs of 24 steps in 33-34 s on the idle 2-core AMD EPYC, 2026-12-07)
    Row("teacher", "hybrid teacher (demo size)", "demo", kind="teacher", step_cost=3.5, case_cost=4.0),
    # the hybrid with its fusion scale logits at the base learning rate (as before fusion_lr_factor)
    Row(
        "teacher_fusion_lr1",
        "hybrid teacher (demo size), fusion scale weights at the base learning rate",
        "demo",
        ("--fusion_lr_factor", "1"),
        kind="teacher",
        step_cost=3.5,
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
#: The rows of the results pages: the label-only student, soft-target KD, soft-target and feature KD, the same with
#: the unlabelled scans paired and their patches guided by the teacher, and the model-zoo SegResNet (the hybrid
#: teacher comes with every run). The unlabelled scans without guidance, interleaved, or with pseudo-labels, the
#: student search's ``kd_*`` rows and the :data:`BRANCH_ROWS` are rows a run can name (``--rows``).
DEFAULT_ROWS: tuple[str, ...] = ("labels_only", "soft", "soft_feature", "guided_paired", "segresnet16")
#: Named row sets, each the rows of one page, for ``scripts/benchmark_kd.py --rows NAME`` (and the Makefile's targets):
#: ``branches`` is ``docs/branches.md`` (``features_cnn_vit`` of :data:`BRANCH_ROWS` was never run there), ``students``
#: is ``docs/students_kd.md``, the Dice half of the CPU student search (every other candidate with KD).
ROW_SETS: dict[str, tuple[str, ...]] = {
    "branches": (
        "labels_only",
        "soft_feature",
        *(r for r in BRANCH_ROWS if r != "features_cnn_vit"),
    ),
    "students": (
        "labels_only",
        "soft_feature",
        *(f"kd_{name}" for name in STUDENT_CANDIDATES if name != DEFAULT_CANDIDATE.name),
    ),
}


def expand_rows(names: Sequence[str]) -> tuple[str, ...]:
    """Row keys and names of :data:`ROW_SETS` -> row keys, in the given order, each once.

    Raises:
        ValueError: a name that is neither a row nor a row set.
    """
    keys: list[str] = []
    for name in names:
        if name not in ROW_SETS and name not in ROWS_BY_KEY:
            raise ValueError(f"unknown row or row set {name!r}; row sets: {sorted(ROW_SETS)}")
        keys += [k for k in ROW_SETS.get(name, (name,)) if k not in keys]
    return tuple(keys)


def selected_rows(settings: BenchmarkSettings) -> list[Row]:
    """The rows a run has, in :data:`ROWS` order: those of ``settings.rows``, the hybrid teacher (every run
    has it) and the teacher of every selected distillation row."""
    keys = {"teacher", *settings.rows}
    keys |= {ROWS_BY_KEY[k].teacher for k in settings.rows if ROWS_BY_KEY[k].kind == "student"}
    return [r for r in ROWS if r.key in keys]
