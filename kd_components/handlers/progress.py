"""A tqdm progress bar for MONAI engines that can be declared in a bundle config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar as IgniteProgressBar

from kd_components.handlers.loss_logging import is_loss_key


def _first(value: Any) -> Any:
    """MONAI engines decollate outputs into a list of per-sample dicts; the loss is the same in each."""
    return value[0] if isinstance(value, list | tuple) and value else value


class ProgressBar:
    """Ignite's :class:`~ignite.handlers.ProgressBar`, attachable from a config (``attach(engine)`` only).

    Shows values of the iteration output (by default its loss entries: ``loss`` and, for distillation,
    each term's ``loss_<name>``) and, with ``metric_names="all"``, the engine's metrics.

    Args:
        output_keys: keys of ``engine.state.output`` (a dict, or MONAI's list of per-sample dicts) to show;
            ``None`` (the default) shows every loss entry (:func:`~kd_components.handlers.loss_logging.is_loss_key`).
        metric_names: passed to Ignite (``"all"`` or a list of metric names); ``None`` shows none.
        desc: text before the bar.
        persist: keep the bar on screen after each epoch.
    """

    def __init__(
        self,
        output_keys: Sequence[str] | None = None,
        metric_names: str | Sequence[str] | None = None,
        desc: str | None = None,
        persist: bool = False,
    ) -> None:
        self.output_keys = None if output_keys is None else list(output_keys)
        self.metric_names = metric_names
        self.bar = IgniteProgressBar(persist=persist, desc=desc or "")

    def _values(self, output: Any) -> dict[str, float]:
        item = _first(output)
        if not isinstance(item, dict):
            return {}
        keys = [k for k in item if is_loss_key(k)] if self.output_keys is None else self.output_keys
        return {k: float(_first(item[k])) for k in keys if k in item}

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, metric_names=self.metric_names, output_transform=self._values)
