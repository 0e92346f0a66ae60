"""Background prefetching: items in order, errors raised in the consumer, no thread left behind."""

from __future__ import annotations

import threading

import pytest

from vlret.data.prefetch import prefetch


def test_items_arrive_in_order_and_errors_reach_the_consumer():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad clip")

    got = []
    with pytest.raises(ValueError, match="bad clip"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1]


def _new_prefetchers(before: set[threading.Thread]) -> list[threading.Thread]:
    # Other tests' threads may come and go meanwhile: look only at prefetch threads this test started.
    return [t for t in threading.enumerate() if t.name == "vlret-prefetch" and t not in before]


def test_leaving_early_stops_the_thread():
    before = set(threading.enumerate())
    for item in prefetch(iter(range(1000)), depth=2):
        if item == 3:
            assert len(_new_prefetchers(before)) == 1
            break
    assert _new_prefetchers(before) == []  # closing the iterator joined its thread: nothing left to wait for


def test_a_dropped_iterator_waits_for_the_item_in_production():
    """A thread still producing (inside torch or a decoder) when the interpreter exits aborts the process:
    dropping the iterator must wait for the item being produced, then leave no thread."""
    before = set(threading.enumerate())
    producing, release, finished = threading.Event(), threading.Event(), []

    def slow():
        yield 0
        producing.set()
        release.wait(60)
        finished.append(1)
        yield 1

    items = prefetch(slow(), depth=1)
    assert next(items) == 0
    producing.wait(60)
    threading.Timer(0.05, release.set).start()
    items.close()
    assert finished == [1] and _new_prefetchers(before) == []
