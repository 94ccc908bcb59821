"""Export a bundle's network to ONNX (dynamic batch and spatial sizes, checked against PyTorch) or, with
--format torchscript, to the model.ts a MONAI Deploy application runs.

    brats-kd export --bundle bundles/distilled_student --ckpt bundles/distilled_student/models/model.pt \
        --output model.onnx --check-size 96 96 96
    brats-kd export --format torchscript --bundle bundles/distilled_student \
        --ckpt bundles/distilled_student/models/model.pt --output model.ts

ONNX: the graph is traced at --example-size and compared with PyTorch (ONNX Runtime) at every --check-size; exit
status 1 when they differ by more than the tolerance. TorchScript: MONAI's ckpt_export with the bundle's
metadata.json and inference.json embedded and, by default, the training_geometry.json beside the weights (the grid
they were trained on; without it the file runs at the bundle's grid, which the command warns about). Exit status 2
when the bundle or the weights cannot be loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brats-kd export``."""
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (reads configs/inference.json)")
    parser.add_argument(
        "--ckpt", type=Path, help="model.pt (or a latest*.pt training checkpoint); none: random weights"
    )
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    parser.add_argument("--output", type=Path, required=True, help="the .onnx (or .ts) file to write")
    parser.add_argument("--net-id", default="network_def", help="network id in the config (default: network_def)")
    parser.add_argument("--example-size", type=int, nargs=3, default=[64, 64, 64], help="spatial size to trace with")
    parser.add_argument(
        "--spatial-multiple", type=int, help="spatial sizes are multiples of this (default: what the network needs)"
    )
    parser.add_argument(
        "--check-size", type=int, nargs=3, action="append", help="spatial size to compare with PyTorch (repeatable)"
    )


def run(args: argparse.Namespace) -> int:
    """Export and compare; the exit status."""
    from monai.bundle import ConfigParser

    from kd_components.checkpoints.state import CheckpointError
    from kd_components.constants import MODALITIES
    from kd_components.export import ONNX_ATOL, compare_onnx_with_torch, export_onnx, load_network

    config_file = args.bundle / "configs" / "inference.json"
    if not config_file.is_file():
        print(f"error: {args.bundle} is not a bundle folder: {config_file} does not exist", file=sys.stderr)
        return 2
    if args.ckpt is not None and not args.ckpt.is_file():
        print(f"error: checkpoint {args.ckpt} does not exist", file=sys.stderr)
        return 2
    config = ConfigParser()
    config.read_config(str(config_file))
    try:
        network = load_network(config.get_parsed_content(args.net_id), args.ckpt)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.format == "torchscript":
        return _torchscript(args, config_file)
    channels = len(MODALITIES)
    path = export_onnx(network, args.output, (1, channels, *args.example_size), args.spatial_multiple)
    shapes = [(1, channels, *size) for size in (args.check_size or [args.example_size])]
    differences = compare_onnx_with_torch(network, path, shapes)
    for shape, diff in zip(shapes, differences, strict=True):
        print(f"{list(shape)}: max |onnxruntime - torch| = {diff:.2e}")
    print(f"wrote {path}")
    if max(differences) > ONNX_ATOL:
        print(f"error: the ONNX graph differs from PyTorch by more than {ONNX_ATOL}", file=sys.stderr)
        return 1
    return 0


def _torchscript(args: argparse.Namespace, config_file: Path) -> int:
    """``monai.bundle.ckpt_export`` of the checked weights with the configs and the training grid embedded."""
    from monai.bundle import ckpt_export

    from kd_components.geometry import GEOMETRY_FILE

    if args.ckpt is None:
        print("error: --format torchscript needs --ckpt (the weights to export)", file=sys.stderr)
        return 2
    configs = [str(config_file)]
    geometry = args.ckpt.parent / GEOMETRY_FILE
    if geometry.is_file():
        configs.append(str(geometry))
    else:
        print(
            f"warning: {geometry} is not beside the weights: model.ts gets no training grid and runs at the bundle's",
            file=sys.stderr,
        )
    # the archive's root folder is the file's stem, which MONAI Deploy reads back: write it under its final name in
    # a temporary folder beside the output, then move it into place (atomic, nothing half-written on a failure)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.output.parent, prefix=".export-") as folder:
        staged = Path(folder) / args.output.name
        ckpt_export(
            net_id=args.net_id,
            filepath=str(staged),
            ckpt_file=str(args.ckpt),
            meta_file=str(args.bundle / "configs" / "metadata.json"),
            config_file=configs,
        )
        os.replace(staged, args.output)
    print(f"wrote {args.output} ({', '.join(Path(c).name for c in configs)} embedded)")
    return 0
