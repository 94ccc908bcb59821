"""Pack a MONAI bundle folder into <output-dir>/<name>_v<version>.zip (MONAI's model-zoo layout).

    brats-kd package --bundle bundles/hybrid_teacher --output-dir dist [--version 0.1.0] [--changelog TEXT]
                     [--with-weights]

The zip holds <name>/configs, <name>/docs, <name>/LICENSE and, with --with-weights, <name>/models/model.pt (and
model.ts if present); its metadata.json carries the version and a changelog entry for it. Install it with
python -m monai.bundle download --name <name> --url file:///abs/path/<name>_v<version>.zip --bundle_dir DIR.
Exit status: 0 on success, 1 when the bundle cannot be packed (the message says why), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brats-kd package``."""
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/hybrid_teacher")
    parser.add_argument("--output-dir", required=True, help="folder for the zip (created if needed)")
    parser.add_argument("--version", help="package version (default: the version in configs/metadata.json)")
    parser.add_argument("--changelog", help="changelog entry for the version (needed for a version without one)")
    parser.add_argument("--with-weights", action="store_true", help="pack models/model.pt (it must exist)")


def run(args: argparse.Namespace) -> int:
    """Pack the bundle; the exit status."""
    from kd_components.packaging import BundlePackagingError, package_bundle

    try:
        path = package_bundle(args.bundle, args.output_dir, args.version, args.with_weights, args.changelog)
    except BundlePackagingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
