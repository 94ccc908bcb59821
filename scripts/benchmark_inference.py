#!/usr/bin/env python
"""Inference cost of every network x engine x precision on this CPU, end-to-end `brats-kd segment` times, and
each engine's agreement with PyTorch float32; writes docs/inference.md.

    python scripts/benchmark_inference.py                       # random weights: cost only (about 25 min on 2 cores)
    python scripts/benchmark_inference.py --ckpt STUDENT.pt --test-data DIR   # + agreement on labelled phantoms

What each number is: kd_lab/inference_benchmark.py. Every configuration runs in a fresh
process; times are medians of --repeats runs after a warm-up; the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_components.io import atomic_path, save_json_atomic
from kd_lab.inference_benchmark import (
    default_configs,
    end_to_end,
    engine_agreement,
    flop_rate,
    measure_config,
    prepare_volume,
)
from kd_lab.measure import count_flops, cpu_description, run_in_fresh_process
from kd_lab.results import markdown_blocks
from kd_lab.segment_speed import case_latency, folder_run, path_agreement, startup

#: End-to-end runs: (engine, precision, crop, overlap; None: the bundle's).
E2E = (("openvino", "fp32", True, None), ("openvino", "bf16", True, None), ("openvino", "int8", True, None))
E2E += (("onnxruntime", "fp32", True, None), ("torch", "fp32", True, None), ("openvino", "fp32", False, None))
E2E += (("openvino", "fp32", True, 0.25), ("openvino", "int8", True, 0.25))
#: Agreement runs: (engine, precision, crop, overlap; None: the bundle's); the first is the reference.
AGREEMENT = (("torch", "fp32", True, None), ("torch", "fp32", False, None), ("torch", "bf16", True, None))
AGREEMENT += (("onnxruntime", "fp32", True, None), ("openvino", "fp32", True, None), ("openvino", "bf16", True, None))
AGREEMENT += (("openvino", "int8", True, None), ("openvino", "fp32", True, 0.25), ("openvino", "int8", True, 0.25))


#: Real cases for the path agreement, where the shared folder holds them (never copied, never needed).
REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "real_dev"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["student", "segresnet16", "demo", "default"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (after one warm-up)")
    parser.add_argument("--skip-networks", action="store_true", help="leave out the per-patch table (a quick check)")
    parser.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="keep what OUTPUT_DIR/results.json holds (of an interrupted run on this machine) and measure the rest",
    )
    parser.add_argument(
        "--volume-budget", type=float, default=15.0, help="seconds: a whole-volume run expected longer is not run"
    )
    parser.add_argument("--e2e-cases", type=int, default=6, help="BraTS-size cases per end-to-end run")
    parser.add_argument("--ckpt", type=Path, help="trained student weights (end-to-end runs and agreement)")
    parser.add_argument("--test-data", type=Path, help="labelled phantoms for the agreement table (needs --ckpt)")
    parser.add_argument("--test-cases", type=int, default=12, help="how many of --test-data's cases (the last ones)")
    parser.add_argument("--ckpt-1mm", type=Path, help="a student trained at 1 mm (its training_geometry.json beside)")
    parser.add_argument("--folder-cases", type=int, default=20, help="cases of the folder run")
    parser.add_argument(
        "--real-dir", type=Path, default=REAL_DIR, help="real cases for the path agreement (skipped where absent)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/inference"))
    parser.add_argument("--output", type=Path, default=Path("docs/inference.md"))
    parser.add_argument("--notes", type=Path, help="Markdown appended as the page's Notes (interpretation of a run)")
    parser.add_argument(
        "--render-from", type=Path, help="write the page from a saved results.json instead of measuring"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notes = args.notes.read_text() if args.notes else ""
    if args.render_from:
        with atomic_path(args.output) as tmp:
            tmp.write_text(render(json.loads(args.render_from.read_text()), notes))
        print(f"wrote {args.output}")
        return 0
    from kd_components.data.brats import discover_cases

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    volume = prepare_volume(out)
    case, volume_file, roi, overlap = volume.case, volume.volume_file, volume.roi, volume.overlap
    ckpt = args.ckpt or volume.random_ckpt
    cache = out / "cache"
    cache.mkdir(exist_ok=True)

    results: dict[str, Any] = {"roi": roi, "overlap": overlap, "shape": list(volume.shape), "rows": [], "errors": []}
    earlier = json.loads((out / "results.json").read_text()) if args.resume and (out / "results.json").exists() else {}
    for key in ("rows", "flop_rate", "end_to_end", "segment", "agreement", "agreement_cases"):
        if key in earlier:
            results[key] = earlier[key]
    if "flop_rate" not in results:
        results["flop_rate"] = flop_rate(args.repeats)
    print(f"[reference] {results['flop_rate']}")
    done = {(r["network"], r["engine"], r["precision"]) for r in results["rows"]}
    for cfg in [] if args.skip_networks else default_configs(args.networks):
        if (cfg.network, cfg.engine, cfg.precision) in done:
            continue
        print(f"[{cfg.network}] {cfg.label} ...", flush=True)
        try:
            row = run_in_fresh_process(
                measure_config, cfg, str(volume_file), roi, overlap, args.repeats, str(cache), args.volume_budget
            )
        except Exception as err:  # one engine that cannot run here does not stop the others
            results["errors"].append(f"{cfg.network} {cfg.label}: {type(err).__name__}: {str(err)[:300]}")
            print(f"  failed: {results['errors'][-1]}")
            continue
        row["gflops_patch"] = count_flops(cfg.network, roi)[0] / 1e9
        results["rows"].append(row)
        print(f"  {row['patch_s']:.3f} s/patch, volume crop {row['volume_crop_s']}, full {row['volume_full_s']}")
        save_json_atomic(results, out / "results.json")
    results.setdefault("end_to_end", [])
    measured = {(e["engine"], e["precision"], e["crop"], e["overlap"]) for e in results["end_to_end"]}
    for engine, precision, crop, overlap in E2E:
        if (engine, precision, crop, overlap) in measured:
            continue
        print(f"[end to end] {engine} {precision} crop={crop} overlap={overlap} ...", flush=True)
        try:
            run = end_to_end(case.directory, args.e2e_cases, engine, precision, ckpt, crop, out / "e2e", overlap)
            results["end_to_end"].append(run)
        except Exception as err:
            results["errors"].append(f"end to end {engine} {precision}: {str(err)[-300:]}")
            continue
        print(f"  {results['end_to_end'][-1]}")
        save_json_atomic(results, out / "results.json")
    students = {"2 mm": (args.ckpt or volume.random_ckpt, "fp32")}
    if args.ckpt_1mm:  # the 1 mm student in float32 and, where the network dominates, in bfloat16
        students.update({"1 mm": (args.ckpt_1mm, "fp32"), "1 mm, bf16": (args.ckpt_1mm, "bf16")})
    results["segment"] = segment_speed(
        students, case.directory, args, out / "segment", results["errors"], results.get("segment") or {}, out
    )
    save_json_atomic(results, out / "results.json")
    if args.ckpt and args.test_data and "agreement" not in results:
        cases = [c for c in discover_cases(args.test_data) if c.label is not None][-args.test_cases :]
        print(f"[agreement] {len(cases)} labelled cases of {args.test_data}", flush=True)
        results["agreement"] = engine_agreement(cases, args.ckpt, AGREEMENT, cache)
        results["agreement_cases"] = len(cases)
    results["load"] = [load_before, os.getloadavg()]
    results["environment"] = {
        "cpu": cpu_description(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openvino": _version("openvino"),
        "onnxruntime": _version("onnxruntime"),
        "nncf": _version("nncf"),
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "command": "python scripts/benchmark_inference.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "weights": "trained (--ckpt)" if args.ckpt else "random",
    }
    save_json_atomic(results, out / "results.json")
    with atomic_path(args.output) as tmp:
        tmp.write_text(render(results, notes))
    print(f"wrote {args.output} (raw numbers: {out / 'results.json'})")
    return 0


def segment_speed(
    students: dict[str, tuple[Path, str]],
    case_dir: Path,
    args: argparse.Namespace,
    work: Path,
    errors: list[str],
    found: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """One case stage by stage (this path and the path before), a folder, the start-up, and the label maps'
    agreement with the path before, for each student (name -> weights and precision; kd_lab/segment_speed.py). The
    path before runs in float32, as it did. What ``found`` holds (an earlier run's) is kept, and every part is saved
    in ``out/results.json``'s ``segment`` as soon as it is measured."""
    from kd_components.data.brats import discover_cases

    work.mkdir(parents=True, exist_ok=True)
    agreement_sets = {}
    if args.test_data:
        labelled = [c for c in discover_cases(args.test_data) if c.label is not None][-args.test_cases :]
        agreement_sets[f"{len(labelled)} BraTS-size phantoms"] = [str(c.directory) for c in labelled]
    if args.real_dir and args.real_dir.is_dir():
        agreement_sets[f"{args.real_dir.name} (real)"] = [str(c.directory) for c in discover_cases(args.real_dir)]
    else:
        errors.append(f"path agreement on real scans: {args.real_dir} is not there")
    for name, (ckpt, precision) in students.items():
        print(f"[segment] {name} student ({ckpt}, {precision}) ...", flush=True)
        row = found.setdefault(name, {"ckpt": str(ckpt), "precision": precision})
        for path in ("this", "before"):
            if path not in row:
                before = path == "before"
                row[path] = run_in_fresh_process(
                    case_latency, str(ckpt), str(case_dir), args.repeats, before, "fp32" if before else precision
                )
            print(f"  one case, {path}: {row[path]['total_s']:.2f} s", flush=True)
        options = ["--precision", precision]
        if "startup" not in row:
            row["startup"] = startup(ckpt, case_dir, work, args.repeats, options)
        if "folder" not in row:
            row["folder"] = folder_run(ckpt, case_dir, args.folder_cases, work, args.repeats, options)
        print(f"  start-up {row['startup']['startup_s']:.1f} s, folder {row['folder']['wall_s']:.1f} s", flush=True)
        _save_part(out, "segment", found)
        if "agreement" not in row:
            row["agreement"] = {
                label: run_in_fresh_process(path_agreement, str(ckpt), dirs, precision)
                for label, dirs in agreement_sets.items()
            }
        _save_part(out, "segment", found)
    return found


def _save_part(out: Path, key: str, value: Any) -> None:
    """``out/results.json`` with ``key`` set to ``value`` (the rest as it is), so an interrupted run keeps it."""
    path = out / "results.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[key] = value
    save_json_atomic(saved, path)


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "not installed"


def _volume(row: dict[str, Any], name: str) -> str:
    """A whole-volume time, or the windows times the per-patch time (marked) where it was not run."""
    seconds = row[f"volume_{name}_s"]
    return f"{seconds:.2f}" if seconds is not None else f"est. {row['patch_s'] * row['windows'][name]:.1f}"


def render(results: dict[str, Any], notes: str = "") -> str:
    """The Markdown page (``notes`` appended as its Notes section)."""
    env, rate = results["environment"], results["flop_rate"]
    rows = results["rows"]
    by_engine = {(r["network"], r["engine"], r["precision"]): r for r in rows}
    lines = [
        "# Inference cost on a CPU: networks x engines x precisions, and `brats-kd segment` end to end",
        f"Generated by `{env['command']}` on {env['date']}. Do not edit by hand: run the command again.",
        f"CPU: {env['cpu']}; Python {env['python']}, torch {env['torch']}, OpenVINO {env['openvino']}, ONNX Runtime "
        f"{env['onnxruntime']}, NNCF {env['nncf']}. Load average (1 min) {results['load'][0][0]:.2f} before, "
        f"{results['load'][1][0]:.2f} after. Weights for the end-to-end runs: {env['weights']}.",
        "## Per patch and whole volume",
        f"One patch is 1 x 4 x {results['roi']}^3; the whole volume is one BraTS-size phantom "
        f"({' x '.join(map(str, results['shape']))}) through MONAI's sliding window (ROI {results['roi']}, overlap "
        f"{results['overlap']}, Gaussian, batch 1), over the whole grid and over the brain's windows only (*crop*). "
        "Medians of the runs after one warm-up. *n/a*: not run because one run would exceed the time budget; "
        "*est.* = windows x per-patch time. *GFLOP/s* is the network's FLOPs per patch over its per-patch time, "
        f"against {rate['torch_gflops']:.0f} GFLOP/s (PyTorch) and {rate['openvino_gflops']:.0f} GFLOP/s (OpenVINO) "
        "that this CPU reaches in float32 on a large 3D convolution (64 -> 64 channels, 3^3, 48^3 x 2). "
        "*vs default* = the default teacher's per-patch time on the same engine and precision over this one's.",
        "| network | engine | precision | GFLOPs / patch | s / patch | GFLOP/s | vs default | volume, crop (s) | "
        "volume, whole grid (s) | windows crop / whole | peak RSS (GiB) | load (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        default = by_engine.get(("default", r["engine"], r["precision"]))
        ratio = f"{default['patch_s'] / r['patch_s']:.1f}x" if default and r["network"] != "default" else ""
        crop, full = (_volume(r, name) for name in ("crop", "full"))
        lines.append(
            f"| {r['network']} | {r['engine']} | {r['precision']} | {r['gflops_patch']:.1f} | {r['patch_s']:.3f} | "
            f"{r['gflops_patch'] / r['patch_s']:.0f} | {ratio} | {crop} | {full} | {r['windows']['crop']} / "
            f"{r['windows']['full']} | {r['peak_rss_gib']:.2f} | {r['load_s']:.1f} |"
        )
    if results.get("end_to_end"):
        lines += [
            "## `brats-kd segment` end to end (the student, one BraTS-size case)",
            "*Per case*: the seconds `brats-kd segment` records for a case (check and read the four NIfTI files, "
            "preprocess, network, postprocess, write the label map and the volumes), median over the cases after "
            "the first; *first case* includes the engine's warm-up. *Command*: the wall time of the whole command "
            "on all cases, with Python's start-up, the imports and loading the engine.",
            "| engine | precision | crop | overlap | per case (s) | first case (s) | command (s) | peak RSS (GiB) |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for e in results["end_to_end"]:
            lines.append(
                f"| {e['engine']} | {e['precision']} | {'on' if e['crop'] else 'off'} | "
                f"{e['overlap'] if e['overlap'] is not None else results['overlap']} | {e['case_s']:.2f} | "
                f"{e['first_case_s']:.2f} | {e['command_s']:.1f} | {e['peak_rss_gib']:.2f} |"
            )
    lines += render_segment(results.get("segment") or {}, results["shape"])
    if results.get("agreement"):
        lines += [
            f"## Agreement with PyTorch float32 ({results['agreement_cases']} held-out labelled phantoms, trained "
            "student)",
            "Dice per region [TC, WT, ET] against the ground truth (mean over cases) and against the label maps of "
            "PyTorch float32 with the crop on the same weights (mean; and the lowest of any case and region). "
            "*no crop*: the sliding window over the whole grid (other window positions, see "
            "`kd_components/segment/crop.py`).",
            "| engine precision | Dice vs truth TC / WT / ET | mean | drop vs first row | Dice vs torch fp32 "
            "TC / WT / ET | lowest |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        base = next(iter(results["agreement"].values()))["mean_dice_truth"]
        for name, a in results["agreement"].items():
            lines.append(
                f"| {name} | {' / '.join(f'{d:.3f}' for d in a['dice_truth'])} | {a['mean_dice_truth']:.3f} | "
                f"{base - a['mean_dice_truth']:+.4f} | {' / '.join(f'{d:.4f}' for d in a['dice_vs_torch_fp32'])} | "
                f"{a['min_dice_vs_torch_fp32']:.4f} |"
            )
    if results["errors"]:
        lines += ["## Not measured", *(f"- {e}" for e in results["errors"])]
    if notes:
        lines += ["## Notes", notes.strip()]
    return "\n\n".join(markdown_blocks(lines)) + "\n"


def render_segment(students: dict[str, Any], shape: list[int]) -> list[str]:
    """The sections of one case, a folder, the start-up and the path agreement (empty without measurements)."""
    if not students:
        return []
    size = " x ".join(map(str, shape[1:]))
    lines = [
        f"## `brats-kd segment`: one case ({size}), a folder, the start-up",
        "*One case*: a segmenter built once segments and writes the case again and again (medians of the runs "
        "after a warm-up): the latency of a case in a process already running (`--watch`, the Deploy app), without "
        "the start-up. *read*: the four NIfTI files read and preprocessed (orientation, resampling to the "
        "student's grid, normalisation); *check*: the values and plausibility checks on the preprocessed case (a "
        "dash: a run from before this stage was timed on its own; it counted in *one case* only); *post*: the "
        "inversion onto the input's grid, post-processing, the label map and volumes; *before*: the same "
        "segmenter in float32 on the path before the fast reading and inversion (MONAI's `NibabelReader`, "
        "`Spacingd` in float64, `Invertd` + `AsDiscreted` over the whole grid; `kd_lab/segment_speed.py`; its "
        "normalisation and checks are today's, which give the same values faster).",
        "| student (grid) | engine | path | read (s) | check (s) | network (s) | post (s) | write (s) | one case (s) | "
        "before / this |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in students.items():
        for path in ("this", "before"):
            r = row[path]
            ratio = f"{row['before']['total_s'] / row['this']['total_s']:.1f}x" if path == "this" else ""
            check = f"{r['check_s']:.3f}" if "check_s" in r else "—"
            lines.append(
                f"| {name} | {r['engine']} | {path} | {r['read_s']:.3f} | {check} | {r['network_s']:.3f} | "
                f"{r['postprocess_s']:.3f} | {r['write_s']:.3f} | {r['total_s']:.3f} | {ratio} |"
            )
    lines += [
        "*Folder*: `brats-kd segment DIR -o OUT` on copies of the case under new ids, the whole command's wall time "
        "(median of the runs) with Python's start-up, the imports and the engine's load; *sum of cases*: the sum of "
        "the seconds it records per case (each case's own stages), more than the wall time where reading, network "
        "and writing of neighbouring cases overlap. *Start-up*: the command on one case, its wall time minus the "
        "seconds it records for the case.",
        "| student (grid) | cases | folder, wall (s) | per case in the folder (s) | sum of cases (s) | "
        "one-case command (s) | start-up (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in students.items():
        f, s = row["folder"], row["startup"]
        lines.append(
            f"| {name} | {f['cases']} | {f['wall_s']:.1f} | {(f['wall_s'] - s['startup_s']) / f['cases']:.2f} | "
            f"{f['case_sum_s']:.1f} | {s['wall_s']:.1f} | {s['startup_s']:.1f} |"
        )
    lines += [
        "## Label maps against the path before",
        "Dice per region between the label maps of this path (at the row's precision) and of the path before "
        "(float32), same weights and cases: "
        "mean and lowest over the cases; *voxels*: the most voxels that differ in a case.",
        "| student (grid) | cases | Dice TC / WT / ET, mean | lowest | voxels |",
        "|---|---|---:|---:|---:|",
    ]
    for name, row in students.items():
        for label, cases in row["agreement"].items():
            dice = np.array([c["dice"] for c in cases])
            lines.append(
                f"| {name} | {label} | {' / '.join(f'{d:.4f}' for d in dice.mean(axis=0))} | {dice.min():.4f} | "
                f"{max(c['differing_voxels'] for c in cases)} |"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
