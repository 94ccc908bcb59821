"""Generate a BraTS-2023-layout phantom data set from the MNI152 brain shipped in nilearn.

Each case is a folder <id>/ with <id>-t1c.nii.gz, -t1n, -t2w, -t2f and (unless it is one of the --unlabelled last
cases) <id>-seg.nii.gz: simulated gliomas with BraTS-like contrasts, bias field and noise
(kd_components.data.phantoms). Case i depends only on (--seed, i).

    brats-kd phantoms --output-dir data/phantoms --num-cases 20 --unlabelled 4 --preview
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brats-kd phantoms``."""
    from kd_components.data.phantoms import PROFILES

    parser.add_argument("--output-dir", required=True, type=Path, help="folder that receives one folder per case")
    parser.add_argument("--num-cases", required=True, type=int, help="number of cases to generate")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed; case i depends only on (seed, i)")
    parser.add_argument("--profile", default="small", choices=sorted(PROFILES), help="output grid (default: small)")
    parser.add_argument("--unlabelled", type=int, default=0, help="write the last K cases without a segmentation")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: available cores)")
    parser.add_argument("--healthy", action="store_true", help="tumour-free brains (all-zero label maps)")
    parser.add_argument(
        "--healthy-share",
        type=float,
        default=0.0,
        help="probability that a labelled case is a healthy brain with an all-zero label map, so that training "
        "sees brains without tumour (default: 0)",
    )
    parser.add_argument("--preview", action="store_true", help="also write OUTPUT_DIR/preview.png")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the data set; the exit status (2: a bad option value)."""
    from kd_components.data.phantoms import is_healthy_case, make_phantom_dataset
    from kd_components.data.preview import save_preview

    start = time.perf_counter()
    try:
        ids = make_phantom_dataset(
            args.output_dir,
            args.num_cases,
            seed=args.seed,
            profile=args.profile,
            unlabelled=args.unlabelled,
            workers=args.workers,
            progress=not args.no_progress,
            healthy=args.healthy,
            healthy_share=args.healthy_share,
        )
    except ValueError as error:  # bad option values: reported like argparse does (exit status 2)
        print(f"brats-kd phantoms: error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    labelled = len(ids) - args.unlabelled
    healthy = sum(is_healthy_case(args.seed, i, args.healthy_share) for i in range(labelled))
    mixed = f", {healthy} of them healthy" if healthy and not args.healthy else ""
    print(
        f"wrote {len(ids)} {args.profile} phantom cases to {args.output_dir} in {elapsed:.1f} s: "
        f"{labelled} labelled{mixed}, {args.unlabelled} unlabelled "
        f"(seed {args.seed}{', healthy' if args.healthy else ''})"
    )
    if args.preview and ids:
        png = save_preview(args.output_dir, Path(args.output_dir) / "preview.png")
        print(f"preview: {png}")
    return 0
