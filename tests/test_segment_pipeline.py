"""kd_components.segment.pipeline.prefetch: in order, bounded, errors kept with their items."""

from __future__ import annotations

import threading
import time

import pytest

from kd_components.segment.pipeline import prefetch


def test_outcomes_in_order_with_each_items_error() -> None:
    def work(i: int) -> int:
        if i == 2:
            raise ValueError(f"case {i} is bad")
        time.sleep(0.01 * (5 - i))  # later items finish sooner: the order must still hold
        return i * i

    outcomes = list(prefetch(range(5), work))
    assert [o.item for o in outcomes] == [0, 1, 2, 3, 4]
    assert [o.value for o in outcomes] == [0, 1, None, 9, 16]
    assert isinstance(outcomes[2].error, ValueError) and "case 2" in str(outcomes[2].error)
    assert all(o.error is None for i, o in enumerate(outcomes) if i != 2)


def test_work_runs_ahead_of_the_consumer_but_no_further_than_asked() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        return i

    seen = []
    for outcome in prefetch(range(6), work, ahead=1):
        time.sleep(0.05)  # the consumer is slow: the worker has time to run ahead
        with lock:
            # at most this item, the one ahead, and the one queued behind it
            assert max(started) <= outcome.item + 2
        seen.append(outcome.item)
    assert seen == list(range(6))
    assert started == list(range(6))


def test_an_interrupt_in_the_work_is_raised_not_returned() -> None:
    def work(i: int) -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(prefetch(range(2), work))
