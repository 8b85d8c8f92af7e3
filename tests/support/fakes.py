"""Test doubles shared across the suite (``tests/support`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """A monotonic clock that ``sleep`` moves instead of waiting; remembers each sleep."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"asked to sleep {seconds} s"
        self.slept.append(seconds)
        self.now += seconds
