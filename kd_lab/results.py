"""A results page (``docs/results_<regime>.md``, one per student regime) and its plots, generated from the
benchmark's ``results.json`` (never typed by hand)."""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from kd_components.constants import REGIONS
from kd_components.io import save_figure_atomic
from kd_lab.results_branches import branch_sections
from kd_lab.results_challenge import challenge_sections, postprocessing_section, probe_section
from kd_lab.results_teacher import teacher_curve_section
from kd_lab.stages import format_minutes
from kd_lab.statistics import finite_mean
from kd_lab.statistics import format_interval as _ci
from kd_lab.statistics import row_interval as _interval

__all__ = ["markdown_blocks", "plot_dice_vs_time", "plot_region_bars", "render_results"]

_DICE = [f"val_dice_{r.lower()}" for r in REGIONS]
_HD95 = [f"val_hd95_{r.lower()}" for r in REGIONS]


def _mean(row: Mapping[str, Any], key: str) -> float:
    """The mean over seeds and test cases (over seeds only for a results.json without per-case statistics)."""
    interval = _interval(row, key)
    if interval is not None:
        return interval.estimate
    value = row["summary"].get(key, {}).get("mean")
    return float("nan") if value is None else float(value)


def _error(row: Mapping[str, Any], key: str) -> tuple[float, float]:
    """Distances from the mean down to and up to the ends of its 95 % interval (0 where there is none)."""
    interval = _interval(row, key)
    if interval is None or not math.isfinite(interval.low):
        return 0.0, 0.0
    return max(interval.estimate - interval.low, 0.0), max(interval.high - interval.estimate, 0.0)


def _cost_by_network(cost: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {c["network"]: c for c in cost}


def plot_dice_vs_time(results: Mapping[str, Any], output_png: str | os.PathLike[str]) -> Path:
    """Mean test Dice (whiskers: 95 % bootstrap interval) against sliding-window inference time, one point per row."""
    rows, cost = results["rows"], _cost_by_network(results.get("cost", []))
    figure = Figure(figsize=(8.0, 5.0))
    axis = figure.subplots()
    for index, row in enumerate(rows.values()):
        if row["network"] not in cost:
            continue
        seconds = cost[row["network"]]["inference_s"]
        axis.errorbar(
            seconds,
            _mean(row, "val_mean_dice"),
            yerr=np.array(_error(row, "val_mean_dice"))[:, None],
            fmt="os^Dvp"[index % 6],
            color=f"C{index}",
            capsize=3,
            label=f"{row['label']} ({row['network']})",
        )
    axis.set_xscale("log")
    axis.set_xlabel("sliding-window inference of one BraTS-size volume on this CPU (s, log scale)")
    axis.set_ylabel("mean Dice on the test cases")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return save_figure_atomic(figure, output_png)


def plot_region_bars(results: Mapping[str, Any], output_png: str | os.PathLike[str]) -> Path:
    """Test Dice per region (bars: mean over seeds and test cases, whiskers: 95 % bootstrap interval), one bar per
    row."""
    rows = results["rows"]
    figure = Figure(figsize=(9.0, 4.5))
    axis = figure.subplots()
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(REGIONS) + 1)
    for index, row in enumerate(rows.values()):
        keys = [*_DICE, "val_mean_dice"]
        axis.bar(
            x + (index - (len(rows) - 1) / 2) * width,
            [_mean(row, k) for k in keys],
            width,
            yerr=np.array([_error(row, k) for k in keys]).T,
            capsize=2,
            label=row["label"],
            color=f"C{index}",
        )
    axis.set_xticks(x, [*REGIONS, "mean"])
    axis.set_ylabel("Dice on the test cases")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return save_figure_atomic(figure, output_png)


def _seed_means(row: Mapping[str, Any], metric: str = "val_mean_dice") -> dict[int, float]:
    """Seed -> that seed's mean over the test cases (the seed's ``metrics.csv`` value in an older results.json)."""
    summary = row["summary"].get(metric)
    if summary is None:  # a score read per case only (the BraTS challenge metrics)
        values = [finite_mean(seed) for seed in row["per_case"][metric]]
    else:
        values = summary.get("case_means", summary["values"])
    return {int(s): (math.nan if v is None else float(v)) for s, v in zip(row["seeds"], values, strict=True)}


