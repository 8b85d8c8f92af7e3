"""one_ahead: order, errors where they happened, overlap, and cleanup on an early stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from connector.prefetch import one_ahead


def test_items_come_in_order_and_all_of_them() -> None:
    assert list(one_ahead(iter(range(100)))) == list(range(100))
    assert list(one_ahead(iter([]))) == []


def test_the_next_item_is_fetched_while_the_caller_works() -> None:
    second_asked = threading.Event()

    def pages() -> Iterator[int]:
        yield 1
        second_asked.set()
        yield 2

    walk = one_ahead(pages())
    assert next(walk) == 1
    # the caller has not asked for 2 yet, but the worker is already fetching it
    assert second_asked.wait(timeout=5)
    assert list(walk) == [2]


def test_an_error_surfaces_after_the_pages_before_it() -> None:
    def pages() -> Iterator[int]:
        yield 1
        raise ConnectionError("page 2 failed")

    seen = []
    with pytest.raises(ConnectionError, match="page 2 failed"):
        for page in one_ahead(pages()):
            seen.append(page)
    assert seen == [1]


def test_an_early_stop_closes_the_source_after_the_fetch_in_flight() -> None:
    events: list[str] = []

    def pages() -> Iterator[int]:
        try:
            for n in range(10):
                events.append(f"fetch {n}")
                yield n
        finally:
            events.append("closed")

    with pytest.raises(RuntimeError):
        for page in one_ahead(pages()):
            if page == 1:
                raise RuntimeError("the mirror write failed")
    # page 2 may or may not have started when the caller stopped (if it had, it was
    # waited for); either way nothing ran after the source was closed
    assert events in (["fetch 0", "fetch 1", "closed"],
                      ["fetch 0", "fetch 1", "fetch 2", "closed"])
