"""glibc malloc settings for 3D training on a CPU.

A training step allocates and frees tensors of tens to hundreds of megabytes. With glibc's defaults
every block above the (dynamic, at most 32 MiB) mmap threshold is a fresh ``mmap`` whose pages the
kernel zero-fills on first touch, and freed heap memory above 128 KiB is trimmed back to the kernel
at once, only to be faulted in again on the next step: a demo run spent a quarter of its CPU time in
the kernel on minor page faults. Two settings keep that memory in the process:

- ``M_MMAP_THRESHOLD`` at its maximum (32 MiB on 64-bit glibc), so that every block below it comes
  from the heap and is reused;
- ``M_TRIM_THRESHOLD`` very high, so that free heap memory is kept for the next step.

They are what the environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set
when a process starts; :func:`tune_malloc` sets them from inside a running process with ``mallopt``
(the bundles' ``initialize`` lists call it), so ``python -m monai.bundle run`` needs no wrapper.
Where the C library is not glibc it does nothing. ``BRATS_KD_MALLOC=default`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc"]

logger = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Bytes: the largest mmap threshold glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``)."""
TRIM_THRESHOLD = 2**31 - 1
"""Bytes of free heap memory kept before glibc returns any to the kernel (the largest value ``mallopt`` takes)."""

_ENV_SWITCH = "BRATS_KD_MALLOC"


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds for this process.

    Returns:
        True when both settings were applied; False where the C library is not glibc, where
        ``BRATS_KD_MALLOC=default`` asks for the defaults, or where glibc refused a value (logged).
    """
    if os.environ.get(_ENV_SWITCH, "").strip().lower() == "default":
        return False
    libc = _glibc()
    if libc is None:
        return False
    applied = True
    for name, parameter, value in (
        ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, mmap_threshold),
        ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, trim_threshold),
    ):
        if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
            logger.warning("glibc refused mallopt(%s, %d); keeping its default", name, value)
            applied = False
    return applied


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (the one that has ``mallopt`` and ``gnu_get_libc_version``)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
