"""Tumour predicted on healthy (tumour-free) phantoms, where every voxel is a false positive, and Dice on phantoms of
a generator seed never trained on, for one or more trained networks; writes a Markdown report.

    brats-kd false-positives --ckpt student=outputs/demo/distilled_student/models/model.pt \
        --ckpt teacher=outputs/demo/hybrid_teacher/models/model.pt --bundle teacher=bundles/hybrid_teacher

Each network runs as brats-kd segment runs it: its bundle's inference.json (--bundle, default the distilled student),
at the grid its weights were trained on (training_geometry.json beside them; --pixdim for weights trained before that
file existed). The phantoms are made once below --output-dir from fixed seeds, so networks are measured on the same
brains (kd_components/evaluation/false_positives.py). A network that cannot be loaded is named and the others are
measured; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brats-kd false-positives``."""
    parser.add_argument("--ckpt", action="append", required=True, help="NAME=weights (repeat for several networks)")
    parser.add_argument("--bundle", action="append", default=[], help="NAME=bundle folder (default: the student)")
    parser.add_argument(
        "--overlay", action="append", default=[], help="NAME=config JSON merged over inference.json (e.g. demo.json)"
    )
    parser.add_argument("--pixdim", type=float, nargs=3, help="voxel size the weights were trained at, if not recorded")
    parser.add_argument("--cases", type=int, default=8, help="healthy and unseen-seed phantoms, each (default 8)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/false_positives"), help="phantoms, JSON")
    parser.add_argument("--output", type=Path, help="the report (default: OUTPUT_DIR/false_positives.md)")
    parser.add_argument("--notes", type=Path, help="Markdown appended as the report's Notes")


def run(args: argparse.Namespace) -> int:
    """Measure every named network; the exit status."""
    import datetime
    import json

    from kd_components.checkpoints.state import CheckpointError
    from kd_components.evaluation.false_positives import make_probe_data, measure, render
    from kd_components.io import atomic_path, parse_named_paths, save_json_atomic
    from kd_components.segment import EngineError, Segmenter, default_bundle

    if args.cases < 1:
        print(f"error: --cases must be at least 1, got {args.cases}", file=sys.stderr)
        return 2
    try:
        weights = parse_named_paths(args.ckpt, "--ckpt")
        bundles = parse_named_paths(args.bundle, "--bundle")
        overlays = parse_named_paths(args.overlay, "--overlay")
        loaded_overlays = {name: json.loads(path.read_text()) for name, path in overlays.items()}
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    unknown = sorted((set(bundles) | set(overlays)) - set(weights))
    if unknown:
        print(f"error: --bundle/--overlay name networks without --ckpt: {', '.join(unknown)}", file=sys.stderr)
        return 2
    folders = make_probe_data(args.output_dir / "data", args.cases)
    pixdim = {"pixdim": list(args.pixdim)} if args.pixdim else {}
    rows, failed = {}, []
    for name, ckpt in weights.items():
        print(f"[{name}] {ckpt}", flush=True)
        try:
            segmenter = Segmenter(
                bundles.get(name, default_bundle()),
                ckpt,
                overrides=loaded_overlays.get(name, {}) | pixdim,
                log=lambda line: None,
            )
        except (FileNotFoundError, EngineError, CheckpointError) as err:
            failed.append(f"{name}: {err}")
            continue
        rows[name] = measure(segmenter, folders)
        save_json_atomic(rows, args.output_dir / "results.json")
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    if not rows:
        return 1
    output = args.output or args.output_dir / "false_positives.md"
    date = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    page = [
        "# False positives on healthy phantoms, Dice on an unseen phantom seed",
        "",
        render(rows, args.cases, args.command_line, date),
    ]
    if args.notes:
        page += ["", "## Notes", "", args.notes.read_text().strip()]
    with atomic_path(output) as tmp:
        tmp.write_text("\n".join(page) + "\n")
    print(f"wrote {output}")
    return 1 if failed else 0
