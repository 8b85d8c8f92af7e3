"""The emulated Bitrix24 REST endpoint: routing, auth, envelopes, limits, faults.

:meth:`BitrixEmulator.dispatch` turns one HTTP request into one :class:`Reply`; the
in-process :meth:`~BitrixEmulator.transport` and the loopback server both use it.
Every duration comes from the cost model in ``limits.py``; the emulator *sleeps* it
(scaled), so a client sees the latency it would see on a real portal. ``batch`` lives
in ``batch.py``, request bodies and the httpx transport in ``wire.py``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from adapters.bitrix24.emulator.batch import run_batch
from adapters.bitrix24.emulator.faults import FaultConfig, FaultInjector
from adapters.bitrix24.emulator.limits import EmulatorLimits, LeakyBucket, OperatingBudget
from adapters.bitrix24.emulator.methods import (
    APP_ONLY,
    HANDLERS,
    ApiError,
    Context,
    Outcome,
    ServerTimeout,
    method_name,
    required_scope,
    top_level,
)
from adapters.bitrix24.emulator.php import php_value
from adapters.bitrix24.emulator.query import BadRequest
from adapters.bitrix24.emulator.store import Portal
from adapters.bitrix24.emulator.strictness import Strictness
from adapters.bitrix24.emulator.wire import Transport, is_loopback, parse_body

__all__ = ["BitrixEmulator", "EmulatorStats", "Reply"]

HTML_ERROR = ("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad "
              "Gateway</h1></center><hr><center>nginx</center></body></html>")
# What the cloud's proxy answers when a request runs past the hard timeout.
HTML_TIMEOUT = ("<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 "
                "Gateway Time-out</h1></center><hr><center>nginx</center></body></html>")
_HTML = "text/html; charset=utf-8"


@dataclass
class Reply:
    """One HTTP answer; ``fault`` names a transport-level fault to act out instead."""

    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    fault: str | None = None


@dataclass
class EmulatorStats:
    """What the emulator saw (benchmarks and tests read it)."""

    requests: int = 0
    http_503: int = 0
    http_429: int = 0
    batch_429: int = 0  # OPERATION_TIME_LIMIT answered to a command inside a batch
    faults_injected: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    server_time_by_method: dict[str, float] = field(default_factory=dict)


class BitrixEmulator:
    """A strict Bitrix24 portal endpoint over a :class:`Portal`."""

    def __init__(
        self,
        portal: Portal,
        *,
        limits: EmulatorLimits | None = None,
        faults: FaultConfig | None = None,
        strictness: Strictness | None = None,
        user_id: int = 1,
        secret: str | None = None,
        scopes: tuple[str, ...] = ("crm", "task", "bizproc", "user"),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.portal = portal
        self.limits = limits or EmulatorLimits()
        self.real = self.limits.scaled()
        self.faults = FaultInjector(faults or FaultConfig())
        self.strict = strictness or Strictness()
        self.user_id, self.secret = user_id, secret or secrets.token_hex(8)
        self.scopes, self.clock, self.sleep = scopes, clock, sleep
        self.stats = EmulatorStats()
        self.tokens: dict[str, float] = {}
        self.bucket = LeakyBucket(self.real.bucket_size, self.real.drain_per_s)
        self.budget = OperatingBudget(self.real.operating_budget_s, self.real.operating_window_s,
                                      self.real.operating_buckets)
        self._lock = threading.Lock()

    def webhook_url(self, base: str) -> str:
        """The inbound-webhook URL of this portal under ``base`` (scheme and host)."""
        return f"{base.rstrip('/')}/rest/{self.user_id}/{self.secret}/"

    def add_token(self, token: str, expires_at: float) -> None:
        """Accept an OAuth access token until ``expires_at`` (Unix time)."""
        self.tokens[token] = expires_at

    def transport(self, require_https: bool = True) -> httpx.BaseTransport:
        """An in-process httpx transport answering like the portal."""
        return Transport(self, require_https)

    # -- dispatch -------------------------------------------------------------------------
    def dispatch(self, scheme: str, path: str, query: str, content_type: str, body: bytes,
                 *, require_https: bool = True, host: str = "") -> Reply:
        """Answer one HTTP request.

        ``require_https`` refuses plain ``http`` the way the cloud does, except for a
        loopback ``host`` (the only place a client may use it, and where the loopback
        server cannot offer TLS).
        """
        with self._lock:
            self.stats.requests += 1
            fault = self.faults.draw()
        if fault is not None:
            return self._fault(fault)
        try:
            if require_https and scheme != "https" and not is_loopback(host):
                raise ApiError(400, "INVALID_REQUEST", "Https required.")
            reply = self._serve(path, query, content_type, body)
        except ApiError as exc:
            reply = _error(exc.status, exc.code, exc.description)
        except BadRequest as exc:
            reply = _error(400, "", str(exc))
        except ServerTimeout:
            reply = Reply(504, HTML_TIMEOUT.encode(), _HTML)
        except Exception:  # a handler bug must not kill the server thread or the client
            reply = _error(500, "INTERNAL_SERVER_ERROR", "Internal server error")
        self._count(reply.status)
        return reply

    def _serve(self, path: str, query: str, content_type: str, body: bytes) -> Reply:
        # The bucket counts every request that reaches the portal (§5.1: per portal and
        # source IP), so a client retrying a bad credential drains it like any other.
        with self._lock:
            admitted = not self.real.enabled or self.bucket.admit(self.clock())
        if not admitted:
            raise ApiError(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        params = parse_body(query, content_type, body)
        method, credential = self._route(path, params)
        if method == "batch":
            return Reply(200, run_batch(self, credential, params))
        return self._single(credential, method, params)

    def _route(self, path: str, params: Mapping[str, Any]) -> tuple[str, str]:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "rest":
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        if len(parts) == 4 and parts[1].isdigit():
            if int(parts[1]) != self.user_id or parts[2] != self.secret:
                raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
            return method_name(parts[3]), f"webhook:{parts[1]}"
        if len(parts) == 2:
            return method_name(parts[1]), self._token_credential(params)
        raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")

    def _token_credential(self, params: Mapping[str, Any]) -> str:
        token = str(params.get("auth") or "")
        expires = self.tokens.get(token)
        if expires is None:
            raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
        if expires <= self.clock():
            raise ApiError(401, "expired_token", "The access token provided has expired.")
        return f"token:{token}"

    # -- single calls ---------------------------------------------------------------------
    def _single(self, credential: str, method: str, params: Mapping[str, Any]) -> Reply:
        started = self.clock()
        self.check_allowed(credential, method)
        outcome = self.run(method, params)
        timed_out = self.spend(outcome.cost, started)
        timing = self.charge(credential, method, outcome.cost, started)
        if timed_out:
            raise ServerTimeout()
        envelope: dict[str, Any] = {"result": php_value(outcome.result)}
        if outcome.total is not None:
            envelope["total"] = outcome.total
        if outcome.next is not None:
            envelope["next"] = outcome.next
        envelope["time"] = timing
        return Reply(200, _json(envelope))

    def check_allowed(self, credential: str, method: str, *, budget: bool = True) -> None:
        """Refuse an unknown, app-only, out-of-scope or (with ``budget``) blocked method."""
        if method not in HANDLERS and method not in APP_ONLY and method != "batch":
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        if method in APP_ONLY and credential.startswith("webhook:"):
            raise ApiError(400, "ACCESS_DENIED", "Access denied! Application context required")
        scope = required_scope(method)
        if scope is not None and scope not in self.scopes:
            raise ApiError(403, "insufficient_scope",
                           "The request requires higher privileges than provided by the "
                           "webhook token")
        if budget and self.real.enabled:
            # Checked before the call; the call that crosses the budget still completes.
            with self._lock:
                blocked = self.budget.blocked(self._budget_key(credential, method),
                                              self.clock())
            if blocked:
                raise ApiError(429, "OPERATION_TIME_LIMIT",
                               "Method is blocked due to operation time limit.")

    def run(self, method: str, params: Mapping[str, Any]) -> Outcome:
        """Run a method's handler on the parameters as that method reads them."""
        handler = HANDLERS.get(method)
        if handler is None:  # app-only methods that passed the auth check
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        ctx = Context(self.portal, self.real, self.strict, self.user_id, self.scopes)
        return handler(ctx, top_level(method, params, self.strict))

    def spend(self, cost: float, started: float) -> bool:
        """Act out ``cost`` server seconds plus latency; True if the cloud cut it off.

        A cut-off request sleeps the hard timeout and answers nothing useful, but its
        server time was spent all the same (the caller still charges it).
        """
        latency = self.real.latency_s + self.faults.jitter() * self.limits.time_scale
        server = cost if self.real.enabled else 0.0
        if self.real.enabled and server + latency > self.real.request_timeout_s:
            self.sleep(self.real.request_timeout_s)
            return True
        remaining = server + latency - (self.clock() - started)
        if remaining > 0:
            self.sleep(remaining)
        return False

    def charge(self, credential: str, method: str, cost: float, started: float
               ) -> dict[str, Any]:
        """Book a finished call's server time; its ``time`` block."""
        now = self.clock()
        key = self._budget_key(credential, method)
        with self._lock:
            self.stats.by_method[method] += 1
            spent = self.stats.server_time_by_method
            spent[method] = spent.get(method, 0.0) + cost
            if self.real.enabled:
                self.budget.charge(key, now, cost)
            operating = self.budget.operating(key, now)
            reset_at = self.budget.reset_at(key, now)
        return self.time_block(started, now, cost, operating, reset_at)

    def _budget_key(self, credential: str, method: str) -> str:
        if self.limits.operating_scope == "portal":
            return method
        return f"{credential}:{method}"

    def time_block(self, started: float, finished: float, cost: float, operating: float,
                   reset_at: int) -> dict[str, Any]:
        """The ``time`` object of an answer (facts sheet §2.2)."""
        return {
            "start": round(started, 6), "finish": round(finished, 6),
            "duration": round(finished - started, 6), "processing": round(cost, 6),
            "date_start": self.portal.stamp(datetime.fromtimestamp(started, self.portal.tz)),
            "date_finish": self.portal.stamp(datetime.fromtimestamp(finished, self.portal.tz)),
            "operating_reset_at": reset_at, "operating": round(operating, 6),
        }

    def note_batch_429(self) -> None:
        """Count an OPERATION_TIME_LIMIT answered to a command inside a batch."""
        with self._lock:
            self.stats.batch_429 += 1

    # -- faults and bookkeeping -------------------------------------------------------------
    def _fault(self, kind: str) -> Reply:
        with self._lock:
            self.stats.faults_injected += 1
        if kind == "503":
            reply = _error(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        elif kind == "429":
            reply = _error(429, "OPERATION_TIME_LIMIT",
                           "Method is blocked due to operation time limit.")
        elif kind == "500":
            reply = _error(500, "INTERNAL_SERVER_ERROR", "Internal server error")
        elif kind == "html":
            reply = Reply(502, HTML_ERROR.encode(), _HTML)
        else:
            return Reply(0, b"", fault=kind)
        self._count(reply.status)
        return reply

    def _count(self, status: int) -> None:
        with self._lock:
            self.stats.by_status[status] += 1
            self.stats.http_503 += int(status == 503)
            self.stats.http_429 += int(status == 429)


def _error(status: int, code: str, description: str) -> Reply:
    return Reply(status, _json({"error": code, "error_description": description}))


def _json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
