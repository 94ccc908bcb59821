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
from kd_lab.inference_benchmark import end_to_end, prepare_volume
from kd_lab.measure import cpu_description

#: `brats-kd segment` settings timed beside the application: label -> (engine, precision, crop).
SEGMENT_CONFIGS = {
    "torch fp32, whole grid (what the bundle operator runs)": ("torch", "fp32", False),
    "openvino fp32, brain crop (what the openvino engine runs)": ("openvino", "fp32", True),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="student weights (default: random, seeded)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting, after one warm-up run")
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
    results: dict[str, Any] = {"shape": list(volume.shape), "repeats": args.repeats, "app": {}, "segment": {}}
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
        print(f"  {results['app'][label]}", flush=True)
    for label, (engine, precision, crop) in SEGMENT_CONFIGS.items():
        print(f"[segment] {label} ...", flush=True)
        run = end_to_end(case, args.repeats + 1, engine, precision, ckpt, crop, out / "segment")
        results["segment"][label] = {"case_s": run["case_s"], "command_s": run["command_s"]}
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
