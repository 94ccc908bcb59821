"""The ``brats-kd`` command (installed with the package).

``brats-kd evaluate PREDICTIONS DATA_DIR``: score label maps ``PREDICTIONS/<case_id>.nii.gz`` against the BraTS
cases below DATA_DIR with the BraTS challenge's metrics (per region: global Dice, HD95 and NSD, lesion-wise Dice and
HD95, lesion TP/FP/FN). Prints a table and writes ``brats_metrics.csv`` (per case) and ``brats_summary.csv`` (per
region) atomically. A case that cannot be scored is named with the file and the reason; the others are scored; the
exit status is then 1.

``brats-kd segment INPUT... -o OUT``: segment BraTS cases with the distilled student (or any bundle) on a CPU
or GPU, with no datalist. Each INPUT is a case folder (named by its case id), or a folder searched for case
folders; ``--t1c --t1n --t2w --t2f`` give one case as four files. Writes ``OUT/<case_id>.nii.gz`` (BraTS
labels on the input's grid) and ``OUT/volumes.csv`` / ``volumes.json`` (mL per case), each atomically and
after every case. A case that cannot be segmented is skipped and named; the others are written; the exit
status is then 1 (2 for a usage error: no inputs, a bundle or checkpoint that does not exist).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kd_components.constants import ET_LABEL, LEGACY_ET_LABEL, MODALITIES

if TYPE_CHECKING:
    from kd_components.data.brats import BratsCase

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``brats-kd`` parser with its subcommands."""
    from kd_components.segment.engines import ENGINES, PRECISIONS

    parser = argparse.ArgumentParser(prog="brats-kd", description="BraTS-KD: brain-tumour segmentation on a CPU.")
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser(
        "segment",
        help="segment BraTS cases (case folders, folders of cases, or four files)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    seg.add_argument("inputs", nargs="*", type=Path, help="case folders or folders of case folders")
    for modality in MODALITIES:
        seg.add_argument(f"--{modality}", type=Path, help=f"the {modality} file of one case given as four files")
    seg.add_argument("--case-id", help="id of the case given as four files (default: from the t1c file name)")
    seg.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    seg.add_argument("--bundle", type=Path, help="bundle folder (default: the distilled student of this package)")
    seg.add_argument("--ckpt", type=Path, help="weights (default: <bundle>/models/model.pt)")
    seg.add_argument("--engine", choices=ENGINES, default="auto", help="auto: OpenVINO on a CPU, PyTorch on CUDA")
    seg.add_argument("--precision", choices=PRECISIONS, default="fp32", help="int8: OpenVINO, NNCF-quantized")
    seg.add_argument("--device", help="device of the torch engine (default: cuda:0 if available, else cpu)")
    seg.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    seg.add_argument("--no-crop", action="store_true", help="run the sliding window over the whole grid")
    seg.add_argument(
        "--sw-overlap", type=float, help="sliding-window overlap (default: the bundle's inference.json sw_overlap)"
    )
    seg.add_argument(
        "--et-label",
        type=int,
        choices=(ET_LABEL, LEGACY_ET_LABEL),
        default=ET_LABEL,
        help="ET value in the label maps: 3 (BraTS 2023, default) or 4 (BraTS 2018-2022)",
    )
    seg.add_argument("--cache-dir", type=Path, help="where the ONNX export is kept (default: beside the checkpoint)")
    seg.add_argument(
        "--calibration-cases", type=int, default=4, help="int8: the first N cases calibrate the quantization"
    )
    seg.add_argument(
        "--no-postprocess",
        action="store_true",
        help="keep the network's label map as it is (default: the bundle's post-processing, inference.json)",
    )
    seg.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    seg.set_defaults(run=segment_command)

    ev = commands.add_parser(
        "evaluate",
        help="score label maps against BraTS cases with the challenge's (lesion-wise) metrics",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    ev.add_argument("predictions", type=Path, help="folder of label maps <case_id>.nii.gz")
    ev.add_argument("dataset_dir", type=Path, help="folder of BraTS case folders with their -seg files (any depth)")
    ev.add_argument("-o", "--output", type=Path, help="where the CSVs go (default: the predictions folder)")
    ev.add_argument("--cases", nargs="+", metavar="CASE_ID", help="only these cases (default: every labelled one)")
    ev.add_argument("--datalist", type=Path, help="score the cases of one split of this datalist (--split, --fold)")
    ev.add_argument("--split", default="validation", help="datalist split: validation (default), train, labelled")
    ev.add_argument("--fold", type=int, default=0, help="the datalist's validation fold (default 0)")
    ev.add_argument(
        "--et-label",
        type=int,
        choices=(ET_LABEL, LEGACY_ET_LABEL),
        default=ET_LABEL,
        help="ET value in both label maps: 3 (BraTS 2023, default) or 4 (BraTS 2018-2022)",
    )
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.set_defaults(run=evaluate_command)
    return parser


def segment_command(args: argparse.Namespace) -> int:
    """Run ``brats-kd segment``; the exit status."""
    from tqdm import tqdm

    from kd_components.data.brats import validate_case
    from kd_components.handlers.region_volumes import write_volume_table
    from kd_components.io import OutputDirError, check_output_dir
    from kd_components.segment import CaseFailed, EngineError, Segmenter, resolve_inputs

    files = {m: getattr(args, m) for m in MODALITIES}
    found = resolve_inputs(args.inputs, files, args.case_id)
    if not found.cases and not found.problems:
        print("error: nothing to segment: give case folders, folders of cases or --t1c ... --t2f", file=sys.stderr)
        return 2
    failed = [str(p) for p in found.problems]
    ready = [c for c in found.cases if not c.problems]
    failed += [str(p) for c in found.cases for p in c.problems]
    if not ready:
        return _report(failed, 0, args.output)
    try:
        check_output_dir(args.output)
        segmenter = Segmenter(
            args.bundle,
            args.ckpt,
            engine=args.engine,
            precision=args.precision,
            device=args.device,
            crop=not args.no_crop,
            et_label=args.et_label,
            cache_dir=args.cache_dir,
            threads=args.threads,
            calibration_cases=ready[: args.calibration_cases] if args.precision == "int8" else (),
            overrides=_segment_overrides(args),
            log=lambda line: print(line, file=sys.stderr),
        )
    except (FileNotFoundError, EngineError, OutputDirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{len(ready)} case(s); network {segmenter.bundle.name} ({segmenter.ckpt}), engine {segmenter.engine_name} "
        f"{segmenter.precision}, crop {'on' if segmenter.crop else 'off'}, overlap {segmenter.overlap}",
        file=sys.stderr,
    )
    rows = []
    progress = tqdm(ready, desc="segment", unit="case", disable=args.no_progress, file=sys.stderr)
    for case in progress:
        start = time.perf_counter()
        report = validate_case(case, et_label=args.et_label, headers_only=True)  # voxels: checked once loaded
        image_problems = [p for p in report.problems if p.file is None or p.file != getattr(case.label, "name", None)]
        if image_problems:  # a faulty reference segmentation in the folder does not stop inference
            failed += [str(p) for p in image_problems]
            continue
        try:
            segmentation = segmenter.segment(case)
            path = segmenter.write(segmentation, args.output)
        except CaseFailed as err:
            failed.append(str(err))
            continue
        rows.append({"case_id": case.case_id, **segmentation.volumes, "seconds": round(time.perf_counter() - start, 3)})
        write_volume_table(rows, args.output)
        progress.write(f"{case.case_id}: {path} ({segmentation.volumes['WT_ml']:.1f} mL whole tumour)", file=sys.stderr)
    return _report(failed, len(rows), args.output)


def _segment_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The ``inference.json`` settings the ``segment`` options change."""
    overrides: dict[str, object] = {}
    if args.sw_overlap is not None:
        overrides["sw_overlap"] = args.sw_overlap
    if args.no_postprocess:
        overrides["postprocess"] = False
    return overrides


def evaluate_command(args: argparse.Namespace) -> int:
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
    if args.datalist is not None:
        try:
            items = load_datalist_split(args.datalist, args.dataset_dir, args.split, args.fold, check_images=False)
        except (OSError, ValueError) as err:
            print(f"error: {args.datalist}: {err}", file=sys.stderr)
            return 2
        listed = [str(item["case_id"]) for item in items]
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
    return 1 if evaluation.problems else 0


def _report(failed: list[str], written: int, output: Path) -> int:
    """Print what was not segmented and why, and how many cases were written; the exit status (1: a problem)."""
    if failed:
        print(f"{len(failed)} problem(s); these were not segmented:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
    print(f"{written} case(s) written to {output}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brats-kd``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
