#!/usr/bin/env python
"""False positives of trained networks on healthy phantoms, and Dice on phantoms of an unseen generator seed;
writes docs/false_positives.md.

    python scripts/measure_false_positives.py --ckpt student=outputs/.../model.pt --ckpt teacher=... \
        --bundle student=bundles/distilled_student --bundle teacher=bundles/hybrid_teacher

Each network runs with its bundle's inference.json at the grid its weights were trained on
(training_geometry.json beside them; --pixdim for weights trained before that file existed). What each number
is: kd_components/evaluation/false_positives.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from kd_components.evaluation.false_positives import make_probe_data, measure, render
from kd_components.io import atomic_path, parse_named_paths, save_json_atomic
from kd_components.segment import Segmenter, default_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", required=True, help="NAME=weights (repeat for several networks)")
    parser.add_argument("--bundle", action="append", default=[], help="NAME=bundle folder (default: the student)")
    parser.add_argument(
        "--overlay", action="append", default=[], help="NAME=config JSON merged over inference.json (e.g. demo.json)"
    )
    parser.add_argument("--pixdim", type=float, nargs=3, help="voxel size the weights were trained at, if not recorded")
    parser.add_argument("--cases", type=int, default=8, help="healthy and unseen-seed phantoms, each")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/false_positives"))
    parser.add_argument("--output", type=Path, default=Path("docs/false_positives.md"))
    parser.add_argument("--notes", type=Path, help="Markdown appended as the page's Notes")
    args = parser.parse_args(argv)
    weights, bundles, overlays = (
        parse_named_paths(args.ckpt, "--ckpt"),
        parse_named_paths(args.bundle, "--bundle"),
        parse_named_paths(args.overlay, "--overlay"),
    )
    folders = make_probe_data(args.output_dir / "data", args.cases)
    overrides = {"pixdim": list(args.pixdim)} if args.pixdim else {}
    rows = {}
    for name, ckpt in weights.items():
        print(f"[{name}] {ckpt}", flush=True)
        config = {**(json.loads(overlays[name].read_text()) if name in overlays else {}), **overrides}
        segmenter = Segmenter(bundles.get(name, default_bundle()), ckpt, overrides=config, log=lambda line: None)
        rows[name] = measure(segmenter, folders)
        save_json_atomic(rows, args.output_dir / "results.json")
    command = "python scripts/measure_false_positives.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    date = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    page = [
        "# False positives on healthy phantoms, Dice on an unseen phantom seed",
        "",
        render(rows, args.cases, command, date),
    ]
    if args.notes:
        page += ["", "## Notes", "", args.notes.read_text().strip()]
    with atomic_path(args.output) as tmp:
        tmp.write_text("\n".join(page) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
