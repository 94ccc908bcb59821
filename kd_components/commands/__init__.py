"""The verbs of ``brats-kd``, one module each: its docstring is the verb's ``--help`` description, ``add_arguments``
declares its options and ``run`` carries it out and returns the exit status (0 done, 1 a case or input could not be
handled and is named, 2 a usage error). :mod:`kd_components.cli` puts them together."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

__all__ = ["COMMANDS", "Command", "add_et_label_argument"]


@dataclass(frozen=True)
class Command:
    """One verb: its name, one-line help, and the module that declares and runs it."""

    name: str
    help: str
    module: str

    def load(self) -> ModuleType:
        import importlib

        return importlib.import_module(f"kd_components.commands.{self.module}")

    def add_to(self, commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
        """Add the verb's parser (description: its module's docstring) to ``commands``."""
        module = self.load()
        parser = commands.add_parser(
            self.name,
            help=self.help,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        run: Callable[[argparse.Namespace], int] = module.run
        parser.set_defaults(run=run)
        return parser


def add_et_label_argument(parser: argparse.ArgumentParser, where: str) -> None:
    """``--et-label``: the value of enhancing tumour in ``where`` (e.g. "the label maps"), 3 or 4."""
    from kd_components.constants import ET_LABEL, LEGACY_ET_LABEL

    parser.add_argument(
        "--et-label",
        type=int,
        choices=(ET_LABEL, LEGACY_ET_LABEL),
        default=ET_LABEL,
        help=f"ET value in {where}: {ET_LABEL} (BraTS 2023, default) or {LEGACY_ET_LABEL} (BraTS 2018-2022)",
    )


#: The verbs in the order a user meets them: data, training's companions, inference, scoring, delivery.
COMMANDS: tuple[Command, ...] = (
    Command("phantoms", "generate a BraTS-2023-layout phantom data set from the MNI152 brain", "phantoms"),
    Command("datalist", "validate a BraTS data set and write a datalist with cross-validation folds", "datalist"),
    Command("segment", "segment BraTS cases (case folders, folders of cases, or four files)", "segment"),
    Command("evaluate", "score label maps against BraTS cases with the challenge's (lesion-wise) metrics", "evaluate"),
    Command(
        "choose-postprocessing",
        "choose a network's post-processing thresholds on the validation fold",
        "postprocessing",
    ),
    Command(
        "false-positives",
        "tumour predicted on healthy phantoms and Dice on an unseen phantom seed",
        "false_positives",
    ),
    Command("export", "export a bundle's network to ONNX and check it against PyTorch", "export"),
    Command("package", "pack a bundle into a MONAI model-zoo zip", "package"),
)
