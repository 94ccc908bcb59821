"""Validate a BraTS-2023-layout data set and write a MONAI decathlon-style datalist with folds.

    brats-kd datalist --dataset-dir D --output F [--num-folds 5] [--seed 0] [--et-label 3] [--skip-invalid]

Cases with a segmentation go to "training" (with a "fold"), cases without one to "testing". Case folders are found
at any depth (names in any letter case, symlinked folders followed); every folder that holds NIfTI files but is not
taken as a case is named with the reason (a name that is not a BraTS case id, with the id it probably should have).
Every case is checked first (modalities, readability, 3D, shapes, affines, voxel values as the network reads them,
label values). Any invalid case or folder not taken stops the run with one line per problem, unless --skip-invalid:
then the valid cases are written and the others are listed (on stderr, and under "invalid" and "not_cases" in the
JSON). Exit status: 0 on success, 1 when invalid cases stop the run, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import TYPE_CHECKING

from kd_components.commands import add_et_label_argument
from kd_components.data.brats import AFFINE_ATOL

if TYPE_CHECKING:
    from kd_components.data.brats import CaseProblem

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brats-kd datalist``."""
    parser.add_argument("--dataset-dir", required=True, help="root of the BraTS-2023-layout case folders")
    parser.add_argument("--output", required=True, help="datalist JSON to write")
    parser.add_argument("--num-folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    add_et_label_argument(parser, "the segmentations")
    parser.add_argument("--affine-atol", type=float, default=AFFINE_ATOL, help="affine tolerance within a case (mm)")
    parser.add_argument("--skip-invalid", action="store_true", help="write the valid cases and list the others")
    parser.add_argument("--workers", type=int, default=None, help="validation processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _print_not_cases(not_cases: list[CaseProblem], dataset_dir: str, prefix: str) -> None:
    """The folders not taken as cases, on stderr: ``<prefix>: N folder(s) under D ...`` and one line each."""
    print(
        f"{prefix}: {len(not_cases)} folder(s) under {dataset_dir} hold NIfTI files but are not taken as cases:",
        file=sys.stderr,
    )
    for problem in not_cases:
        print(f"  {problem.case_id!r}: {problem.problem}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Validate the cases and write the datalist; the exit status."""
    from kd_components.data.brats import InvalidCaseError, find_cases, validate_cases
    from kd_components.data.datalist import TRAINING_ONLY_FOLD, build_datalist, empty_segmentations
    from kd_components.io import save_json_atomic

    try:
        discovery = find_cases(args.dataset_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    cases, not_cases = discovery.cases, discovery.not_cases
    for note in discovery.notes:
        print(f"note: {note}", file=sys.stderr)
    if not cases:
        print(
            f"error: no BraTS case folders (named like BraTS-GLI-00000-000) under {args.dataset_dir}", file=sys.stderr
        )
        if not_cases:
            _print_not_cases(not_cases, args.dataset_dir, "error")
        return 1
    reports = validate_cases(
        cases, et_label=args.et_label, affine_atol=args.affine_atol, workers=args.workers, progress=not args.quiet
    )
    try:
        datalist = build_datalist(
            reports,
            args.dataset_dir,
            args.num_folds,
            args.seed,
            args.et_label,
            skip_invalid=args.skip_invalid,
            not_cases=not_cases,
        )
    except InvalidCaseError as err:
        problems = [p for p in err.problems if p not in not_cases]
        if problems:
            bad = sorted({p.case_id for p in problems})
            print(f"error: {len(bad)} of {len(cases)} cases are invalid:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
        if not_cases:
            _print_not_cases(not_cases, args.dataset_dir, "error")
        print("fix them, or pass --skip-invalid to write the valid cases and list these", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    save_json_atomic(datalist, args.output)
    if datalist["invalid"]:
        skipped = sorted({p["case_id"] for p in datalist["invalid"]})
        print(f"warning: skipped {len(skipped)} invalid case(s):", file=sys.stderr)
        for p in datalist["invalid"]:
            print(f"  {p['case_id']}: {p['file']}: {p['problem']}", file=sys.stderr)
    if not_cases:
        _print_not_cases(not_cases, args.dataset_dir, "warning")
    for case_id in empty_segmentations(reports):
        print(
            f"note: {case_id}: the segmentation holds no tumour (every voxel 0): kept for training in every fold "
            f"(fold {TRAINING_ONLY_FOLD}) and never validated, as its Dice is undefined for an empty prediction",
            file=sys.stderr,
        )
    fold_sizes = Counter(e["fold"] for e in datalist["training"])
    folds = ", ".join(f"{k}:{fold_sizes[k]}" for k in sorted(fold_sizes))
    print(
        f"wrote {args.output}: {datalist['numTraining']} labelled cases (fold sizes {folds}), "
        f"{datalist['numTest']} unlabelled, {len({p['case_id'] for p in datalist['invalid']})} skipped, "
        f"{len(datalist['not_cases'])} folder(s) not taken as cases"
    )
    return 0
