"""Score label maps PREDICTIONS/<case_id>.nii.gz against the BraTS cases below DATA_DIR with the BraTS challenge's
metrics (per region: global Dice, HD95 and NSD, lesion-wise Dice and HD95, lesion TP/FP/FN).

Prints a table and writes brats_metrics.csv (per case) and brats_summary.csv (per region) atomically. A case that
cannot be scored (two prediction files for one case, a wrong grid, unknown labels) is named with the file and the
reason (two prediction files for one case are also scored as a missing prediction); a case without a prediction is
scored as BraTS scores it, as an empty prediction, and named; --cases outside the --datalist's split are named and not
scored; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from kd_components.commands import add_et_label_argument
from kd_components.constants import MISSED_REGION_HD_MM

if TYPE_CHECKING:
    from kd_components.data.brats import BratsCase

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brats-kd evaluate``."""
    parser.add_argument("predictions", type=Path, help="folder of label maps <case_id>.nii.gz")
    parser.add_argument("dataset_dir", type=Path, help="folder of BraTS case folders with their -seg files (any depth)")
    parser.add_argument("-o", "--output", type=Path, help="where the CSVs go (default: the predictions folder)")
    parser.add_argument("--cases", nargs="+", metavar="CASE_ID", help="only these cases (default: every labelled one)")
    parser.add_argument("--datalist", type=Path, help="score the cases of one split of this datalist (--split, --fold)")
    parser.add_argument("--split", default="validation", help="datalist split: validation (default), train, labelled")
    parser.add_argument("--fold", type=int, default=0, help="the datalist's validation fold (default 0)")
    add_et_label_argument(parser, "both label maps")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``brats-kd evaluate``; the exit status."""
    from tqdm import tqdm

    from kd_components.data.datalist import load_datalist_split
    from kd_components.evaluation.folder import evaluate_folder, summary_table, write_evaluation
    from kd_components.io import OutputDirError, check_output_dir

    for folder, what in ((args.predictions, "prediction"), (args.dataset_dir, "data")):
        if not folder.is_dir():
            print(f"error: {what} folder {folder} does not exist or is not a folder", file=sys.stderr)
            return 2
    case_ids = args.cases
    outside: list[str] = []  # --cases that the datalist's split does not list
    if args.datalist is not None:
        try:
            items = load_datalist_split(args.datalist, args.dataset_dir, args.split, args.fold, check_images=False)
        except (OSError, ValueError) as err:
            print(f"error: {args.datalist}: {err}", file=sys.stderr)
            return 2
        listed = [str(item["case_id"]) for item in items]
        if case_ids and not set(case_ids) & set(listed):
            shown = ", ".join(listed[:5]) + (" ..." if len(listed) > 5 else "")
            print(
                f"error: none of --cases is in the {args.split} split (fold {args.fold}) of {args.datalist}: "
                f"{', '.join(case_ids[:5])} (it lists {shown or 'no case'})",
                file=sys.stderr,
            )
            return 2
        outside = [c for c in case_ids or [] if c not in listed]
        if outside:
            print(
                f"warning: {len(outside)} of --cases not in the {args.split} split (fold {args.fold}) of "
                f"{args.datalist}, not scored: {', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''}",
                file=sys.stderr,
            )
        case_ids = [c for c in case_ids if c in listed] if case_ids else listed
    output = args.output or args.predictions
    try:
        check_output_dir(output)
    except OutputDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def progress(cases: Iterable[BratsCase]) -> Iterable[BratsCase]:
        return tqdm(list(cases), desc="evaluate", unit="case", disable=args.no_progress, file=sys.stderr)

    evaluation = evaluate_folder(args.predictions, args.dataset_dir, case_ids, args.et_label, progress=progress)
    if evaluation.unmatched:
        shown = ", ".join(evaluation.unmatched[:5]) + (" ..." if len(evaluation.unmatched) > 5 else "")
        print(f"note: {len(evaluation.unmatched)} prediction(s) of no case evaluated: {shown}", file=sys.stderr)
    if evaluation.missing:
        shown = ", ".join(evaluation.missing[:5]) + (" ..." if len(evaluation.missing) > 5 else "")
        print(
            f"warning: {len(evaluation.missing)} case(s) have no prediction in {args.predictions} and are scored as "
            f"BraTS scores them, as an empty prediction (Dice 0 and HD95 {MISSED_REGION_HD_MM} mm where the "
            f"reference has the region): {shown}",
            file=sys.stderr,
        )
    if evaluation.scores:
        print(f"BraTS metrics of {len(evaluation.scores)} case(s) (means over cases; TP/FP/FN: sums):")
        print(summary_table(evaluation.scores))
        for path in write_evaluation(evaluation, output):
            print(f"wrote {path}", file=sys.stderr)
    if evaluation.problems:
        print(f"{len(evaluation.problems)} problem(s); these were not scored:", file=sys.stderr)
        for line in evaluation.problems:
            print(f"  {line}", file=sys.stderr)
    if not evaluation.scores and not evaluation.problems:
        print(f"error: no labelled case below {args.dataset_dir}", file=sys.stderr)
        return 2
    return 1 if evaluation.problems or evaluation.missing or outside else 0
