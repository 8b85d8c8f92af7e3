"""HTTP plumbing shared by the adapters: client factory, redaction, pacing, one retry policy.

* :func:`make_http_client` builds the ``httpx.Client`` (explicit timeout, no redirects);
  adapters receive it, nothing here is global.
* :func:`redact` hides credentials: a Bitrix24 inbound webhook carries its secret in the
  URL *path*, and httpx logs every URL at INFO, so its loggers are quietened too.
* :class:`Pacer` keeps a client under the CRM's limits so retries stay the exception:
  a leaky-bucket model of the request rate and a per-method ledger of server time
  (Bitrix24's "operating" budget).
* :class:`RetryPolicy` is the single tenacity policy: only ``RetryableCrmError`` is
  retried, waiting what the CRM asked for or backing off exponentially with jitter.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx
import tenacity

from connector.errors import RetryableCrmError

__all__ = [
    "Pacer",
    "PacerLimits",
    "RetryPolicy",
    "make_http_client",
    "quiet_http_loggers",
    "redact",
]

log = logging.getLogger("crm_retention.http")

_WEBHOOK_PATH = re.compile(r"(/rest/(?:api/)?\d+/)[^/\s?#\"']+")
_SECRET_PARAMS = re.compile(
    r"((?:auth|access_token|refresh_token|client_secret|code|token)[\"']?\s*[=:]\s*[\"']?)"
    r"[^&\s\"',}]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
MASK = "***"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide webhook secrets, tokens and any given secret strings in ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _WEBHOOK_PATH.sub(rf"\g<1>{MASK}", text)
    text = _SECRET_PARAMS.sub(rf"\g<1>{MASK}", text)
    return _BEARER.sub(rf"\g<1>{MASK}", text)


def _user_agent() -> str:
    try:
        return f"crm-retention/{version('crm-retention')}"
    except PackageNotFoundError:  # running from a source tree without install
        return "crm-retention/dev"


def make_http_client(
    *, timeout_s: float = 65.0, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """An ``httpx.Client`` for one CRM: explicit timeouts, redirects not followed.

    A renamed portal answers 302; following it would turn a POST into a GET and drop
    the body, so the adapter sees the redirect instead.
    """
    quiet_http_loggers()
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
    headers = {"User-Agent": _user_agent(), "Accept": "application/json"}
    return httpx.Client(timeout=timeout, transport=transport, follow_redirects=False,
                        headers=headers)


def quiet_http_loggers() -> None:
    """httpx and httpcore log full request URLs (the webhook secret) at INFO/DEBUG."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


# -- pacing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PacerLimits:
    """The limits the pacer keeps under (defaults: Bitrix24 non-Enterprise)."""

    bucket_size: int = 50
    drain_per_s: float = 2.0
    operating_budget_s: float = 480.0
    operating_window_s: float = 600.0
    operating_buckets: int = 10
    safety_margin_s: float = 5.0
    allow_crossing: bool = False

    def scaled(self, time_scale: float) -> PacerLimits:
        """The same limits on a clock ``time_scale`` times real time (benchmarks, demo)."""
        return replace(
            self,
            drain_per_s=self.drain_per_s / time_scale,
            operating_budget_s=self.operating_budget_s * time_scale,
            operating_window_s=self.operating_window_s * time_scale,
            safety_margin_s=self.safety_margin_s * time_scale,
        )


@dataclass
class PacerStats:
    """How much the pacer made the client wait."""

    waits: int = 0
    waited_s: float = 0.0


@dataclass
class _MethodLedger:
    """Server time charged to one method, as (drop-out time, seconds) entries."""

    entries: deque[tuple[float, float]] = field(default_factory=deque)
    cost_per_call: float = 0.0  # EMA of server seconds per sub-call
    blocked_until: float = 0.0
    phase: float | None = None  # bucket alignment learned from operating_reset_at

    def charged(self, now: float) -> float:
        while self.entries and self.entries[0][0] <= now:
            self.entries.popleft()
        return sum(cost for _, cost in self.entries)


