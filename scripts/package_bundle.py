#!/usr/bin/env python
"""Pack a MONAI bundle folder into ``<output-dir>/<name>_v<version>.zip`` (MONAI's model-zoo layout).

    python scripts/package_bundle.py --bundle bundles/hybrid_teacher --output-dir dist [--version 0.1.0]
                                     [--changelog TEXT] [--with-weights]

The zip holds ``<name>/configs``, ``<name>/docs``, ``<name>/LICENSE`` and, with ``--with-weights``,
``<name>/models/model.pt`` (and ``model.ts`` if present); its ``metadata.json`` carries the version and
a changelog entry for it. Install it with ``python -m monai.bundle download --name <name>
--url file:///abs/path/<name>_v<version>.zip --bundle_dir DIR``. Exit status: 0 on success, 1 when the
bundle cannot be packed (the message says why), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from kd_components.packaging import BundlePackagingError, package_bundle


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/hybrid_teacher")
    parser.add_argument("--output-dir", required=True, help="folder for the zip (created if needed)")
    parser.add_argument("--version", help="package version (default: the version in configs/metadata.json)")
    parser.add_argument("--changelog", help="changelog entry for the version (needed for a version without one)")
    parser.add_argument("--with-weights", action="store_true", help="pack models/model.pt (it must exist)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = package_bundle(args.bundle, args.output_dir, args.version, args.with_weights, args.changelog)
    except BundlePackagingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
