#!/usr/bin/env python
"""Measure trained networks on real glioma scans (Dice, lesion-wise Dice, volumes, overlays), and calibrate the
phantoms' intensities against the same scans; both go into marked sections of docs/real_scans.md.

    python scripts/measure_real_scans.py --demo-dir outputs/demo              # the main job's teacher and student
    python scripts/measure_real_scans.py --bundle-dir bundles/distilled_student \\
        --ckpt outputs/demo/distilled_student/models/model.pt                 # one network
    python scripts/measure_real_scans.py --model student=S.pt --model-bundle student=bundles/distilled_student \\
        --model teacher=T.pt --model-bundle teacher=bundles/hybrid_teacher \\
        --model-overlay teacher=bundles/hybrid_teacher/configs/demo.json
    python scripts/measure_real_scans.py --calibration --phantoms 8 --phantom-seed 100   # tissue intensities only

The scans default to ../shared/real_dev beside the repository (never copied into it); a missing folder, or one
without labelled BraTS cases, is named and the exit status is 2. See kd_lab/real_scans.py and kd_lab/calibration.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from kd_components.io import parse_named_paths
from kd_lab.calibration import (
    CALIBRATION_END,
    CALIBRATION_HEADING,
    CALIBRATION_START,
    calibrate,
    render_calibration_section,
    save_calibration,
)
from kd_lab.measure import cpu_description
from kd_lab.real_scans import (
    DEFAULT_REAL_SCANS,
    MEASUREMENT_END,
    MEASUREMENT_HEADING,
    MEASUREMENT_START,
    REPO_ROOT,
    ModelSpec,
    NoRealScansError,
    demo_models,
    labelled_cases,
    measure_models,
    render_measurement_section,
    update_page_section,
)

STUDENT_BUNDLE = REPO_ROOT / "bundles" / "distilled_student"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_REAL_SCANS, help="folder of labelled BraTS cases")
    parser.add_argument("--demo-dir", type=Path, help="a main job's output: measure its teacher and student")
    parser.add_argument("--ckpt", type=Path, help="weights of one network (model.pt; training_geometry.json beside it)")
    parser.add_argument("--bundle-dir", type=Path, default=STUDENT_BUNDLE, help="bundle of --ckpt (default: student)")
    parser.add_argument("--overlay", type=Path, help="config JSON merged over --bundle-dir's inference.json")
    parser.add_argument("--name", default="student", help="name of --ckpt in tables and files (default: student)")
    parser.add_argument("--model", action="append", default=[], help="NAME=weights (repeat for several networks)")
    parser.add_argument("--model-bundle", action="append", default=[], help="NAME=bundle folder (default: student)")
    parser.add_argument("--model-overlay", action="append", default=[], help="NAME=config JSON over inference.json")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/real_scans"), help="label maps, logs, JSON")
    parser.add_argument("--page", default="docs/real_scans.md", help="page whose marked sections are written ('' none)")
    parser.add_argument("--image-dir", type=Path, default=Path("docs/img"), help="where real_scans_<name>.png go")
    parser.add_argument("--threads", type=int, help="CPU threads of each segmentation (default: every core)")
    parser.add_argument("--calibration", action="store_true", help="also measure tissue intensities vs phantoms")
    parser.add_argument("--phantoms", type=int, default=8, help="phantoms in the calibration (default 8)")
    parser.add_argument("--phantom-seed", type=int, default=100, help="their generator seed (default 100)")
    parser.add_argument(
        "--calibration-json", type=Path, default=Path("docs/real_scans_calibration.json"), help="calibration numbers"
    )
    return parser


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The networks the options name: the main job's two, --ckpt, then each --model."""
    specs = demo_models(args.demo_dir) if args.demo_dir else []
    if args.ckpt:
        specs.append(ModelSpec(args.name, args.ckpt, args.bundle_dir, args.overlay))
    weights = parse_named_paths(args.model, "--model")
    bundles = parse_named_paths(args.model_bundle, "--model-bundle")
    overlays = parse_named_paths(args.model_overlay, "--model-overlay")
    unknown = sorted((set(bundles) | set(overlays)) - set(weights))
    if unknown:
        raise SystemExit(f"error: --model-bundle/--model-overlay name networks without --model: {', '.join(unknown)}")
    specs += [ModelSpec(n, w, bundles.get(n, STUDENT_BUNDLE), overlays.get(n)) for n, w in weights.items()]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: two networks share a name: {names}")
    missing = [f"{s.name}: {path}" for s in specs for path in (s.ckpt, s.bundle) if not path.exists()]
    missing += [f"{s.name}: {s.overlay}" for s in specs if s.overlay is not None and not s.overlay.is_file()]
    if missing:
        raise SystemExit("error: not found: " + "; ".join(missing))
    return specs


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and / or the calibration; the exit status (2: no real scans, 1: a network failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    specs = model_specs(args)
    if not specs and not args.calibration:
        parser.error("nothing to do: give --demo-dir, --ckpt or --model, and / or --calibration")
    if args.phantoms < 0:
        parser.error(f"--phantoms must be at least 0, got {args.phantoms}")
    try:
        cases = labelled_cases(args.data_dir)
    except NoRealScansError as err:
        print(f"error: {err}; nothing measured", file=sys.stderr)
        return 2
    command = shlex.join(["python", "scripts/measure_real_scans.py", *(sys.argv[1:] if argv is None else argv)])
    page = Path(args.page) if args.page else None
    status = 0
    if specs:
        results = measure_models(specs, args.data_dir, args.output_dir, args.image_dir, args.threads)
        body = render_measurement_section(results, args.data_dir, command, page or Path("docs/real_scans.md"))
        print(body)
        if page is not None:
            update_page_section(page, body, MEASUREMENT_START, MEASUREMENT_END, MEASUREMENT_HEADING)
        status = 1 if any(not r.cases for r in results) else 0
    if args.calibration:
        result = calibrate(cases, args.phantoms, args.phantom_seed)
        save_calibration(result, args.calibration_json)
        body = render_calibration_section(result, command, cpu_description(), str(args.calibration_json))
        print(body)
        if page is not None:
            update_page_section(page, body, CALIBRATION_START, CALIBRATION_END, CALIBRATION_HEADING)
    return status


if __name__ == "__main__":
    sys.exit(main())