class Pacer:
    """Client-side pacing for a leaky-bucket rate limit and per-method time budgets.

    Clocks and ``sleep`` are injected so tests never wait. ``wall_clock`` is Unix time
    (to read the server's ``operating_reset_at``); ``clock`` is monotonic.
    """

    def __init__(
        self,
        limits: PacerLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits = limits or PacerLimits()
        self.clock, self.wall_clock, self.sleep = clock, wall_clock, sleep
        self.stats = PacerStats()
        self._level = 0.0
        self._level_at = clock()
        self._ledgers: dict[str, _MethodLedger] = defaultdict(_MethodLedger)

    # The public surface -------------------------------------------------------------------
    def before_request(self, methods: Mapping[str, int]) -> float:
        """Wait until one more request (with these sub-calls) fits every limit."""
        wait = max(self._bucket_wait(), *(self._budget_wait(m, n) for m, n in methods.items()))
        if wait > 0:
            self.stats.waits += 1
            self.stats.waited_s += wait
            log.debug("pacing: waiting %.3f s", wait)
            self.sleep(wait)
        self._drain()
        self._level += 1.0
        return max(wait, 0.0)

    def after_response(
        self, methods: Mapping[str, int], time_info: Mapping[str, Any] | None, elapsed_s: float
    ) -> None:
        """Charge the server time a response reports (or the elapsed time) to its methods."""
        info = time_info if isinstance(time_info, Mapping) else {}
        cost = _number(info.get("processing")) or _number(info.get("duration")) or elapsed_s
        calls = max(sum(methods.values()), 1)
        now = self.wall_clock()
        for method, count in methods.items():
            ledger = self._ledgers[method]
            self._learn_phase(ledger, info)
            share = cost * count / calls
            ledger.entries.append((self._drop_time(ledger, now), share))
            per_call = share / max(count, 1)
            ledger.cost_per_call = per_call if not ledger.cost_per_call else (
                0.7 * ledger.cost_per_call + 0.3 * per_call)
            self._calibrate(ledger, info, now)

    def blocked_until(self, method: str, reset_at: float) -> None:
        """After a 429: ``method`` must not be called before ``reset_at`` (Unix time)."""
        ledger = self._ledgers[method]
        ledger.blocked_until = max(ledger.blocked_until, reset_at)

    def operating(self, method: str) -> float:
        """Server seconds this pacer believes ``method`` has spent in the current window."""
        return self._ledgers[method].charged(self.wall_clock())

    # Leaky bucket ---------------------------------------------------------------------
    def _drain(self) -> None:
        now = self.clock()
        self._level = max(0.0, self._level - (now - self._level_at) * self.limits.drain_per_s)
        self._level_at = now

    def _bucket_wait(self) -> float:
        self._drain()
        excess = self._level + 1.0 - (self.limits.bucket_size - 1)
        return excess / self.limits.drain_per_s if excess > 0 else 0.0

    # Time budget ----------------------------------------------------------------------
    def _budget_wait(self, method: str, calls: int) -> float:
        ledger = self._ledgers[method]
        now = self.wall_clock()
        start = max(now, ledger.blocked_until)
        expected = 0.0 if self.limits.allow_crossing else ledger.cost_per_call * calls
        allowed = self.limits.operating_budget_s - self.limits.safety_margin_s - expected
        charged = ledger.charged(now)
        if charged <= allowed:
            return start - now
        # Entries leave the window in order; wait for as many as must go.
        free_at = now
        for entry_drop, cost in ledger.entries:
            charged, free_at = charged - cost, entry_drop
            if charged <= allowed:
                break
        return max(start, free_at) - now

    def _bucket_len(self) -> float:
        return self.limits.operating_window_s / self.limits.operating_buckets

    def _learn_phase(self, ledger: _MethodLedger, info: Mapping[str, Any]) -> None:
        reset_at = _number(info.get("operating_reset_at"))
        if reset_at:
            ledger.phase = reset_at % self._bucket_len()

    def _drop_time(self, ledger: _MethodLedger, now: float) -> float:
        # The server charges whole buckets: a cost charged at ``now`` leaves the window
        # when its bucket does. Without a known phase, ``now + window`` is the safe bound.
        window = self.limits.operating_window_s
        if ledger.phase is None:
            return now + window
        length = self._bucket_len()
        start = math.floor((now - ledger.phase) / length) * length + ledger.phase
        return start + window

    def _calibrate(self, ledger: _MethodLedger, info: Mapping[str, Any], now: float) -> None:
        # The server's own total is authoritative when it is larger than our estimate
        # (another process with the same webhook, or costs we did not see).
        reported = _number(info.get("operating"))
        if reported is None:
            return
        gap = reported - ledger.charged(now)
        if gap > 1e-9:
            ledger.entries.append((self._drop_time(ledger, now), gap))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# -- retries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy: only ``RetryableCrmError``, capped backoff, an overall deadline."""

    max_attempts: int = 8
    max_delay_s: float = 120.0
    base_delay_s: float = 0.5
    deadline_s: float = 900.0

    def retrying(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[RetryableCrmError, float], None] | None = None,
    ) -> tenacity.Retrying:
        """A tenacity ``Retrying`` that re-raises the last error when it gives up."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableCrmError),
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self.wait_for,
            sleep=sleep,
            reraise=True,
            before_sleep=lambda state: self._log_retry(state, on_retry),
        )

    def wait_for(self, state: tenacity.RetryCallState) -> float:
        """What the CRM asked for, else exponential backoff with full jitter."""
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after", None)
        if isinstance(asked, int | float) and asked >= 0:
            # A 429 may ask for minutes (until operating_reset_at); honour it up to the deadline.
            return float(min(asked, self.deadline_s))
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _log_retry(
        self,
        state: tenacity.RetryCallState,
        on_retry: Callable[[RetryableCrmError, float], None] | None,
    ) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if isinstance(exc, RetryableCrmError):
            log.warning("retry %d/%d in %.2f s: %s", state.attempt_number, self.max_attempts,
                        delay, redact(str(exc)))
            if on_retry is not None:
                on_retry(exc, delay)
