"""The Bitrix24 REST client: inbound-webhook auth, pacing, retries, keyset listing.

One HTTP request at a time (the portal's leaky bucket is per portal *and* source IP, so
parallel streams only trade 503s between themselves). Each request passes the
:class:`~connector.http.Pacer` first and goes through the one retry policy. Errors are
translated by :mod:`adapters.bitrix24.errors`; the webhook secret never leaves this
object except inside the request URL.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from adapters.bitrix24.errors import map_transport_errors, translate_error
from adapters.bitrix24.pagination import (
    MAX_BATCH,
    KeysetStep,
    as_php_map,
    encode_php_query,
    keyset_params,
    plan_keyset_batch,
    read_keyset_batch,
)
from connector.errors import CrmError, FatalCrmError, RetryableCrmError
from connector.http import Pacer, RetryPolicy

__all__ = ["ApiResponse", "BatchResponse", "Bitrix24Client", "ClientStats", "Page"]

CRM = "bitrix24"


@dataclass(frozen=True)
class ApiResponse:
    """A successful single call."""

    result: Any
    total: int | None
    next: int | None
    time: Mapping[str, Any]


@dataclass(frozen=True)
class BatchResponse:
    """A batch call: per-command results and errors (PHP's ``[]`` maps normalised)."""

    result: Mapping[str, Any]
    errors: Mapping[str, Mapping[str, Any]]
    total: Mapping[str, Any]
    next: Mapping[str, Any]
    time: Mapping[str, Any]


@dataclass(frozen=True)
class Page:
    """Rows carried by one HTTP response, and that response's server clock."""

    rows: list[dict[str, Any]]
    server_time: str | None


@dataclass
class ClientStats:
    """Counters a sync run reports."""

    requests: int = 0
    retries: int = 0
    http_503: int = 0
    http_429: int = 0
    http_5xx: int = 0
    network_errors: int = 0
    by_method: Counter[str] = field(default_factory=Counter)

    @property
    def limit_hits(self) -> int:
        """503 and 429 answers (including limit errors inside a batch)."""
        return self.http_503 + self.http_429


class Bitrix24Client:
    """A Bitrix24 portal reached through an inbound webhook ``https://PORTAL/rest/USER/SECRET/``."""

    def __init__(
        self,
        webhook_url: str | SecretStr,
        *,
        http: httpx.Client,
        pacer: Pacer | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        url = webhook_url.get_secret_value() if isinstance(webhook_url, SecretStr) else webhook_url
        self._base = url if url.endswith("/") else url + "/"
        parts = urlsplit(self._base)
        self._secrets = tuple(p for p in parts.path.split("/")[3:4] if p)
        self.portal = parts.hostname or "?"
        self.http = http
        self.pacer = pacer or Pacer(sleep=sleep, wall_clock=wall_clock)
        self.retry = retry or RetryPolicy()
        self.sleep, self.wall_clock = sleep, wall_clock
        self.stats = ClientStats()
        self._reset_at: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"Bitrix24Client(portal={self.portal!r})"

    def close(self) -> None:
        """Close the HTTP client (its connections)."""
        self.http.close()

    def __enter__(self) -> Bitrix24Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------
    def call(self, method: str, params: Mapping[str, Any] | None = None) -> ApiResponse:
        """Call one REST method (paced, retried); raises a translated CrmError."""
        data = self._retrying(lambda: self._send(method, dict(params or {}), {method: 1}))
        return ApiResponse(data.get("result"), _int_or_none(data.get("total")),
                           _int_or_none(data.get("next")), _mapping(data.get("time")))

    def batch(
        self,
        commands: Mapping[str, tuple[str, Mapping[str, Any]]] | Mapping[str, str],
        *,
        halt: bool = False,
    ) -> BatchResponse:
        """Run up to 50 commands in one request; failed commands come back in ``errors``."""
        if not 1 <= len(commands) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} commands, not {len(commands)}")
        cmd = {key: c if isinstance(c, str) else f"{c[0]}?{encode_php_query(c[1])}"
               for key, c in commands.items()}
        methods = Counter(_method_of(c) for c in cmd.values())
        body = {"halt": 1 if halt else 0, "cmd": cmd}
        data = self._retrying(lambda: self._send("batch", body, methods))
        inner = _mapping(data.get("result"))
        return BatchResponse(
            result=as_php_map(inner.get("result")),
            errors={k: _mapping(v) for k, v in as_php_map(inner.get("result_error")).items()},
            total=as_php_map(inner.get("result_total")),
            next=as_php_map(inner.get("result_next")),
            time=_mapping(data.get("time")),
        )

    def count(self, method: str, filter: Mapping[str, Any] | None = None) -> int:
        """How many records match (one counted page: costs a COUNT on the server)."""
        response = self.call(method, {"filter": dict(filter or {}), "select": ["ID"],
                                      "start": 0})
        return response.total or 0

    # -- keyset listing -----------------------------------------------------------------
    def list_keyset(
        self,
        method: str,
        *,
        select: Sequence[str],
        filter: Mapping[str, Any] | None = None,
        after_id: int = 0,
    ) -> Iterator[Page]:
        """Every matching record with ID > ``after_id``, ID ascending, one Page per request.

        The first page is a single call (its ``time.date_start`` is the run's server
        clock); the rest come 50 chained pages per batch. A short page ends the walk.
        """
        base_filter = dict(filter or {})
        first = self.call(method, keyset_params(select, base_filter, after_id))
        step = read_keyset_batch({"p0": first.result}, {}, ["p0"], after_id)
        yield Page(step.rows, _date_start(first.time))
        last_id, done = step.last_id, step.done
        while not done:
            step, server_time = self._retrying(
                partial(self._keyset_batch, method, select, base_filter, last_id))
            yield Page(step.rows, server_time)
            last_id, done = step.last_id, step.done

    def _keyset_batch(
        self, method: str, select: Sequence[str], filter: Mapping[str, Any], after_id: int
    ) -> tuple[KeysetStep, str | None]:
        commands = plan_keyset_batch(method, select=select, filter=filter, after_id=after_id)
        response = self.batch(commands)
        step = read_keyset_batch(response.result, response.errors, list(commands), after_id)
        if step.error is not None:
            error = self._command_error(method, step.error)
            if not step.rows or not isinstance(error, RetryableCrmError):
                raise error  # retried by the policy when retryable; rows kept otherwise
        return step, _date_start(response.time)

    def _command_error(self, method: str, payload: Mapping[str, Any]) -> CrmError:
        error = translate_error(status=200, body=payload, method=method,
                                retry_after=self._blocked_wait(method, payload))
        self._count_limit(error.code)
        return error

    # -- transport ----------------------------------------------------------------------
    def _retrying(self, attempt: Callable[[], Any]) -> Any:
        return self.retry.retrying(sleep=self.sleep, on_retry=self._on_retry)(attempt)

    def _on_retry(self, error: RetryableCrmError, delay: float) -> None:
        self.stats.retries += 1

    def _send(self, method: str, body: Mapping[str, Any], methods: Mapping[str, int]) -> Any:
        self.pacer.before_request(methods)
        started = time.monotonic()
        with map_transport_errors(method):
            try:
                response = self.http.post(self._base + method, json=body)
            except httpx.TransportError:
                self.stats.network_errors += 1
                raise
        self.stats.requests += 1
        self.stats.by_method[method] += 1
        data = self._decode(method, response, methods)
        timing = _mapping(data.get("time"))
        self.pacer.after_response(methods, timing, time.monotonic() - started)
        self._remember_reset(methods, timing)
        return data

    def _decode(self, method: str, response: httpx.Response, methods: Mapping[str, int]) -> Any:
        if 300 <= response.status_code < 400:
            raise FatalCrmError(
                f"{method}: HTTP {response.status_code} redirect — the portal may have been "
                "renamed; update webhook_url", crm=CRM, method=method,
                status=response.status_code)
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if response.status_code >= 400 or not isinstance(data, dict) or "error" in data:
            raise self._http_error(method, response, methods)
        return data

    def _http_error(
        self, method: str, response: httpx.Response, methods: Mapping[str, int]
    ) -> CrmError:
        status = response.status_code
        if status >= 500 and status != 503:
            self.stats.http_5xx += 1
        wait = None
        if status == 429:
            wait = max(self._blocked_wait(m, {}) or 0.0 for m in methods) or None
        error = translate_error(status=status, body=response.content, method=method,
                                retry_after=wait)
        fallback = {429: "OPERATION_TIME_LIMIT", 503: "QUERY_LIMIT_EXCEEDED"}
        self._count_limit(error.code or fallback.get(status, ""))
        return error

    def _count_limit(self, code: str) -> None:
        if code == "QUERY_LIMIT_EXCEEDED":
            self.stats.http_503 += 1
        elif code == "OPERATION_TIME_LIMIT":
            self.stats.http_429 += 1

    def _blocked_wait(self, method: str, payload: Mapping[str, Any]) -> float | None:
        # A blocked method may be retried at operating_reset_at of its last good answer;
        # without one, wait a bucket (one tenth of the window).
        if payload and payload.get("error") != "OPERATION_TIME_LIMIT":
            return None
        limits = self.pacer.limits
        reset_at = self._reset_at.get(method)
        now = self.wall_clock()
        if reset_at is None or reset_at <= now:
            reset_at = now + limits.operating_window_s / limits.operating_buckets
        self.pacer.blocked_until(method, reset_at)
        return reset_at - now

    def _remember_reset(self, methods: Mapping[str, int], timing: Mapping[str, Any]) -> None:
        reset_at = timing.get("operating_reset_at")
        if isinstance(reset_at, int | float) and not isinstance(reset_at, bool):
            for method in methods:
                self._reset_at[method] = float(reset_at)


def _method_of(command: str) -> str:
    return command.split("?", 1)[0].strip().lower()


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _date_start(timing: Mapping[str, Any]) -> str | None:
    value = timing.get("date_start")
    return str(value) if value else None

