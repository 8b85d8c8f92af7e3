"""Bitrix24's limits, as the facts sheet (§5) describes them, on a scalable clock.

* **Leaky bucket**: each HTTP request adds 1, the level drains at ``drain_per_s``; a
  request that would overflow ``bucket_size`` gets HTTP 503 ``QUERY_LIMIT_EXCEEDED``.
  A batch is one request.
* **Per-method time budget** ("operating"): server time per (credential, method) is
  summed over ten one-minute buckets; when the sum exceeds the budget the *next* call
  of that method gets HTTP 429 ``OPERATION_TIME_LIMIT``; the call that crosses the
  budget completes. ``operating_reset_at`` is when the oldest bucket drops out.

Server cost model (seconds of server time, before ``time_scale``):

* a 50-row list page with ``start=-1``: ``page_cost_s = 0.25`` — the PHP SDK author
  measured 14.4 s for 2,700 rows read by batch on a real 100 k-contact portal
  (mesilov/bitrix24-php-sdk, batch-read-mode.md), i.e. ≈ 0.27 s per 50 rows; a page
  returning fewer rows costs proportionally less, never under a fifth;
* a page with ``start >= 0`` also runs a COUNT: ``count_cost_per_row_s × table rows``,
  from the vendor's measurement of 49.9 s vs 0.097 s per page on 2,387,743 rows
  (``(49.9 − 0.097) / 2.39 M ≈ 20.9 µs`` per row);
* any other call: ``call_cost_s = 0.02``.

``time_scale`` multiplies every duration (costs, window, drain period, timeout,
latency) in real time, so 0.01 runs a ten-minute window in six seconds.

Two accounting questions the sources disagree on (§5.2) are switches:
``operating_scope`` — one budget per method for the whole portal (pre-2026 docs and
helpdesk; the default, as the stricter) or per method and credential (current docs);
``batch_accounting`` — nested calls charged to their own methods (current docs) or the
whole batch charged to ``batch`` (a jssdk maintainer's measurement).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["EmulatorLimits", "LeakyBucket", "OperatingBudget"]


@dataclass(frozen=True)
class EmulatorLimits:
    """Every limit and cost of the emulated portal (defaults: non-Enterprise cloud).

    ``enabled=False`` turns off the bucket, the budget, the hard timeout and the acted-out
    server time (fast tests); ``latency_s`` is network, not a limit, and still applies.
    """

    enabled: bool = True
    bucket_size: int = 50
    drain_per_s: float = 2.0
    operating_budget_s: float = 480.0
    operating_window_s: float = 600.0
    operating_buckets: int = 10
    page_cost_s: float = 0.25
    count_cost_per_row_s: float = (49.9 - 0.097) / 2_387_743
    call_cost_s: float = 0.02
    request_timeout_s: float = 60.0
    latency_s: float = 0.0
    time_scale: float = 1.0
    batch_accounting: Literal["nested", "batch"] = "nested"
    operating_scope: Literal["portal", "credential"] = "portal"

    def scaled(self) -> EmulatorLimits:
        """The same limits expressed in real seconds (``time_scale`` applied)."""
        s = self.time_scale
        return replace(
            self, drain_per_s=self.drain_per_s / s, operating_budget_s=self.operating_budget_s * s,
            operating_window_s=self.operating_window_s * s, page_cost_s=self.page_cost_s * s,
            count_cost_per_row_s=self.count_cost_per_row_s * s, call_cost_s=self.call_cost_s * s,
            request_timeout_s=self.request_timeout_s * s, latency_s=self.latency_s * s,
            time_scale=1.0,
        )

    def page_cost(self, rows: int, counted_rows: int | None) -> float:
        """Server seconds for one list page (``counted_rows`` when a COUNT ran)."""
        cost = self.page_cost_s * max(rows, 10) / 50
        if counted_rows is not None:
            cost += self.count_cost_per_row_s * counted_rows
        return cost


class LeakyBucket:
    """Request-rate limit: admit a request unless it would overflow the bucket."""

    def __init__(self, size: int, drain_per_s: float) -> None:
        self.size, self.drain_per_s = size, drain_per_s
        self.level, self.at = 0.0, None  # type: float, float | None

    def admit(self, now: float) -> bool:
        """Count one request at ``now``; False means answer 503."""
        if self.at is not None:
            self.level = max(0.0, self.level - (now - self.at) * self.drain_per_s)
        self.at = now
        if self.level + 1 > self.size:
            return False
        self.level += 1
        return True


class OperatingBudget:
    """Server time per key (credential, method) in one-minute buckets over the window."""

    def __init__(self, budget_s: float, window_s: float, buckets: int) -> None:
        self.budget_s, self.buckets = budget_s, buckets
        self.bucket_len = window_s / buckets
        self._spent: dict[str, dict[int, float]] = defaultdict(dict)

    def _live(self, key: str, now: float) -> dict[int, float]:
        current = math.floor(now / self.bucket_len)
        spent = self._spent[key]
        for index in [i for i in spent if i <= current - self.buckets]:
            del spent[index]
        return spent

    def operating(self, key: str, now: float) -> float:
        """Seconds spent by ``key`` within the window."""
        return sum(self._live(key, now).values())

    def blocked(self, key: str, now: float) -> bool:
        """True once the sum has exceeded the budget (checked before each call)."""
        return self.operating(key, now) > self.budget_s

    def charge(self, key: str, now: float, seconds: float) -> None:
        """Add a finished call's server time to the current bucket."""
        index = math.floor(now / self.bucket_len)
        spent = self._live(key, now)
        spent[index] = spent.get(index, 0.0) + seconds

    def reset_at(self, key: str, now: float) -> int:
        """Unix time when the oldest non-empty bucket leaves the window."""
        spent = self._live(key, now)
        oldest = min(spent) if spent else math.floor(now / self.bucket_len)
        return math.ceil((oldest + self.buckets) * self.bucket_len)
