"""A folder at the speed of its slowest stage: the next case is read while the network runs on this one, and the
label map of the last case is written meanwhile.

Reading (gzip, NumPy casts) and writing spend most of their time outside the GIL, and the network runs in
OpenVINO's or PyTorch's own threads, so on a few cores the stages overlap instead of adding up.
:func:`prefetch` runs a function over items in one background thread, a bounded number of items ahead, and gives
the results back in order, each with the exception it raised, if any (a bad case stops nothing).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Outcome", "prefetch"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Outcome(Generic[T, R]):
    """One item and what the work made of it: ``value``, or the ``error`` it raised (then ``value`` is ``None``)."""

    item: T
    value: R | None
    error: BaseException | None


def prefetch(items: Iterable[T], work: Callable[[T], R], ahead: int = 1) -> Iterator[Outcome[T, R]]:
    """``work(item)`` for every item, in a background thread, at most ``ahead`` items beyond the one the caller
    holds; the outcomes in the items' order. An exception of ``work`` is returned with its item, not raised
    (``KeyboardInterrupt`` and the like propagate). Closing the iterator early waits for the item in work."""
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                if len(pending) > ahead:
                    yield _outcome(*pending.popleft())
            while pending:
                yield _outcome(*pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()


def _outcome(item: T, future: Future[R]) -> Outcome[T, R]:
    error = future.exception()
    if error is not None and not isinstance(error, Exception):
        raise error
    return Outcome(item, None if error is not None else future.result(), error)
