"""Choose a network's post-processing thresholds on the validation fold, and measure what they change.

    brats-kd choose-postprocessing --dataset-dir outputs/demo/data --datalist outputs/demo/datalist.json \
        --predictions student=outputs/demo/distilled_student/predictions/validation --output postprocess.json

Each --predictions folder holds the network's label maps of the validation cases made with its post-processing off
(--postprocess false of the bundle's inference.json, or brats-kd segment --no-postprocess). Only the cases of the
datalist's validation fold (--fold) are used, never its test cases. Prints, per network, the chosen values of the
inference.json settings postprocess_min_mm3 and postprocess_et_to_netc_mm3 and a table of the BraTS metrics
without -> with them (kd_components/evaluation/tuning.py says how they are chosen); --output also writes them as
JSON. Exit status 1 when a network has no validation case that can be scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kd_components.commands import add_et_label_argument

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brats-kd choose-postprocessing``."""
    from kd_components.evaluation.tuning import DEFAULT_ET_TO_NETC_MM3, DEFAULT_MIN_COMPONENT_MM3

    parser.add_argument("--dataset-dir", type=Path, required=True, help="the data set (case folders with -seg files)")
    parser.add_argument("--datalist", type=Path, required=True, help="the datalist whose validation fold is used")
    parser.add_argument("--fold", type=int, default=0, help="the validation fold (default 0)")
    parser.add_argument(
        "--predictions", action="append", required=True, help="NAME=folder of validation label maps (repeatable)"
    )
    parser.add_argument("--min-mm3", type=float, nargs="+", default=DEFAULT_MIN_COMPONENT_MM3, help="candidates")
    parser.add_argument("--et-to-netc-mm3", type=float, nargs="+", default=DEFAULT_ET_TO_NETC_MM3, help="candidates")
    add_et_label_argument(parser, "both label maps")
    parser.add_argument("--output", type=Path, help="write the choices and the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    """Choose the thresholds of every named network; the exit status."""
    from kd_components.data.brats import find_cases
    from kd_components.data.datalist import load_datalist_split
    from kd_components.evaluation.folder import EvaluationError, find_prediction, load_case_pair
    from kd_components.evaluation.tuning import TuningCase, choose_postprocessing, comparison_table
    from kd_components.io import parse_named_paths, save_json_atomic

    try:
        folders = parse_named_paths(args.predictions, "--predictions")
        items = load_datalist_split(args.datalist, args.dataset_dir, "validation", args.fold, check_images=False)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    validation = [str(item["case_id"]) for item in items]
    cases = {c.case_id: c for c in find_cases(args.dataset_dir).cases}
    results, report, empty = {}, {}, []
    for name, folder in folders.items():
        loaded, problems = [], []
        for case_id in validation:
            try:
                prediction = find_prediction(folder, case_id) if folder.is_dir() else None
                if case_id not in cases or prediction is None:
                    problems.append(f"{case_id}: no case folder or no prediction in {folder}")
                    continue
                pred, ref, spacing = load_case_pair(cases[case_id], prediction, args.et_label)
            except EvaluationError as err:
                problems.append(str(err))
                continue
            loaded.append(TuningCase(case_id, pred, ref, spacing))
        if problems:
            print(f"{name}: {len(problems)} validation case(s) left out:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
        print(f"{name}: {len(loaded)} validation case(s) of fold {args.fold}", file=sys.stderr)
        if not loaded:
            empty.append(name)
            continue

        def log(line: str) -> None:
            print(f"  {line}", file=sys.stderr)

        result = choose_postprocessing(loaded, args.min_mm3, args.et_to_netc_mm3, args.et_label, log=log)
        results[name] = result
        report[name] = {
            "cases": [c.case_id for c in loaded],
            "chosen": result.config_values(),
            "before": result.before,
            "after": result.after,
            "trials": result.trials,
        }
        print(f"{name}: {json.dumps(result.config_values())}")
    if results:
        print(comparison_table(results))
    if args.output and report:
        save_json_atomic(report, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    if empty:
        print(f"error: no validation case could be scored for {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0
