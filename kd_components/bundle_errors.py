"""One line, not a traceback, for the errors a user of the bundles can mend.

``python -m monai.bundle run`` wraps an exception raised while it builds a component (``RuntimeError: Failed to
instantiate component ...``), so a setting or a datalist that this project refuses with a clear message ended in a
60- to 80-line traceback whose last line is MONAI's, the message buried in the middle. Importing this module (the
bundle configs' ``imports`` do) sets :data:`sys.excepthook` to :func:`one_line_excepthook`: when the exception that
ends the run was caused by one of :data:`USER_ERRORS`, it prints ``error: <that message>`` and a hint; any other
exception (a bug) keeps its full traceback, and so does every exception with ``BRATS_KD_TRACEBACK=1``.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["TRACEBACK_ENV", "USER_ERRORS", "one_line_excepthook", "user_error"]

#: Set to 1 to see the full traceback of any error.
TRACEBACK_ENV = "BRATS_KD_TRACEBACK"
#: The project's errors about the user's input, each with a message that names the file or setting and the fix
#: (module path, class name): imported when an exception ends the run, not before.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("kd_components.config_checks", "BundleSettingError"),
    ("kd_components.data.datalist", "DatalistError"),
    ("kd_components.data.brats", "InvalidCaseError"),
    ("kd_components.checkpoints.state", "CheckpointError"),
    ("kd_components.checkpoints.handlers", "CheckpointLoadError"),
    ("kd_components.io", "OutputDirError"),
)


def user_error(error: BaseException) -> BaseException | None:
    """The first of ``error`` and the exceptions it was raised from (``raise ... from``: ``__cause__``, as MONAI
    wraps a component's error) that is one of :data:`USER_ERRORS`; ``None`` when none is. An exception raised while
    another was handled (``__context__`` only) is not followed: that may be a bug, which keeps its traceback."""
    types = tuple(
        getattr(sys.modules[module], name)
        for module, name in USER_ERRORS
        if module in sys.modules and hasattr(sys.modules[module], name)
    )
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if types and isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def one_line_excepthook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    """:data:`sys.excepthook`: ``error: <message>`` for a :func:`user_error`, the default traceback otherwise."""
    cause = user_error(error)
    if cause is None or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
        sys.__excepthook__(kind, error, traceback)
        return
    print(f"error: {cause}", file=sys.stderr)
    print(f"(the full traceback: run again with {TRACEBACK_ENV}=1)", file=sys.stderr)


sys.excepthook = one_line_excepthook
