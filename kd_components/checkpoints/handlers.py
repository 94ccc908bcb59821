"""Ignite/MONAI checkpoint handlers: atomic writes, and loads whose errors name the file and what does not fit."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from kd_components.checkpoints.state import non_finite_tensors, state_dict_mismatches
from kd_components.io import atomic_path
from kd_components.networks.utils import unwrap_module

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver", "CheckedCheckpointLoader", "CheckpointLoadError"]


class CheckpointLoadError(ValueError):
    """A checkpoint cannot be read, holds code instead of weights, or does not fit the network."""


class AtomicDiskSaver(DiskSaver):
    """Ignite's :class:`~ignite.handlers.DiskSaver` writing every checkpoint to a temporary file in the same
    folder, then renaming it into place (:func:`kd_components.io.atomic_path`), with the usual file mode.

    A process killed during a save leaves the previous checkpoint intact and no truncated file under the
    checkpoint's name. MONAI's :class:`~monai.handlers.CheckpointSaver` uses ``DiskSaver(atomic=False)``
    (Ignite's atomic mode makes files readable by their owner only), which a kill can leave truncated.

    Ignite's :class:`~ignite.handlers.Checkpoint` removes the checkpoint it replaces *before* it writes the
    new one, so a kill (or a full disk) in between would leave no checkpoint at all. This saver defers
    every removal until the next save has been renamed into place; a save that fails keeps the old file.

    Args:
        dirname: folder of the checkpoints.
        filename: a fixed file name (e.g. ``model.pt``) instead of the name Ignite makes.
    """

    def __init__(self, dirname: str | os.PathLike[str], filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True, create_dir=True)
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        super().__call__(checkpoint, name, metadata)
        pending, self._pending_removal = self._pending_removal, []
        for old in pending:
            if old != name and idist.get_rank() == self.save_on_rank:  # a fixed name was replaced by the rename
                (self.dirname / old).unlink(missing_ok=True)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        with atomic_path(path) as tmp:
            func(checkpoint, tmp, **self.kwargs)

    def remove(self, filename: str) -> None:
        """Remember ``filename`` and delete it after the next successful save (Ignite calls this first)."""
        self._pending_removal.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver` (same arguments and file names) with atomic writes
    (:class:`AtomicDiskSaver`) for the final, key-metric and interval checkpoints."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                handler = checkpoint.save_handler
                checkpoint.save_handler = AtomicDiskSaver(handler.dirname, getattr(handler, "filename", None))


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's :class:`~monai.handlers.CheckpointLoader` (``torch.load(..., weights_only=True)``, strict)
    whose errors say which file and why, and which never loads a checkpoint partially.

    MONAI's loader reports a missing file, a corrupt file, a pickle with code in it, or a checkpoint of
    another architecture with the bare PyTorch message, without the path; and ``load_state_dict`` copies
    every tensor that fits before it raises for the ones that do not. This loader reads the file once,
    checks every network in ``load_dict`` against it (missing and unexpected keys, shape mismatches),
    and loads nothing unless everything fits; otherwise it raises :class:`CheckpointLoadError` (or
    ``FileNotFoundError``) naming the file and the mismatches. Same arguments as ``CheckpointLoader``;
    with ``strict=False`` or ``strict_shape=False`` it is MONAI's loader unchanged.
    """

    def __call__(self, engine: Engine) -> None:
        if not (self.strict and self.strict_shape):
            super().__call__(engine)
            return
        path = Path(self.load_path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path} (train the bundle first, or set ckpt_dir)")
        try:
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        except Exception as err:
            raise CheckpointLoadError(
                f"cannot read checkpoint {path}: {type(err).__name__}: {err}. A truncated or non-PyTorch file, "
                "or a pickle that holds code (only tensors and plain containers are loaded)."
            ) from err
        name = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and not (isinstance(checkpoint, dict) and name in checkpoint):
            checkpoint = {name: checkpoint}  # a bare state dict, as models/model.pt
        problems = self._mismatches(checkpoint)
        if problems:
            raise CheckpointLoadError(
                f"checkpoint {path} does not fit the network definition or holds non-finite weights (another "
                "architecture or size? check the network settings, e.g. teacher_config, against the ones it was "
                "trained with; NaN weights come from a diverged run); nothing was loaded:\n  " + "\n  ".join(problems)
            )
        prior_max_epochs = engine.state.max_epochs  # as MONAI: keep the run's max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=True)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"checkpoint {path} is at epoch {engine.state.epoch}, beyond this run's {prior_max_epochs} epochs: "
                "raise --epochs to train further"
            )
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored all variables from {path}")

    def _mismatches(self, checkpoint: object) -> list[str]:
        if not isinstance(checkpoint, dict):
            return [f"expected a dict of state dicts, got {type(checkpoint).__name__}"]
        lines = [f"'{key}': not in the checkpoint" for key in self.load_dict if key not in checkpoint]
        for key, obj in self.load_dict.items():
            if key not in checkpoint:
                continue
            module = unwrap_module(obj) if isinstance(obj, torch.nn.Module) else obj
            if isinstance(module, torch.nn.Module):
                state = checkpoint[key]
                if not isinstance(state, dict):
                    lines.append(f"'{key}': expected a state dict, got {type(state).__name__}")
                    continue
                problems = [*state_dict_mismatches(module, state), *non_finite_tensors(state)]
                lines.extend(f"'{key}' ({type(module).__name__}): {m}" for m in problems)
        return lines
