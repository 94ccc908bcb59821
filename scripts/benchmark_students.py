#!/usr/bin/env python
"""The search for a student built for CPUs: Dice in the distillation regime against OpenVINO time per volume on
this CPU, with the Pareto front; writes docs/students.md.

    # 1. Dice: the candidates' distillation rows, 3 seeds, the budget of docs/results_long_budget.md (a GPU helps)
    python scripts/benchmark_kd.py --student-steps 108 --seeds 0 1 2 --no-timing \\
        --rows labels_only soft_feature kd_segresnet8 kd_strided16 kd_strided16_gn kd_strided16_light \\
        kd_strided16_noup --output-dir outputs/students --results-md docs/students_kd.md
    # 2. time: every candidate x OpenVINO fp32/bf16/int8 on this CPU (about 18 min on 2 cores), and the page
    python scripts/benchmark_students.py --kd-results outputs/students/results.json

(``make benchmark-students [JOBS=N]`` runs both.) The default student's row is ``soft_feature``, every other
candidate's ``kd_<name>``; ``--rows CANDIDATE=ROW`` maps a run made when another candidate was the default.

What each number is: kd_lab/student_search.py. The candidates are
kd_components/networks/candidates.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from kd_components.io import atomic_path, save_json_atomic
from kd_components.networks.candidates import DEFAULT_CANDIDATE, STUDENT_CANDIDATES
from kd_lab.benchmark import regime_rows
from kd_lab.inference_benchmark import prepare_volume
from kd_lab.measure import cpu_description
from kd_lab.results import markdown_blocks
from kd_lab.student_search import PRECISIONS, measure_candidates, search_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kd-results", type=Path, default=Path("docs/students_kd.json"), help="benchmark_kd.py's")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=[],
        metavar="CANDIDATE=ROW",
        help="the --kd-results row of a candidate where it is not the usual one (soft_feature for the default, "
        "kd_<name> for the others), e.g. for a run made when another candidate was the default",
    )
    parser.add_argument("--candidates", nargs="+", default=list(STUDENT_CANDIDATES), choices=list(STUDENT_CANDIDATES))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (after one warm-up)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the time of the Pareto front")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/students_timing"))
    parser.add_argument("--output", type=Path, default=Path("docs/students.md"))
    parser.add_argument("--json", type=Path, default=Path("docs/students.json"), help="the page's numbers")
    parser.add_argument("--notes", type=Path, help="Markdown appended as the page's Notes (interpretation of a run)")
    parser.add_argument("--render-from", type=Path, help="write the page from a saved --json instead of measuring")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notes = args.notes.read_text() if args.notes else ""
    if args.render_from:
        results = json.loads(args.render_from.read_text())
    else:
        kd = json.loads(args.kd_results.read_text())
        rows_for = dict(item.split("=", 1) for item in args.rows)
        load_before = os.getloadavg()
        volume = prepare_volume(args.output_dir)
        cache = args.output_dir / "cache"
        cache.mkdir(exist_ok=True)
        timings = measure_candidates(
            args.candidates, str(volume.volume_file), volume.roi, volume.overlap, args.repeats, str(cache)
        )
        settings = kd["settings"]
        results = {
            "command": "python scripts/benchmark_students.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "kd_command": kd.get("command"),
            "kd_environment": kd.get("environment"),
            "kd_settings": {k: settings[k] for k in ("seeds", "teacher_seeds", "student_steps", "test", "data_seed")},
            "teacher_dice": regime_rows(kd)["teacher"]["statistics"]["val_mean_dice"]["mean"],
            "roi": volume.roi,
            "overlap": volume.overlap,
            "shape": list(volume.shape),
            "precision": args.precision,
            "repeats": args.repeats,
            "timings": timings,
            "rows_for": rows_for,
            "table": search_table(
                kd, timings, args.precision, settings["bootstrap_resamples"], settings["bootstrap_seed"], rows_for
            ),
            "load": [load_before, os.getloadavg()],
            "cpu": cpu_description(),
            "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        }
        save_json_atomic(results, args.json)
    with atomic_path(args.output) as tmp:
        tmp.write_text(render(results, notes))
    print(f"wrote {args.output} (numbers: {args.render_from or args.json})")
    return 0


def _interval(stats: dict[str, Any] | None, signed: bool = False) -> str:
    if not stats:
        return ""
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(stats['estimate'])} [{fmt.format(stats['low'])}, {fmt.format(stats['high'])}]"


def render(results: dict[str, Any], notes: str = "") -> str:
    """The Markdown page (``notes`` appended as its Notes section)."""
    settings, precision = results["kd_settings"], results["precision"]
    env = results["kd_environment"] or {}
    where = f"{env.get('gpu') or env.get('cpu', 'unknown')}" + (f", {env['jobs']} stages at a time" if env else "")
    shape = "x".join(map(str, results["shape"]))
    load = results["load"]
    lines = [
        "# A student built for CPUs: Dice against OpenVINO time, and the Pareto front",
        "",
        f"Generated by `{results['command']}` on {results['date']}, from the distillation runs of "
        f"`{results['kd_command']}` ({where}; page: [`students_kd.md`](students_kd.md)). Do not edit by hand: run "
        "the commands again.",
        "",
        "## Protocol",
        "",
        f"**Dice**: every candidate is the student of the same distillation (soft-target + feature KD, labelled "
        f"scans only), in the regime of [`results_long_budget.md`](results_long_budget.md): "
        f"{settings['student_steps']} optimizer steps, student seeds {', '.join(map(str, settings['seeds']))} "
        f"(each distils the same teacher as in every other row: teacher seeds "
        f"{', '.join(map(str, settings['teacher_seeds']))}), {settings['test']} held-out test phantoms "
        f"(data seed {settings['data_seed']}). Mean Dice over (seed, test case) with a 95 % bootstrap interval; "
        "*vs default* and *vs segresnet8* are paired differences (same seeds, same cases) with their intervals: "
        "an interval that excludes 0 is a difference this design resolves.",
        "",
        f"**Time**: OpenVINO on this CPU ({results['cpu']}; load average {load[0][0]:.2f} before, "
        f"{load[1][0]:.2f} after), each (candidate, precision) in a fresh process, random weights (time does not "
        f"depend on them): one 1 x 4 x {results['roi']}^3 patch, and one BraTS-size volume ({shape}) through "
        f"MONAI's sliding window over the brain's box (ROI {results['roi']}, overlap {results['overlap']}: the "
        "bundle's inference settings, Gaussian blending, batch 1), medians of "
        f"{results['repeats']} runs after a warm-up. *Dice / s*: "
        f"mean Dice over the {precision} volume time. **Pareto**: no other candidate is both faster ({precision} "
        "volume) and higher in mean Dice.",
        "",
        "## Candidates",
        "",
    ]
    table = results["table"]
    for entry in table:
        default = " **(default)**" if entry["name"] == DEFAULT_CANDIDATE.name else ""
        lines.append(f"- `{entry['name']}`{default}: {entry['label']}. Dice: row `{entry['row']}` of the run.")
    header = "| student | GFLOPs / patch | mean Dice | vs default | vs segresnet8 |"
    header += "".join(f" s / patch {p} | s / volume {p} |" for p in PRECISIONS)
    header += f" Dice / s ({precision}) | Pareto |"
    lines += ["", "## Dice and time", "", header, "|---" + "|---:" * (4 + 2 * len(PRECISIONS) + 1) + "|---|"]
    for entry in sorted(table, key=lambda e: e["volume_s"].get(precision, float("inf"))):
        diffs = entry["differences"]
        cells = [
            f"`{entry['name']}`",
            f"{entry['gflops_patch']:.1f}" if entry["gflops_patch"] else "",
            _interval(entry["dice"]),
            _interval(diffs.get(DEFAULT_CANDIDATE.name), signed=True),
            _interval(diffs.get("segresnet8"), signed=True),
        ]
        for p in PRECISIONS:
            cells.append(f"{entry['patch_s'][p]:.3f}" if p in entry["patch_s"] else "n/a")
            cells.append(f"{entry['volume_s'][p]:.2f}" if p in entry["volume_s"] else "n/a")
        cells.append(f"{entry['dice_per_s']:.2f}" if entry["dice_per_s"] else "")
        cells.append("yes" if entry["pareto"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    windows = next((e["windows"] for e in table if e["windows"]), None)
    lines += [
        "",
        f"The sliding window covers {windows} windows of the brain's box per volume. The distillation teacher "
        f"(demo `HybridTeacher`) scores {_interval(results['teacher_dice'])} on the same test cases.",
    ]
    errors = [f"{t['network']} {t['precision']}: {t['error']}" for t in results["timings"] if "error" in t]
    if errors:
        lines += ["", "Configurations that failed:", "", *(f"- {e}" for e in errors)]
    if notes:
        lines += ["## Notes", notes.strip()]
    return "\n\n".join(markdown_blocks(lines)) + "\n"


if __name__ == "__main__":
    sys.exit(main())
