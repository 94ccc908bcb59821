"""Segment BraTS cases with the distilled student (or any bundle) on a CPU or GPU, with no datalist.

Each INPUT is a case folder (named by its case id), or a folder searched for case folders; --t1c --t1n --t2w
--t2f give one case as four files. Writes OUT/<case_id>.nii.gz (BraTS labels on the input's grid) and
OUT/volumes.csv / volumes.json (mL per case), each atomically and after every case. A case that cannot be
segmented is skipped and named; the others are written; the exit status is then 1 (2 for a usage error: no
inputs, a bundle or checkpoint that does not exist). The cases of a folder overlap: the next one is read while the
network runs on this one. ``--watch`` keeps the process and its network and segments the cases that arrive in the
input folders (:mod:`kd_components.segment.watch`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kd_components.commands import add_et_label_argument
from kd_components.constants import MODALITIES

if TYPE_CHECKING:
    from collections.abc import Callable

    from monai.data import MetaTensor

    from kd_components.data.brats import BratsCase
    from kd_components.segment import Segmentation, Segmenter

__all__ = ["add_arguments", "overrides", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brats-kd segment``."""
    from kd_components.segment.engines import ENGINES, PRECISIONS

    parser.add_argument("inputs", nargs="*", type=Path, help="case folders or folders of case folders")
    for modality in MODALITIES:
        parser.add_argument(f"--{modality}", type=Path, help=f"the {modality} file of one case given as four files")
    parser.add_argument("--case-id", help="id of the case given as four files (default: from the t1c file name)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the distilled student of this package)")
    parser.add_argument("--ckpt", type=Path, help="weights (default: <bundle>/models/model.pt)")
    parser.add_argument(
        "--config",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="bundle config overlays (JSON) applied onto the bundle's inference.json, in order: the ones the weights "
        "were trained with, e.g. <bundle>/configs/demo.json for a network trained with the demo overlay",
    )
    parser.add_argument("--engine", choices=ENGINES, default="auto", help="auto: OpenVINO on a CPU, PyTorch on CUDA")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="int8: OpenVINO, NNCF-quantized")
    parser.add_argument("--device", help="device of the torch engine (default: cuda:0 if available, else cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    parser.add_argument("--no-crop", action="store_true", help="run the sliding window over the whole grid")
    parser.add_argument(
        "--sw-overlap", type=float, help="sliding-window overlap (default: the bundle's inference.json sw_overlap)"
    )
    add_et_label_argument(parser, "the label maps")
    parser.add_argument("--cache-dir", type=Path, help="where the ONNX export is kept (default: beside the checkpoint)")
    parser.add_argument(
        "--calibration-cases", type=int, default=4, help="int8: the first N cases calibrate the quantization"
    )
    parser.add_argument(
        "--no-postprocess",
        action="store_true",
        help="keep the network's label map as it is (default: the bundle's post-processing, inference.json)",
    )
    parser.add_argument(
        "--no-plausibility-check",
        action="store_true",
        help="segment scans that do not look like a whole brain with the modalities in their places (default: refuse)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=5.0,
        metavar="SECONDS",
        help="keep running and segment the cases that arrive in the input folders, polling every SECONDS (default "
        "5); each case once its files stop changing; Ctrl-C or SIGTERM stops",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``brats-kd segment``; the exit status."""
    from kd_components.checkpoints.state import CheckpointError
    from kd_components.deploy import ExportedModelError
    from kd_components.io import OutputDirError, check_output_dir
    from kd_components.segment import EngineError, Segmenter, resolve_inputs

    files = {m: getattr(args, m) for m in MODALITIES}
    if args.watch is not None and (any(files.values()) or not args.inputs or args.watch <= 0):
        print("error: --watch takes input folders (not --t1c ... --t2f) and a positive interval", file=sys.stderr)
        return 2
    try:
        changed = overrides(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    found = resolve_inputs(args.inputs, files, args.case_id, output_dir=args.output)
    present = [c for c in found.cases if not c.problems]  # int8 calibrates on them, also when watching
    if args.watch is not None:
        found.cases = []  # the watch takes every case, those already there included, once its files are settled
    if not found.cases and not found.problems and args.watch is None:
        print("error: nothing to segment: give case folders, folders of cases or --t1c ... --t2f", file=sys.stderr)
        return 2
    failed = [str(p) for p in found.problems]
    failed += [str(p) for c in found.cases for p in c.problems]
    ready = []
    for case, problem in _output_problems([c for c in found.cases if not c.problems], args.output):
        if problem is None:
            ready.append(case)
        else:
            failed.append(f"{case.case_id}: {problem}")
    if not ready and args.watch is None:
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
            calibration_cases=(ready or present) if args.precision == "int8" else (),
            calibration_count=args.calibration_cases,
            plausibility=not args.no_plausibility_check,
            overrides=changed,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (FileNotFoundError, EngineError, OutputDirError, CheckpointError, ExportedModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{len(ready)} case(s); network {segmenter.bundle.name} ({segmenter.ckpt}), engine {segmenter.engine_name} "
        f"{segmenter.precision}, crop {'on' if segmenter.crop else 'off'}, overlap {segmenter.overlap}",
        file=sys.stderr,
    )
    if args.watch is not None:
        return _watch(segmenter, args)
    rows = _segment_cases(segmenter, ready, args, failed)
    return _report(failed, len(rows), args.output)


def _watch(segmenter: Segmenter, args: argparse.Namespace) -> int:
    """``--watch``: segment the cases of the input folders as they arrive (:class:`FolderWatch`) until SIGINT or
    SIGTERM, which end the case in work (its label map and row are written) and stop; a second signal stops at
    once. Then the report of every case written or not."""
    import signal
    import threading

    from kd_components.segment.watch import FolderWatch

    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    watch = FolderWatch(args.inputs, args.output)
    failed: list[str] = []
    written = 0
    print(f"watching {', '.join(map(str, args.inputs))} every {args.watch:g} s (Ctrl-C stops)", file=sys.stderr)
    try:
        while not stopping.is_set():
            cases, problems = watch.poll()
            for line in problems:
                print(f"not segmented: {line}", file=sys.stderr)
            failed += problems
            if cases:
                now: list[str] = []
                written += len(_segment_cases(segmenter, cases, args, now, stop=stopping.is_set))
                for line in now:
                    print(f"not segmented: {line}", file=sys.stderr)
                failed += now
            stopping.wait(args.watch)
        print("stopped watching", file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _report(failed, written, args.output)


def _segment_cases(
    segmenter: Segmenter,
    ready: list[BratsCase],
    args: argparse.Namespace,
    failed: list[str],
    stop: Callable[[], bool] = lambda: False,
) -> list[dict]:
    """Segment ``ready`` in order, the next case read (:meth:`Segmenter.load`) while the network runs on this one and
    the label map of the last one is written meanwhile (:func:`~kd_components.segment.pipeline.prefetch`); the volume
    table's rows of the cases written. A case that fails is added to ``failed`` and the others go on; once ``stop()``
    is true no further case is begun.

    A row's ``seconds`` are the case's own stages (read, checks, network, post-processing, write): what the case
    takes alone, without the overlap with its neighbours.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm import tqdm

    from kd_components.handlers.region_volumes import update_volume_table
    from kd_components.segment import CaseFailed
    from kd_components.segment.inputs import header_problems
    from kd_components.segment.pipeline import prefetch

    def read(case: BratsCase) -> tuple[MetaTensor, float]:
        start = time.perf_counter()
        problems = header_problems(case, args.et_label)
        if problems:
            raise CaseFailed("\n".join(problems))
        return segmenter.load(case), time.perf_counter() - start

    def write(segmentation: Segmentation) -> tuple[Path, dict]:
        start = time.perf_counter()
        path = segmenter.write(segmentation, args.output)
        seconds = sum(segmentation.seconds.values()) + time.perf_counter() - start
        row = {"case_id": segmentation.case_id, **segmentation.volumes, "seconds": round(seconds, 3)}
        update_volume_table([row], args.output)  # the folder's table: earlier runs' cases kept, safe in parallel
        return path, row

    rows: list[dict] = []

    def written(case_id: str, future: Future) -> None:
        try:
            path, row = future.result()
        except CaseFailed as err:
            failed.append(str(err))
            return
        except OSError as err:  # a full disk or a folder made read-only during the run: the next cases are tried
            failed.append(f"{case_id}: cannot write to {args.output} ({err.strerror or err})")
            return
        rows.append(row)
        progress.write(f"{case_id}: {path} ({row['WT_ml']:.1f} mL whole tumour)", file=sys.stderr)

    progress = tqdm(total=len(ready), desc="segment", unit="case", disable=args.no_progress, file=sys.stderr)
    last: tuple[str, Future] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer:
        for outcome in prefetch(ready, read):
            if stop():
                break
            case = outcome.item
            try:
                if outcome.error is not None:
                    raise outcome.error
                image, seconds = outcome.value
                names = [case.images[m].name for m in MODALITIES]
                segmentation = segmenter.segment_image(case.case_id, image, names)
                segmentation.seconds = {"read": seconds, **segmentation.seconds}
            except CaseFailed as err:
                failed.append(str(err))
                progress.update()
                continue
            if last is not None:
                written(*last)
            last = (case.case_id, writer.submit(write, segmentation))
            progress.update()
        if last is not None:
            written(*last)
    progress.close()
    return rows


def _output_problems(cases: list[BratsCase], output: Path) -> list[tuple[BratsCase, str | None]]:
    """Each case with the reason its label map ``output/<case_id>.nii.gz`` must not be written, or ``None``: a case
    id that is no plain file name, a path that is one of this run's input files (four files in the output folder
    named ``t1c.nii.gz`` ... would have been overwritten), or a file there that segment did not write (a user's
    segmentation or reference: only segment's own label maps, marked in their headers, are replaced)."""
    from kd_components.segment.inputs import case_id_problem, foreign_output_problem

    inputs = {
        path.resolve()
        for case in cases
        for path in (*case.images.values(), *([case.label] if case.label else []))
        if path is not None
    }
    checked = []
    for case in cases:
        problem = case_id_problem(case.case_id)
        target = output / f"{case.case_id}.nii.gz"
        if problem is None and target.resolve() in inputs:
            problem = f"its label map {target} would overwrite an input file: choose another -o or --case-id"
        elif problem is None:
            problem = foreign_output_problem(target)
        checked.append((case, problem))
    return checked


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The ``inference.json`` settings the ``segment`` options change: the ``--config`` overlays in order, then the
    options of their own.

    Raises:
        ValueError: an overlay that cannot be read or is not a JSON object (the message names the file).
    """
    changed: dict[str, object] = {}
    for path in args.config:
        changed.update(_read_overlay(path))
    if args.sw_overlap is not None:
        changed["sw_overlap"] = args.sw_overlap
    if args.no_postprocess:
        changed["postprocess"] = False
    return changed


def _read_overlay(path: Path) -> dict[str, object]:
    """A ``--config`` file: a JSON object of bundle config ids (``"patch_size"``, ``"network_def#init_filters"``)."""
    import json

    try:
        overlay = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: cannot be read ({err})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {path}: not JSON ({err})") from err
    if not isinstance(overlay, dict):
        raise ValueError(f"--config {path}: expected a JSON object of config ids, got {type(overlay).__name__}")
    return overlay


def _report(failed: list[str], written: int, output: Path) -> int:
    """Print what was not segmented and why, and how many cases were written; the exit status (1: a problem)."""
    if failed:
        print(f"{len(failed)} problem(s); these were not segmented:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
    print(f"{written} case(s) written to {output}", file=sys.stderr)
    return 1 if failed else 0
