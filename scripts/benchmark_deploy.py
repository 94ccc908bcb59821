#!/usr/bin/env python
"""Time the MONAI Deploy application on one BraTS-size case with each engine, and brats-kd segment beside it;
writes the timing part of docs/deploy.md. Run it in the application's environment (make deploy-test makes one):

    .venv-deploy/bin/python scripts/benchmark_deploy.py --ckpt STUDENT.pt      # about 5 min on 2 cores

What each number is: kd_lab/deploy_benchmark.py.
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

import numpy as np

from kd_components.io import atomic_path, save_json_atomic
from kd_components.segment import default_bundle
from kd_lab.deploy_benchmark import (
    APP_CONFIGS,
    export_model,
    render_section,
    replace_section,
    run_app,
    summarise,
)
from kd_lab.inference_benchmark import prepare_volume
from kd_lab.measure import cpu_description
from kd_lab.segment_speed import copy_case, folder_run, startup

#: `brats-kd segment` settings timed beside the application: label -> (its options, the application row it matches).
SEGMENT_CONFIGS: dict[str, tuple[list[str], str]] = {
    "torch fp32, whole grid (what the bundle operator runs)": (
        ["--engine", "torch", "--precision", "fp32", "--no-crop"],
        "torchscript (default)",
    ),
    "openvino fp32, brain crop (what the openvino engine runs)": (
        ["--engine", "openvino", "--precision", "fp32"],
        "openvino fp32",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="student weights (default: random, seeded)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting, after one warm-up run")
    parser.add_argument("--folder-cases", type=int, default=10, help="copies of the case in the folder runs")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/deploy"))
    parser.add_argument("--page", type=Path, default=Path("docs/deploy.md"), help="the page whose timing part to write")
    parser.add_argument("--render-from", type=Path, help="write the page's part from a saved results.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render_from:
        return _write(args.page, json.loads(args.render_from.read_text()))
    out = args.output_dir
    load_before = os.getloadavg()
    volume = prepare_volume(out)
    ckpt = args.ckpt or volume.random_ckpt
    model = export_model(ckpt, out / "models", default_bundle())
    case = volume.case.directory
    folder = copy_case(case, out / f"folder{args.folder_cases}", args.folder_cases)
    results: dict[str, Any] = {
        "shape": list(volume.shape),
        "repeats": args.repeats,
        "folder_cases": args.folder_cases,
        "app": {},
        "app_folder": {},
        "segment": {},
    }
    reference = None
    for label, settings in APP_CONFIGS:
        env = {**os.environ, "BRATS_KD_CACHE": str(out / "cache"), **settings}
        print(f"[app] {label} ...", flush=True)
        first = run_app(case, out / "app", model, env)
        if "openvino" in label and "first_export_s" not in results:
            results["first_export_s"] = first["setup_s"]
        runs = [run_app(case, out / "app", model, env) for _ in range(args.repeats)]
        reference = runs[0]["labels"] if reference is None else reference
        results["app"][label] = summarise(runs, reference)
        folder_runs = [run_app(folder, out / "app-folder", model, env) for _ in range(args.repeats)]
        results["app_folder"][label] = summarise(folder_runs, None)
        print(f"  {results['app'][label]}\n  folder: {results['app_folder'][label]}", flush=True)
    for label, (options, app_label) in SEGMENT_CONFIGS.items():
        print(f"[segment] {label} ...", flush=True)
        one = startup(ckpt, case, out / "segment", args.repeats, options)
        many = folder_run(ckpt, case, args.folder_cases, out / "segment", args.repeats, options)
        results["segment"][label] = {
            "app": app_label,
            "case_s": one["case_s"],
            "startup_s": one["startup_s"],
            "folder_wall_s": many["wall_s"],
            "folder_per_case_s": (many["wall_s"] - one["startup_s"]) / args.folder_cases,
        }
        print(f"  {results['segment'][label]}", flush=True)
    results["load"] = [load_before, os.getloadavg()]
    results["environment"] = {
        "cpu": cpu_description(),
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "command": "python scripts/benchmark_deploy.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "weights": "trained (--ckpt)" if args.ckpt else "random (seeded)",
        "tumour_voxels": int(np.count_nonzero(reference)) if reference is not None else 0,
    }
    save_json_atomic(results, out / "results.json")
    return _write(args.page, results)


def _write(page: Path, results: dict[str, Any]) -> int:
    with atomic_path(page) as tmp:
        tmp.write_text(replace_section(page.read_text(), render_section(results)))
    print(f"wrote the timing part of {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
