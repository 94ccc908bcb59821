"""Run the main job on embedded phantom data: phantoms, datalist, teacher, distilled student, evaluation, report.

Finished stages are reused when the command is run again with the same settings; an
interrupted training resumes from its latest checkpoint; changed settings (or ``--fresh``)
replace what the earlier run made. See kd_lab.demo.

Example::

    python scripts/run_demo.py --output-dir outputs/demo            # about 13 minutes on 2 CPU cores
    python scripts/run_demo.py --output-dir /tmp/tiny --num-cases 8 --unlabelled 2 \\
        --teacher-epochs 1 --student-epochs 1 --val-interval 1       # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kd_lab.demo import DemoSettings, run_demo
from kd_lab.stages import StageError


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir, help="where everything goes")
    parser.add_argument("--num-cases", type=int, default=defaults.num_cases, help="phantom cases in all")
    parser.add_argument("--unlabelled", type=int, default=defaults.unlabelled, help="of which without labels")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="data, fold and training seed")
    parser.add_argument(
        "--healthy-share", type=float, default=defaults.healthy_share, help="share of labelled cases that are healthy"
    )
    parser.add_argument("--teacher-epochs", type=int, default=defaults.teacher_epochs)
    parser.add_argument("--student-epochs", type=int, default=defaults.student_epochs)
    parser.add_argument("--val-interval", type=int, default=defaults.val_interval, help="epochs between validations")
    parser.add_argument("--overlay-cases", type=int, default=defaults.overlay_cases, help="cases drawn in the report")
    parser.add_argument(
        "--probe-cases", type=int, default=defaults.probe_cases, help="healthy / unseen-seed phantoms (0: none)"
    )
    parser.add_argument(
        "--real-scans-dir",
        default=str(defaults.real_scans_dir),
        help="labelled real scans to measure both networks on ('': none; skipped with a message when absent)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results and run every stage again")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = DemoSettings(
            output_dir=args.output_dir,
            num_cases=args.num_cases,
            unlabelled=args.unlabelled,
            healthy_share=args.healthy_share,
            seed=args.seed,
            teacher_epochs=args.teacher_epochs,
            student_epochs=args.student_epochs,
            val_interval=args.val_interval,
            overlay_cases=args.overlay_cases,
            probe_cases=args.probe_cases,
            real_scans_dir=Path(args.real_scans_dir) if args.real_scans_dir else None,
        )
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    try:
        report = run_demo(settings, fresh=args.fresh)
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    print(f"\nDone in {minutes} min {seconds:02d} s. Report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
