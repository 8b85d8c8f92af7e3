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
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx
import tenacity

from connector.errors import RetryableCrmError

__all__ = [
    "BATCH",
    "Pacer",
    "PacerLimits",
    "PacerStats",
    "RetryPolicy",
    "make_http_client",
    "quiet_http_loggers",
    "redact",
]

log = logging.getLogger("crm_retention.http")

# /rest/<user id>/<secret>/ — also REST 3.0's /rest/api/<user id>/<secret>/, and the
# percent-encoded form a URL takes when it is itself a parameter.
_WEBHOOK_PATH = re.compile(r"((?:/|%2F)rest(?:/|%2F)(?:api(?:/|%2F))?\d+(?:/|%2F))"
                           r"(?:(?!%2F)[^/\s?#&\"'<>])+", re.IGNORECASE)
# auth=…, access_token: "…", auth[access_token]=…, client_secret%3D… in query strings,
# form bodies, JSON and log text. The lookbehind keeps "expired_token:" and "oauth=" intact.
_SECRET_PARAMS = re.compile(
    r"((?:(?<![A-Za-z0-9_])|(?<=%5B))(?:auth|access_token|refresh_token|client_secret|application_token)"
    r"(?:\]|%5D)?[\"']?\s*(?:=|:|%3D)\s*[\"']?)[^&\s\"',;}<>]+",
    re.IGNORECASE,
)
# The OAuth authorization code travels as ?code=… / &code=… (it lives 30 s, but still).
_OAUTH_CODE = re.compile(r"([?&]code=)[^&\s\"'<>]+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
MASK = "***"
_MIN_SECRET_LEN = 4  # shorter "secrets" would shred ordinary text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide webhook secrets, tokens and the given secret strings in ``text``.

    Covers the ``/rest/<uid>/<secret>/`` webhook path, ``auth=`` / ``access_token=`` /
    ``refresh_token=`` / ``client_secret=`` values (query, form, JSON), OAuth ``code=``,
    ``Bearer`` tokens, and every string in ``secrets`` wherever it appears.
    """
    for secret in sorted((s for s in secrets if s and len(s) >= _MIN_SECRET_LEN),
                         key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _WEBHOOK_PATH.sub(rf"\g<1>{MASK}", text)
    text = _SECRET_PARAMS.sub(rf"\g<1>{MASK}", text)
    text = _OAUTH_CODE.sub(rf"\g<1>{MASK}", text)
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

BATCH = "batch"
"""The method name under which a batch request itself is ledgered (see :class:`Pacer`)."""


@dataclass(frozen=True)
class PacerLimits:
    """The limits the pacer keeps under (defaults: Bitrix24 non-Enterprise cloud)."""

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

    @property
    def bucket_len_s(self) -> float:
        """Length of one accounting bucket of the operating window."""
        return self.operating_window_s / self.operating_buckets


@dataclass
class PacerStats:
    """How much the pacer made the client wait."""

    waits: int = 0
    waited_s: float = 0.0


@dataclass
class _Ledger:
    """Server seconds charged to one method, as (drop-out wall time, seconds) entries."""

    entries: deque[tuple[float, float]] = field(default_factory=deque)
    cost_per_call: float | None = None  # EMA of server seconds per sub-call
    blocked_until: float = 0.0

    def charged(self, now: float) -> float:
        while self.entries and self.entries[0][0] <= now:
            self.entries.popleft()
        return sum(cost for _, cost in self.entries)

    def learn_cost(self, per_call: float) -> None:
        # Rises are adopted faster than falls: underestimating is what risks a 429.
        if self.cost_per_call is None:
            self.cost_per_call = per_call
        else:
            alpha = 0.5 if per_call > self.cost_per_call else 0.2
            self.cost_per_call += alpha * (per_call - self.cost_per_call)


_EMPTY: Mapping[str, Any] = {}


class Pacer:
    """Client-side pacing for a leaky-bucket rate limit and per-method time budgets.

    * **Rate**: a model of the portal's leaky bucket (+1 per HTTP request, draining at
      ``drain_per_s``); a request waits until the level after it stays ≤ ``bucket_size − 1``.
    * **Time budget**: per method, a ledger of server seconds, each entry dropping out
      when the server's one-minute bucket that holds it leaves the window (bucket edges
      are learned from ``operating_reset_at``). Our own cost figures are calibrated
      against the server's ``operating`` total: the larger one is trusted. A call waits
      until ``operating + expected cost ≤ budget − margin`` (or only ``operating ≤
      budget − margin`` with ``allow_crossing``).
    * **Batches**: ``methods`` naming :data:`BATCH` marks a batch request; every nested
      method is charged its cost (current vendor docs) and a ``batch`` ledger follows
      the server's ``operating`` for the batch itself (the accounting measured by jssdk
      maintainers), so either server model is respected without charging twice when the
      server says which one it uses.

    Clocks and ``sleep`` are injected so tests never wait: ``clock`` is monotonic (the
    bucket), ``wall_clock`` is Unix time (ledgers, ``operating_reset_at``). Not
    thread-safe: one pacer paces one sequential client.
    """

    def __init__(
        self,
        limits: PacerLimits = PacerLimits(),  # frozen: one shared default is safe
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits = limits
        self.clock, self.wall_clock, self.sleep = clock, wall_clock, sleep
        self.stats = PacerStats()
        self._level = 0.0
        self._level_at = clock()
        self._ledgers: dict[str, _Ledger] = defaultdict(_Ledger)
        self._phase: float | None = None  # bucket edges mod bucket length, from the server

    # -- public surface -----------------------------------------------------------------
    def before_request(self, methods: Mapping[str, int]) -> float:
        """Sleep until one more request (with these sub-calls) fits every limit.

        ``methods`` maps each method to its number of sub-calls (a batch names every
        nested method, plus :data:`BATCH`). Returns the seconds waited.
        """
        waited = 0.0
        for _ in range(100):  # each pass only shortens the wait; the cap guards a bad clock
            wait = self._wait_needed(methods)
            if wait <= 0:
                break
            log.debug("pacing: waiting %.3f s", wait)
            self.sleep(wait)
            waited += wait
        if waited:
            self.stats.waits += 1
            self.stats.waited_s += waited
        self._drain()
        self._level += 1.0
        return waited

    def after_response(
        self,
        methods: Mapping[str, int],
        time_info: Mapping[str, Any] | None,
        elapsed_s: float,
        *,
        costs: Mapping[str, float] | None = None,
        operating: Mapping[str, float] | None = None,
    ) -> None:
        """Charge a finished request's server time to its methods.

        ``time_info`` is the response's ``time`` block; its ``processing`` (else
        ``duration``, else ``elapsed_s``) is the request's cost. A batch may pass
        per-method ``costs`` and ``operating`` totals read from ``result_time``.
        """
        info = time_info if isinstance(time_info, Mapping) else _EMPTY
        self._learn_phase(info)
        total = _request_cost(info, elapsed_s)
        nested = {m: n for m, n in methods.items() if m != BATCH}
        is_batch = BATCH in methods and bool(nested)
        shares = self._shares(nested or dict(methods), total, costs)
        reported = dict(operating or {})
        if is_batch:
            reported.pop(BATCH, None)
            self._charge_batch(sum(shares.values()) or total, sum(nested.values()), info)
        elif len(shares) == 1 and _number(info.get("operating")) is not None:
            # a single call: the outer ``operating`` is that method's own total
            reported.setdefault(next(iter(shares)), _number(info.get("operating")) or 0.0)
        for method, cost in shares.items():
            self._charge(method, cost, max(methods.get(method, 1), 1), reported.get(method))

    def blocked_until(self, method: str, reset_at: float) -> None:
        """After a 429: ``method`` must not be called before ``reset_at`` (Unix time)."""
        ledger = self._ledgers[method]
        ledger.blocked_until = max(ledger.blocked_until, reset_at)

    def operating(self, method: str) -> float:
        """Server seconds this pacer believes ``method`` has spent in the current window."""
        return self._ledgers[method].charged(self.wall_clock())

    def expected_cost(self, method: str, calls: int = 1) -> float:
        """Server seconds ``calls`` sub-calls of ``method`` are expected to cost (0 if unknown)."""
        ledger = self._ledgers.get(method)
        per_call = ledger.cost_per_call if ledger is not None else None
        return (per_call or 0.0) * max(calls, 1)

    def next_bucket_reset(self, after: float) -> float:
        """The first bucket edge (Unix time) after ``after``: when some budget frees up.

        Before the server has told us its bucket edges, one bucket length later is the
        latest that edge can be.
        """
        length = self.limits.bucket_len_s
        if self._phase is None:
            return after + length
        return math.floor((after - self._phase) / length + 1) * length + self._phase

    # -- leaky bucket -------------------------------------------------------------------
    def _drain(self) -> None:
        now = self.clock()
        self._level = max(0.0, self._level - (now - self._level_at) * self.limits.drain_per_s)
        self._level_at = now

    def _bucket_wait(self) -> float:
        self._drain()
        excess = self._level + 1.0 - (self.limits.bucket_size - 1)
        return excess / self.limits.drain_per_s if excess > 0 else 0.0

    # -- time budget --------------------------------------------------------------------
    def _wait_needed(self, methods: Mapping[str, int]) -> float:
        nested = sum(n for m, n in methods.items() if m != BATCH)
        waits = [self._bucket_wait()]
        for method, calls in methods.items():
            if method == BATCH and nested:
                waits.append(self._budget_wait(BATCH, self._expected_batch(methods)))
            else:
                waits.append(self._budget_wait(method, self.expected_cost(method, calls)))
        return max(waits)

    def _expected_batch(self, methods: Mapping[str, int]) -> float:
        return sum(self.expected_cost(m, n) for m, n in methods.items() if m != BATCH)

    def _budget_wait(self, method: str, expected: float) -> float:
        if method not in self._ledgers:
            return 0.0
        ledger = self._ledgers[method]
        now = self.wall_clock()
        ceiling = self.limits.operating_budget_s - self.limits.safety_margin_s
        # A call costlier than the whole budget can only ever run into an empty window.
        allowed = ceiling if self.limits.allow_crossing else ceiling - min(expected, ceiling)
        charged = ledger.charged(now)
        free_at = now
        for drop_at, cost in ledger.entries:  # entries leave in order: wait for enough of them
            if charged <= allowed + 1e-9:
                break
            charged, free_at = charged - cost, drop_at
        return max(free_at, ledger.blocked_until) - now

    def _shares(
        self, methods: Mapping[str, int], total: float, costs: Mapping[str, float] | None
    ) -> dict[str, float]:
        if costs and all(m in costs for m in methods):
            return {m: max(float(costs[m]), 0.0) for m in methods}
        calls = max(sum(methods.values()), 1)
        return {m: total * max(n, 0) / calls for m, n in methods.items()}

    def _charge(self, method: str, cost: float, calls: int, reported: float | None) -> None:
        ledger = self._ledgers[method]
        now = self.wall_clock()
        ledger.entries.append((self._drop_time(now), cost))
        ledger.learn_cost(cost / calls)
        if reported is not None:
            self._calibrate(ledger, reported, now)

    def _charge_batch(self, cost: float, calls: int, info: Mapping[str, Any]) -> None:
        # The batch ledger follows the server's own figure when it reports one (zero
        # under nested accounting, the batch's total under per-batch accounting); only
        # when the server is silent do we charge our estimate, to stay safe under both.
        ledger = self._ledgers[BATCH]
        now = self.wall_clock()
        reported = _number(info.get("operating"))
        if reported is None:
            ledger.entries.append((self._drop_time(now), cost))
        else:
            self._calibrate(ledger, reported, now)
        ledger.learn_cost(cost / max(calls, 1))

    def _calibrate(self, ledger: _Ledger, reported: float, now: float) -> None:
        # The server's total is authoritative when larger than ours (another process on
        # the same webhook, or costs we did not see); when smaller, ours stays: the larger
        # figure is the safe one.
        gap = reported - ledger.charged(now)
        if gap > 1e-9:
            ledger.entries.append((self._drop_time(now), gap))

    def _learn_phase(self, info: Mapping[str, Any]) -> None:
        reset_at = _number(info.get("operating_reset_at"))
        if reset_at:
            self._phase = reset_at % self.limits.bucket_len_s

    def _drop_time(self, now: float) -> float:
        # The server charges whole buckets: a cost charged at ``now`` leaves the window
        # with its bucket. Without a known phase, ``now + window`` is the safe bound.
        if self._phase is None:
            return now + self.limits.operating_window_s
        bucket_end = self.next_bucket_reset(now)
        return bucket_end - self.limits.bucket_len_s + self.limits.operating_window_s


def _request_cost(info: Mapping[str, Any], elapsed_s: float) -> float:
    for key in ("processing", "duration"):
        value = _number(info.get(key))
        if value is not None and value > 0:
            return value
    return max(elapsed_s, 0.0)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -- retries --------------------------------------------------------------------------------

RetryHook = Callable[[tenacity.RetryCallState], None]


class _StopPastDeadline(tenacity.stop.stop_base):
    """Stop when the next sleep would end past the deadline.

    tenacity's own ``stop_before_delay`` reads the real monotonic clock only; counting
    ``idle_for`` too makes injected (fake) sleeps count, so tests see the deadline.
    """

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        spent = max(state.idle_for, state.seconds_since_start or 0.0)
        return spent + (state.upcoming_sleep or 0.0) > self.deadline_s


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy: only ``RetryableCrmError``, capped backoff, an overall deadline.

    A wait the CRM asked for (``retry_after``, e.g. until ``operating_reset_at`` after a
    429) is honoured even beyond ``max_delay_s`` — only the deadline caps it; otherwise
    the wait is exponential from ``base_delay_s`` with jitter, capped at ``max_delay_s``.
    Retrying stops after ``max_attempts`` or when the next sleep would pass ``deadline_s``.
    """

    max_attempts: int = 8
    max_delay_s: float = 120.0
    base_delay_s: float = 0.5
    deadline_s: float = 900.0

    def retrying(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        before_sleep: RetryHook | None = None,
    ) -> tenacity.Retrying:
        """A tenacity ``Retrying`` that re-raises the last error when it gives up.

        Before each sleep one redacted WARNING line is logged, then ``before_sleep``
        (if given) is called with the retry state.
        """
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableCrmError),
            stop=tenacity.stop_after_attempt(self.max_attempts) | _StopPastDeadline(
                self.deadline_s),
            wait=self.wait_for,
            sleep=sleep,
            reraise=True,
            before_sleep=partial(self._before_sleep, hook=before_sleep),
        )

    def wait_for(self, state: tenacity.RetryCallState) -> float:
        """What the CRM asked for, else exponential backoff with jitter."""
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after", None)
        if isinstance(asked, int | float) and not isinstance(asked, bool) and asked >= 0:
            return float(min(asked, self.deadline_s))
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (state.attempt_number - 1))
        # "Equal jitter": never less than half the step, so backoff still grows.
        return random.uniform(ceiling / 2, ceiling)

    def _before_sleep(self, state: tenacity.RetryCallState, hook: RetryHook | None) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("retry %d/%d in %.2f s: %s", state.attempt_number, self.max_attempts,
                    delay, redact(str(exc)))
        if hook is not None:
            hook(state)
