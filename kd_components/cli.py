"""The ``brats-kd`` command (installed with the package): every user-facing step is one of its verbs
(:data:`kd_components.commands.COMMANDS`; each verb's module documents it and its ``--help`` prints that).

    brats-kd phantoms | datalist | segment | evaluate | choose-postprocessing | false-positives | export | package
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from kd_components.commands import COMMANDS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``brats-kd`` parser with one subcommand per verb."""
    parser = argparse.ArgumentParser(
        prog="brats-kd",
        description="BraTS-KD: brain-tumour segmentation (BraTS 2023 labels) with a distilled student that runs on a "
        "CPU, and the steps around it. `brats-kd VERB --help` describes each verb.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for command in COMMANDS:
        command.add_to(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brats-kd``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["brats-kd", *argv])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
