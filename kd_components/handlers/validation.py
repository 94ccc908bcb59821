"""Validation during training that always ends with a validation of the final weights."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["FinalValidationHandler"]


class FinalValidationHandler(ValidationHandler):
    """MONAI's :class:`~monai.handlers.ValidationHandler` (same arguments) that also validates after the last
    epoch when ``max_epochs`` is not a multiple of ``interval``.

    With MONAI's handler, a run shorter than ``interval`` (``--epochs 1`` with ``val_interval`` 6) never
    validates, so the key-metric checkpoint ``models/model.pt`` is never written and inference then has no
    weights to load. Here every finished epoch-level training validates its final weights once.
    """

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    def attach(self, engine: Engine) -> None:
        """Validate every ``interval`` epochs and after the last one (iteration level: as MONAI)."""
        if not self.epoch_level:
            super().attach(engine)
            return
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)