def _seed_list(seeds: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


#: What each regime's page says the students get and why (``{labelled}``, ``{teacher_labelled}``, ``{unlabelled}``
#: are filled in from the settings).
_REGIME_TEXT: dict[str, str] = {
    "scarce": (
        "**Scarce labels.** A student has the first {labelled} of the teacher's labelled cases and {unlabelled} "
        "unlabelled scans (their segmentations are never read): the hospital that has a few annotated scans of its "
        "own, many unannotated ones, and a teacher trained elsewhere on every label there is. Distillation has to "
        "carry what the teacher learned from labels the student never sees."
    ),
    "compression": (
        "**Compression.** A student has every one of the teacher's {teacher_labelled} labelled cases (and the "
        "{unlabelled} unlabelled scans, for the rows that use them), with the students' short budget: the question "
        "is whether the teacher's soft outputs and features make a small network learn the same labels faster."
    ),
}


def _regime(settings: Mapping[str, Any], estimate: Mapping[str, float] | None, regime: str) -> list[str]:
    """The page's regime, seeds, statistics, determinism and cost paragraphs."""
    seeds, teacher_seeds = settings["seeds"], settings["teacher_seeds"]
    if settings.get("selection", "best") == "last":
        rule = (
            "the weights after the last epoch (`--selection last`: one validation, after the last epoch, which "
            "selects nothing; choosing the best of a few validations on a handful of cases selects as much by "
            "noise as by quality)"
        )
    else:
        rule = (
            f"the checkpoint of the best validation mean Dice among {settings.get('validations', 4)} evenly "
            "spaced validations (`--selection best`)"
        )
    pairing = ", ".join(f"{s} -> {teacher_seeds[i % len(teacher_seeds)]}" for i, s in enumerate(seeds))
    lines = [
        "## Regime",
        f"One phantom data set (`brats-kd phantoms --seed {settings['data_seed']}`, `small` profile, 2 mm; case *i* "
        f"depends only on the data seed and *i*): {settings['teacher_labelled']} labelled training cases, "
        f"{settings['validation']} labelled validation cases, {settings['unlabelled']} unlabelled scans and "
        f"{settings['test']} held-out labelled test cases on which every row is scored.",
        "**The teacher, as in real use.** Each teacher seed trains once, on every labelled training case, for about "
        f"{settings['teacher_steps']} optimizer steps (the demo `HybridTeacher`, cosine schedule, validated "
        f"{settings['teacher_validations']} times on the validation cases; its `model.pt` is the best of those "
        "validations). It is one cached stage, reused by every student row, seed and regime: the teacher is "
        "trained once with a large budget, the student is what must be cheap.",
        _REGIME_TEXT[regime].format(**settings),
        f"**Students.** Every student row gets the same budget of about {settings['student_steps']} optimizer steps "
        "(steps, not epochs: a paired step holds a labelled and an unlabelled batch), the same data, augmentation, "
        f"schedule (cosine, lr 3e-3) and patches (64^3, batch {settings['batch_size']} x 2 patches). Model "
        f"selection: {rule}.",
        f"**Seeds (paired).** Every student row is trained with each of the student seeds {_seed_list(seeds)}; a "
        "seed sets initialisation, patch sampling, augmentation and batch order, so two rows with the same seed "
        "differ only in their method. The teacher is trained with each of the teacher seeds "
        f"{_seed_list(teacher_seeds)}; the student seed in position *i* of that list (from 0) distils the teacher "
        f"in position *i* mod {len(teacher_seeds)} of this one (student seed -> teacher seed: {pairing}).",
        "**Statistics.** Each number is the mean over all (seed, test case) pairs of a row (a case's mean Dice is "
        "the mean over its regions; a region missing from a case's ground truth is left out), with a 95 % "
        f"bootstrap percentile interval in brackets: {settings.get('bootstrap_resamples', 10_000):,} resamples, "
        "each drawing the seeds and the test cases with replacement (independently; random generator seed "
        f"{settings.get('bootstrap_seed', 0)}, so the intervals are reproducible from `results.json`). The "
        "*difference* to the label-only student is paired: both rows are resampled on the same seeds and cases "
        "and the per-(seed, case) difference is averaged, so what they share (a hard case, a lucky seed) "
        "cancels. *Gap closed* = (row - label-only) / (teacher - label-only) per resample, with the same student "
        "seeds and cases and the teacher's seeds drawn on their own. An interval of a difference that excludes "
        "0 is a difference this design resolves. The per-seed and per-case numbers behind every interval are in "
        "`results.json` (`per_case`, `summary`, `statistics`).",
        "**Determinism.** On one machine a rerun repeats the numbers: the phantoms depend only on the data seed "
        "and the case index, every training calls `monai.utils.set_determinism(seed)` and loads its data in the "
        "main process (`num_workers` 0), so data order, patch sampling and augmentation are fixed by the seed, "
        "and the evaluation draws nothing at random. What cannot be fixed is the order of floating-point "
        "operations of the CPU kernels across machines: sums in convolutions and reductions are split by the "
        "vector width, by the kernels oneDNN/MKL choose for that CPU and by the number of torch threads, so "
        "another CPU (or thread count) gives weights that differ in the last bits after the first step and then "
        "drift apart through training. A rerun on another machine is therefore another draw of the same "
        "experiment, like a new set of seeds: the intervals cover seed and test-case variation, not one "
        "particular machine, and a conclusion should rest on an interval, not on the second decimal of a mean.",
    ]
    if estimate:
        lines.append(
            f"**Cost and commands.** A fresh run (every regime, sharing the teachers) is estimated at "
            f"{_hours(estimate['total'])} on 2 CPU "
            f"cores ({_hours(estimate['training'])} training, {_hours(estimate['testing'])} testing, plus about 4 min "
            "of inference timing), by the cost model in `kd_lab/benchmark/plan.py`; the time it took is "
            "under Environment. Every training and test is a restartable stage: after an interruption run the same "
            "command again (finished stages are reused, an interrupted training resumes from its latest epoch); "
            "`--no-timing` regenerates the page from the finished stages without measuring the inference cost "
            "again. Run it with `make benchmark` or the command at the top of this page; "
            "`python scripts/benchmark_kd.py --estimate` (with the same options) prints the estimate without running "
            "anything."
        )
    return lines


def render_results(results: Mapping[str, Any], command: str, figures: Mapping[str, str], notes: str = "") -> str:
    """The Markdown page: regime, seeds, statistics, determinism and cost, the tables, plots, environment and notes."""

    settings, rows = results["settings"], results["rows"]
    cost = _cost_by_network(results.get("cost", []))
    lines = [
        f"# Results, {results['regime']} regime: teacher vs distilled students vs label-only students",
        f"Generated by `{command}`{_finished(results)}; page written on "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Do not edit by hand: run the command again.",
        *_regime(settings, results.get("estimate_seconds"), results["regime"]),
        "## Test metrics (mean over seeds and test cases [95 % bootstrap interval])",
        "| row | steps | parameters | GFLOPs / 96³ patch | Dice TC | Dice WT | Dice ET | mean Dice | "
        "HD95 TC (mm) | HD95 WT (mm) | HD95 ET (mm) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        net = results.get("sizes", {}).get(row["network"]) or cost.get(row["network"], {})
        cells = [
            row["label"],
            str(row["steps"]),
            f"{net['params']:,}" if net else "n/a",
            f"{net['gflops_patch']:.1f}" if net else "n/a",
            *(_ci(_interval(row, k), 3) for k in [*_DICE, "val_mean_dice"]),
            *(_ci(_interval(row, k), 1) for k in _HD95),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "HD95 of a region the prediction misses entirely is 373.13 mm (BraTS's convention); a case without "
        "that region in its ground truth is left out of that region's mean.",
        *_comparison(rows),
        *teacher_curve_section(rows),
        *challenge_sections(rows),
        *_comparison(rows, "brats_ranking_lesion_dice_mean", "mean lesion-wise Dice, 2023 ranking form"),
        *postprocessing_section(rows),
        *_comparison(
            rows,
            "post_brats_ranking_lesion_dice_mean",
            "mean lesion-wise Dice, 2023 ranking form, post-processed",
            "The label maps as the bundles deliver them (`brats-kd segment` applies each bundle's post-processing by "
            "default): what a challenge submission would be ranked on.",
        ),
        *probe_section(rows, settings.get("probe_cases", 0)),
        *branch_sections(rows, settings, figures.get("scale_weights")),
        f"## Inference cost on the CPU ({_cost_cpu(cost)})",
        f"Sliding-window inference (MONAI `SlidingWindowInferer`, ROI {settings['timing_roi']}³, overlap "
        f"{settings['timing_overlap']}, Gaussian blending, batch 1 per window, `torch.no_grad()`) of one "
        f"BraTS-size volume 4 x {' x '.join(map(str, settings['timing_shape']))}, each network in a fresh "
        "process, one run after nothing else was warmed up (it includes first-call overheads). Peak RSS is "
        "the process's maximum resident memory; baseline is Python + torch + MONAI before the network exists.",
    ]
    if cost:
        lines += [
            "| network | parameters | GFLOPs / 96³ patch | inference (s) | vs default teacher | peak RSS (GiB) | "
            "baseline RSS (GiB) | load avg |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        lines.append(
            "*Not measured*: this page was made with `--no-timing` and no earlier measurement is saved in its "
            "output folder (`inference_cost.json`)."
        )
    reference = cost.get("default", {}).get("inference_s")
    for name, net in cost.items():
        speedup = f"{reference / net['inference_s']:.1f}x faster" if reference and name != "default" else ""
        lines.append(
            f"| {name} | {net['params']:,} | {net['gflops_patch']:.1f} | {net['inference_s']:.1f} | {speedup} | "
            f"{net['peak_rss_gib']:.2f} | {net['baseline_rss_gib']:.2f} | "
            f"{net['load'][0]:.1f} -> {net['load'][1]:.1f} |"
        )
    all_seeds = sorted({int(s) for row in rows.values() for s in row["seeds"]})
    lines += [
        "",
        "`default` is the full-size teacher (VGG19 width 64 + ViT-B/16), measured for cost only: it is not "
        "trained here (a CPU cannot). `demo` is the teacher that was trained above.",
        "## Plots",
        *([f"![Dice vs inference time]({figures['dice_vs_time']})"] if "dice_vs_time" in figures else []),
        f"![Dice per region]({figures['regions']})",
        "## Per-seed mean Dice (mean over the test cases)",
        "| row | " + " | ".join(f"seed {s}" for s in all_seeds) + " |",
        "|---|" + "---:|" * len(all_seeds),
    ]
    for row in rows.values():
        by_seed = _seed_means(row)
        lines.append(f"| {row['label']} | " + " | ".join(_value(by_seed.get(seed)) for seed in all_seeds) + " |")
    this_run = format_minutes(sum(results.get("stage_seconds", {}).values()))
    recorded = format_minutes(sum(results.get("stage_seconds_recorded", {}).values()))
    lines += ["## Environment", *_environment(results.get("environment"), cost)]
    lines.append(
        f"- Training and testing time of all stages, as recorded when each ran: {recorded}; "
        f"of the stages this invocation ran: {this_run}."
    )
    if notes:
        lines += ["## Notes", notes.strip()]
    return "\n\n".join(markdown_blocks(lines)) + "\n"


def _comparison(
    rows: Mapping[str, Mapping[str, Any]], metric: str = "val_mean_dice", name: str = "mean Dice", intro: str = ""
) -> list[str]:
    """The table of each row against the label-only student on ``metric`` (called ``name``), after the paragraph
    ``intro`` if given: paired difference, gap closed, seeds better."""
    base = rows.get("labels_only")
    compared = [r for r in rows.values() if _interval(r, metric, "difference") is not None]
    if base is None or not compared:
        return []
    base_seeds = _seed_means(base, metric)
    teacher = rows.get("teacher")
    lead = _interval(teacher, metric, "lead") if teacher else None
    resolved = lead is not None and lead.low > 0  # a gap the teacher has over the label-only student
    lines = [
        f"## Against the label-only student ({name}; paired over seeds and test cases)",
        *([intro] if intro else []),
        f"| row | {name} | difference to label-only | gap closed | seeds better than label-only |",
        "|---|---:|---:|---:|---:|",
        f"| {base['label']} | {_ci(_interval(base, metric), 3)} |  |  |  |",
    ]
    for row in compared:
        by_seed = _seed_means(row, metric)
        better = sum(by_seed[s] > base_seeds[s] for s in by_seed if s in base_seeds)
        cells = [
            row["label"],
            _ci(_interval(row, metric), 3),
            _ci(_interval(row, metric, "difference"), 3, sign=True),
            _ci(_interval(row, metric, "gap_closed"), 0, 100, " %") if resolved else "n/a",
            f"{better} of {len(by_seed)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if teacher:
        lead_cell = f"lead {_ci(lead, 3, sign=True)}" if lead else ""
        lines.append(f"| {teacher['label']} | {_ci(_interval(teacher, metric), 3)} | {lead_cell} |  |  |")
    gap = (
        "*gap closed*: (row - label-only student) / (teacher - label-only student), 100 % = as good as the teacher"
        if resolved
        else "*gap closed*: not given, because the teacher's lead over the label-only student is not resolved (its "
        "interval includes 0 or lies below it), so a fraction of it means nothing"
    )
    return [
        *lines,
        "",
        f"*difference*: row - label-only student, averaged over the same (seed, test case) pairs; {gap}; *lead*: "
        "teacher - label-only student (the same test cases, each on its own seeds); *seeds better*: seeds whose "
        "mean over the test cases is above the label-only student's with the same seed. Intervals: 95 % bootstrap "
        "(see Statistics).",
    ]


def _value(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.3f}"


def markdown_blocks(lines: list[str]) -> list[str]:
    """Keep consecutive table lines together (one block), other lines as paragraphs."""
    blocks: list[str] = []
    for line in lines:
        if line.startswith("|") and blocks and blocks[-1].startswith("|"):
            blocks[-1] += "\n" + line
        else:
            blocks.append(line)
    return [b for b in blocks if b != ""]


def _cpu() -> str:
    from kd_lab.measure import cpu_description

    return cpu_description()


def _finished(results: Mapping[str, Any]) -> str:
    """`` (run finished on ... UTC)`` when the results record it."""
    return f" (run finished on {results['finished']} UTC)" if results.get("finished") else ""


def _cost_cpu(cost: Mapping[str, Mapping[str, Any]]) -> str:
    """The CPU the inference costs were measured on (recorded with them; older records: this machine's)."""
    entry = next(iter(cost.values()), {})
    threads = entry.get("threads")
    return f"{entry.get('cpu') or _cpu()}" + (f", torch threads: {threads}" if threads else "")


def _environment(recorded: Mapping[str, Any] | None, cost: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Where the stages ran (recorded by the run; for results without a record, this machine) and with what."""
    import monai
    import torch

    env = dict(recorded or {})
    gpu, jobs = env.get("gpu"), env.get("jobs", 1)
    where = f"GPU: {gpu} (trainings and test evaluations ran on it)" if gpu else "no GPU"
    lines = [
        f"- Trainings and evaluations: CPU {env.get('cpu') or _cpu()}; {where}; {jobs} stage(s) at a time.",
        f"- Python {env.get('python', platform.python_version())}, torch {env.get('torch', torch.__version__)}, "
        f"MONAI {env.get('monai', monai.__version__)}.",
    ]
    if cost:
        lines.append(f"- Inference cost: measured on {_cost_cpu(cost)}.")
    if gpu:
        lines.append(
            "- On a GPU the floating-point order differs from a CPU's (and some CUDA kernels, e.g. the backward "
            "pass of trilinear upsampling, are not deterministic), so the trajectories differ from a CPU run's as "
            "another machine's do (see *Determinism*); the 2-core time estimate above is for a CPU run."
        )
    return lines
