"""The resumable "latest" checkpoint of a bundle training run: saving it, and resuming from it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

from kd_components.checkpoints.handlers import AtomicCheckpointSaver, CheckedCheckpointLoader

#: ``file_prefix`` of the interval checkpoints.
LATEST_PREFIX = "latest"


def find_latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str = LATEST_PREFIX) -> Path:
    """The most recently written ``<prefix>*.pt`` in ``ckpt_dir``; ``FileNotFoundError`` when there is none."""
    candidates = sorted(Path(ckpt_dir).glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no '{prefix}*.pt' checkpoint in {ckpt_dir} to resume from")
    return candidates[-1]


class ResumableCheckpoint:
    """Save the full training state every ``save_interval`` epochs and, if asked, resume from it.

    The trainer cannot be referenced from its own handler list in a bundle config (that is a
    circular reference), so this handler adds the engine it is attached to as ``"trainer"`` to
    ``save_dict`` and then attaches an :class:`~kd_components.checkpoints.AtomicCheckpointSaver` (MONAI's
    saver writing through a temporary file, so a kill during a save never leaves a corrupt file; one
    ``latest*.pt`` is kept, older ones of earlier runs are removed) and, when resuming,
    :class:`~kd_components.checkpoints.CheckedCheckpointLoader`. Restoring the trainer restores the epoch and
    iteration counters, so training continues after the last completed epoch.

    Args:
        ckpt_dir: folder of the checkpoints.
        save_dict: objects to save besides the trainer, e.g. ``model``, ``optimizer``, ``lr_scheduler``.
        resume_from: ``""`` (start from scratch), ``"latest"`` (the newest ``latest*.pt`` in ``ckpt_dir``)
            or the path of a checkpoint file.
        save_interval: epochs between saves.
        map_location: passed to ``torch.load`` when resuming.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike[str],
        save_dict: dict[str, Any],
        resume_from: str | os.PathLike[str] | None = "",
        save_interval: int = 1,
        map_location: Any = "cpu",
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.resume_from = str(resume_from or "")
        self.save_interval = save_interval
        self.map_location = map_location

    def resume_path(self) -> Path | None:
        """The checkpoint file to resume from, or ``None`` when starting from scratch."""
        if not self.resume_from:
            return None
        if self.resume_from == LATEST_PREFIX:
            return find_latest_checkpoint(self.ckpt_dir)
        path = Path(self.resume_from)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from does not exist: {path}")
        return path

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, "trainer": engine}
        path = self.resume_path()
        if path is not None:
            loader = CheckedCheckpointLoader(load_path=str(path), load_dict=objects, map_location=self.map_location)
            loader.attach(engine)
            engine.add_event_handler(Events.STARTED, self._log_resumed, path)
        saver = AtomicCheckpointSaver(
            save_dir=str(self.ckpt_dir),
            save_dict=objects,
            file_prefix=LATEST_PREFIX,
            save_interval=self.save_interval,
            n_saved=1,
            epoch_level=True,
        )
        saver.attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._remove_stale, saver)

    @staticmethod
    def _log_resumed(engine: Engine, path: Path) -> None:
        engine.logger.info(
            f"resumed from {path}: continuing after epoch {engine.state.epoch} "
            f"(iteration {engine.state.iteration}) of {engine.state.max_epochs}"
        )

    def _remove_stale(self, engine: Engine, saver: AtomicCheckpointSaver) -> None:
        """After a save, delete ``latest*.pt`` files of earlier runs (a resumed run's saver does not know them)
        and temporary files of saves that a kill cut short."""
        if idist.get_rank() != 0:  # only rank 0 writes; others must not touch its files (or its temp file)
            return
        if saver._interval_checkpoint is None or saver._interval_checkpoint.last_checkpoint is None:
            return
        current = Path(str(saver._interval_checkpoint.last_checkpoint)).name
        for stale in self.ckpt_dir.glob(f"{LATEST_PREFIX}*.pt"):
            if stale.name != current:
                stale.unlink(missing_ok=True)
        for partial in self.ckpt_dir.glob(f".{LATEST_PREFIX}*.tmp*.pt"):  # a save cut short by a kill
            partial.unlink(missing_ok=True)
