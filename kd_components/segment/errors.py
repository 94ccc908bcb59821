"""The error of an engine that cannot run here."""

from __future__ import annotations

__all__ = ["EngineError"]


class EngineError(RuntimeError):
    """An engine that cannot run here (not installed, precision not supported): the message says which and why."""
