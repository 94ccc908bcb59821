"""Benchmark teacher, distilled students and label-only students; write one results page per student regime.

The regime, rows and columns are described in kd_lab.benchmark. Every training and
test evaluation is a restartable stage: run the same command again after an interruption and it
continues; finished runs are reused. The page and its plots are generated, never edited by hand;
interpretation lives in ``--notes`` (a Markdown file appended as the page's Notes section).

Example::

    python scripts/benchmark_kd.py --estimate               # the predicted time of the default run, then exit
    python scripts/benchmark_kd.py    # docs/results_scarce.md and docs/results_compression.md (hours on 2 cores)
    python scripts/benchmark_kd.py --output-dir /tmp/bench --seeds 0 --teacher-seeds 0 --teacher-labelled 3 \\
        --labelled 2 --validation 1 --unlabelled 2 --test 2 --teacher-steps 4 --teacher-validations 2 \\
        --student-steps 2 --rows labels_only soft --no-timing --results-md /tmp/bench/results.md   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from kd_components.io import atomic_path, save_json_atomic
from kd_lab.benchmark import (
    REGIMES,
    RESULTS_INDENT,
    ROW_SETS,
    ROWS,
    SELECTION_RULES,
    BenchmarkSettings,
    estimate_seconds,
    expand_rows,
    measure_costs,
    regime_results,
    run_benchmark,
)
from kd_lab.results import plot_dice_vs_time, plot_region_bars, render_results
from kd_lab.results_branches import plot_teacher_scale_weights
from kd_lab.stages import StageError


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    d = BenchmarkSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=d.output_dir, help="data, runs and results.json")
    parser.add_argument("--data-seed", type=int, default=d.data_seed)
    parser.add_argument(
        "--teacher-labelled", type=int, default=d.teacher_labelled, help="the teachers' labelled training cases"
    )
    parser.add_argument(
        "--labelled",
        type=int,
        default=d.labelled,
        help="a student's labelled training cases in the scarce regime (the first of the teachers')",
    )
    parser.add_argument("--validation", type=int, default=d.validation, help="labelled validation cases")
    parser.add_argument("--unlabelled", type=int, default=d.unlabelled, help="unlabelled scans")
    parser.add_argument("--test", type=int, default=d.test, help="held-out labelled test cases")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(d.seeds), help="student seeds: every student row gets each"
    )
    parser.add_argument(
        "--teacher-seeds",
        type=int,
        nargs="+",
        default=list(d.teacher_seeds),
        help="one teacher per seed; the i-th student seed distils teacher seed number i mod (number of teacher seeds)",
    )
    parser.add_argument("--teacher-steps", type=int, default=d.teacher_steps)
    parser.add_argument(
        "--teacher-validations",
        type=int,
        default=d.teacher_validations,
        help="validations of a teacher's training (its curve; the teacher's model.pt is the best of them)",
    )
    parser.add_argument("--student-steps", type=int, default=d.student_steps)
    parser.add_argument(
        "--regimes",
        nargs="+",
        choices=REGIMES,
        default=list(d.regimes),
        help="student regimes: scarce (the first --labelled of the teachers' labelled cases and the unlabelled "
        "scans), compression (all of the teachers' labelled cases); one page each",
    )
    parser.add_argument(
        "--selection",
        choices=SELECTION_RULES,
        default=d.selection,
        help="model selection: 'last' (the weights after the last epoch; one validation) or 'best' (best "
        "validation mean Dice among --validations validations)",
    )
    parser.add_argument(
        "--validations", type=int, default=d.validations, help="validations per training run with --selection best"
    )
    parser.add_argument("--bootstrap-resamples", type=int, default=d.bootstrap_resamples)
    parser.add_argument("--bootstrap-seed", type=int, default=d.bootstrap_seed, help="seed of the bootstrap draws")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(d.rows),
        choices=[*(r.key for r in ROWS), *ROW_SETS],
        help=f"rows, or named row sets ({', '.join(ROW_SETS)}: the rows of a page); default: the results pages' rows",
    )
    parser.add_argument(
        "--probe-cases",
        type=int,
        default=d.probe_cases,
        help="healthy and unseen-seed phantoms, each, that every trained run segments (0: no false-positive probe)",
    )
    parser.add_argument("--timing-networks", nargs="+", default=list(d.timing_networks))
    parser.add_argument(
        "--no-timing",
        action="store_true",
        help="skip the inference-cost measurements (the page then shows the last ones saved in "
        "OUTPUT_DIR/inference_cost.json, if any)",
    )
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="measure the inference cost on this machine (OUTPUT_DIR/inference_cost.json) and exit; a later "
        "--no-timing run in that folder, e.g. on a GPU machine, shows it",
    )
    parser.add_argument(
        "--render-from",
        type=Path,
        default=None,
        help="write the page from a saved results.json (e.g. one made on another machine) instead of running; "
        "the page keeps the command recorded in it (use with --notes and --results-md)",
    )
    parser.add_argument(
        "--cost-from",
        type=Path,
        default=None,
        help="with --render-from: take the inference-cost table from this inference_cost.json (a --timing-only run "
        "on the CPU) and save it into the --render-from file too, so that the file holds what the page shows",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=d.jobs,
        help="stages run at a time (a stage starts when the ones it needs are done); more than 1 only where "
        "cores or a GPU are left over, e.g. 8 on a 16-core GPU machine",
    )
    parser.add_argument(
        "--results-md",
        type=Path,
        default=Path("docs/results.md"),
        help="the generated page; with several regimes one page each, named after the regime (results_scarce.md)",
    )
    parser.add_argument(
        "--notes",
        nargs="+",
        default=[],
        metavar="[REGIME=]FILE",
        help="Markdown appended as the pages' Notes: FILE for every page, REGIME=FILE for that regime's page only "
        "(after the shared notes)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore earlier runs")
    parser.add_argument("--estimate", action="store_true", help="print the predicted time of a fresh run and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = BenchmarkSettings(
            output_dir=args.output_dir,
            data_seed=args.data_seed,
            teacher_labelled=args.teacher_labelled,
            labelled=args.labelled,
            validation=args.validation,
            unlabelled=args.unlabelled,
            test=args.test,
            seeds=tuple(args.seeds),
            teacher_seeds=tuple(args.teacher_seeds),
            teacher_steps=args.teacher_steps,
            teacher_validations=args.teacher_validations,
            student_steps=args.student_steps,
            regimes=tuple(args.regimes),
            selection=args.selection,
            validations=args.validations,
            rows=expand_rows(args.rows),
            bootstrap_resamples=args.bootstrap_resamples,
            bootstrap_seed=args.bootstrap_seed,
            probe_cases=args.probe_cases,
            timing_networks=tuple(args.timing_networks),
            jobs=args.jobs,
        )
        if not args.render_from:
            regime_notes(args.notes, settings.regimes)  # a notes file that cannot be read fails now, not after the run
    except ValueError as error:
        parser.error(str(error))
    if args.estimate:
        parts = estimate_seconds(settings)
        print(", ".join(f"{part} {seconds / 60:.0f} min" for part, seconds in parts.items()) + " (2 CPU cores)")
        return 0
    if args.timing_only:
        measure_costs(settings)
        print(f"inference cost: {settings.output_dir / 'inference_cost.json'}")
        return 0
    if args.render_from:
        results = json.loads(args.render_from.read_text())
        command = results.get("command") or f"(command not recorded in {args.render_from})"
    else:
        command = "python scripts/benchmark_kd.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        try:
            results = run_benchmark(settings, fresh=args.fresh, timing=not args.no_timing, command=command.strip())
        except StageError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    try:
        notes = regime_notes(args.notes, results["regimes"])
    except ValueError as error:
        parser.error(str(error))
    if args.render_from and args.cost_from:  # after the notes are known to be good: a refused call changes nothing
        results["cost"] = json.loads(args.cost_from.read_text())
        save_json_atomic(results, args.render_from, indent=RESULTS_INDENT)
    for regime in results["regimes"]:
        page = args.results_md if len(results["regimes"]) == 1 else regime_page(args.results_md, regime)
        write_page(regime_results(results, regime), page, command.strip(), notes[regime])
        print(f"results: {page} (raw numbers: {args.render_from or settings.output_dir / 'results.json'})")
    return 0


def regime_notes(specs: list[str], regimes: Iterable[str]) -> dict[str, str]:
    """Regime -> the Notes of its page, from ``--notes`` entries ``FILE`` (every page) and ``REGIME=FILE`` (that
    regime's page, after the shared notes), in the order given; ``ValueError`` naming an unknown regime or a
    file that cannot be read."""
    notes = {regime: [] for regime in regimes}
    for spec in specs:
        regime, separator, name = spec.partition("=")
        if separator and regime not in notes:
            raise ValueError(f"--notes {spec}: this run has no regime {regime!r} (it has {', '.join(notes)})")
        path = Path(name if separator else spec)
        try:
            text = path.read_text().strip()
        except OSError as error:
            raise ValueError(f"--notes {spec}: cannot read {path}: {error.strerror or error}") from error
        for key in [regime] if separator else notes:
            notes[key].append(text)
    return {regime: "\n\n".join(parts) for regime, parts in notes.items()}


def regime_page(results_md: Path, regime: str) -> Path:
    """The page of one regime of a run with several: ``docs/results.md`` -> ``docs/results_scarce.md``,
    ``docs/results_compression.md`` (a run of one regime writes ``--results-md`` itself)."""
    return results_md.with_name(f"{results_md.stem}_{regime}{results_md.suffix}")


def write_page(results: dict, page: Path, command: str, notes: str) -> None:
    """The results page and its plots (``img/<page stem>_*.png`` beside it), written atomically."""
    figures = {"regions": f"img/{page.stem}_regions.png"}
    plot_region_bars(results, page.parent / figures["regions"])
    if any(row.get("branch_diagnostics") for row in results["rows"].values()):
        figures["scale_weights"] = f"img/{page.stem}_scale_weights.png"
        plot_teacher_scale_weights(results["rows"], page.parent / figures["scale_weights"])
    if results["cost"]:  # no inference times, no Dice-vs-time plot
        figures["dice_vs_time"] = f"img/{page.stem}_dice_vs_time.png"
        plot_dice_vs_time(results, page.parent / figures["dice_vs_time"])
    with atomic_path(page) as tmp:
        tmp.write_text(render_results(results, command, figures, notes))


if __name__ == "__main__":
    sys.exit(main())
