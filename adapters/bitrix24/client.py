"""The Bitrix24 REST client: inbound-webhook auth, pacing, retries, keyset listing.

One HTTP request at a time (the portal's leaky bucket is per portal *and* source IP, so
parallel streams only trade 503s between themselves). Each request passes the
:class:`~connector.http.Pacer` first and goes through the one retry policy. Errors are
translated by :mod:`adapters.bitrix24.errors`; the webhook secret never leaves this
object except inside the request URL, and every message is redacted with it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import tenacity
from pydantic import SecretStr

from adapters.bitrix24.errors import map_transport_errors, parse_error_body, translate_error
from adapters.bitrix24.pagination import (
    MAX_BATCH,
    PAGE_SIZE,
    KeysetStep,
    PagingError,
    as_php_map,
    encode_php_query,
    keyset_params,
    plan_id_batch,
    plan_keyset_batch,
    read_id_batch,
    read_keyset_batch,
    read_keyset_page,
)
from connector.errors import CrmError, FatalCrmError
from connector.http import BATCH, Pacer, RetryPolicy, redact

__all__ = ["ApiResponse", "BatchResponse", "Bitrix24Client", "ClientStats", "Page"]

CRM = "bitrix24"
T = TypeVar("T")

# A batch should finish well inside the cloud's 60 s hard timeout; as a share of the
# budget (480 s → 48 s) it scales with time-scaled limits in benchmarks and the demo.
_BATCH_COST_SHARE = 0.1
_LIMIT_CODES = {503: "QUERY_LIMIT_EXCEEDED", 429: "OPERATION_TIME_LIMIT"}
# An @ID command lists its 50 IDs in the query (~2 kB); ten keep a batch body small (the
# vendor's docs disagree whether the batch limit is on commands or parameter length).
_ID_PAGES_PER_BATCH = 10


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
    total: Mapping[str, int]
    next: Mapping[str, int]
    time: Mapping[str, Any]
    command_time: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    """Rows carried by one HTTP response, and that response's server clock."""

    rows: list[dict[str, Any]]
    server_time: str | None


@dataclass
class ClientStats:
    """Counters a sync run reports (limit errors inside a batch count too)."""

    requests: int = 0
    retries: int = 0
    http_503: int = 0
    http_429: int = 0
    http_5xx: int = 0
    network_errors: int = 0
    waited_s: float = 0.0
    by_method: Counter[str] = field(default_factory=Counter)

    @property
    def limit_hits(self) -> int:
        """503 and 429 answers."""
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
        # /rest/<user>/<secret>/ (or /rest/api/<user>/<secret>/): hide the segment after
        # the user id, whatever the form.
        segments = [p for p in parts.path.split("/") if p]
        self._secrets = tuple(s for s in segments[2:] if s != "api")
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

    def redact(self, text: str) -> str:
        """``text`` with this client's webhook secret and any credentials hidden."""
        return redact(text, self._secrets)

    # -- calls ------------------------------------------------------------------------------
    def call(self, method: str, params: Mapping[str, Any] | None = None) -> ApiResponse:
        """Call one REST method (paced, retried); raises a translated ``CrmError``."""
        data = self._retrying(partial(self._send, method, dict(params or {}), {method: 1}))
        return ApiResponse(data.get("result"), _int_or_none(data.get("total")),
                           _int_or_none(data.get("next")), _mapping(data.get("time")))

    def batch(
        self,
        commands: Mapping[str, tuple[str, Mapping[str, Any]]] | Mapping[str, str],
        *,
        halt: bool = False,
    ) -> BatchResponse:
        """Run up to 50 commands in one request; failed commands come back in ``errors``.

        A command is ``"method?php-query"`` or ``(method, params)``. Use non-numeric
        keys: PHP turns maps keyed 0..n-1 into lists (normalised back here, by index).
        """
        if not 1 <= len(commands) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} commands, not {len(commands)}")
        cmd = {str(key): c if isinstance(c, str) else f"{c[0]}?{encode_php_query(c[1])}"
               for key, c in commands.items()}
        return self._retrying(partial(self._batch_once, cmd, halt))

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
        clock); the rest come up to 50 chained pages per batch. A short page ends the
        walk. Streaming: nothing is fetched before the caller asks for the next page.
        """
        if not {"ID", "*"} & {str(s).upper() for s in select}:
            raise ValueError("keyset paging needs ID in select")
        base_filter = dict(filter or {})
        first = self.call(method, keyset_params(select, base_filter, after_id))
        step = self._checked(method, partial(read_keyset_page, first.result, after_id))
        yield Page(step.rows, _date_start(first.time))
        while not step.done:
            step, server_time = self._retrying(
                partial(self._keyset_batch, method, select, base_filter, step.last_id))
            yield Page(step.rows, server_time)

    def _keyset_batch(
        self, method: str, select: Sequence[str], filter: Mapping[str, Any], after_id: int
    ) -> tuple[KeysetStep, str | None]:
        # One attempt: the caller's retry loop re-plans from the same after_id.
        commands = plan_keyset_batch(method, select=select, filter=filter, after_id=after_id,
                                     pages=self._pages_per_batch(method))
        response = self._batch_once(commands, halt=False)
        raw = {"result": response.result, "result_error": response.errors}
        step = self._checked(method, partial(read_keyset_batch, raw, list(commands), after_id))
        if step.error is not None and not step.rows:
            # No progress: raise (a retryable error is retried from the same ID). With
            # progress the rows are kept and the next batch starts after them.
            raise self._command_error(method, step.error)
        return step, _date_start(response.time)

    def list_by_ids(
        self, method: str, *, select: Sequence[str], ids: Sequence[int]
    ) -> Iterator[Page]:
        """The records with these IDs (gone ones are simply absent), one Page per request.

        Each request is a batch of ``@ID`` pages of 50 IDs; a failed command fails (and
        retries) its whole batch, so no row is silently left out.
        """
        wanted = sorted({int(i) for i in ids})
        chunks = [wanted[i:i + PAGE_SIZE] for i in range(0, len(wanted), PAGE_SIZE)]
        per_batch = min(_ID_PAGES_PER_BATCH, self._pages_per_batch(method))
        for start in range(0, len(chunks), per_batch):
            group = chunks[start:start + per_batch]
            rows, server_time = self._retrying(partial(self._id_batch, method, select, group))
            yield Page(rows, server_time)

    def _id_batch(
        self, method: str, select: Sequence[str], chunks: Sequence[Sequence[int]]
    ) -> tuple[list[dict[str, Any]], str | None]:
        commands = plan_id_batch(method, select=select, id_chunks=chunks)
        response = self._batch_once(commands, halt=False)
        raw = {"result": response.result, "result_error": response.errors}
        try:
            rows, error = read_id_batch(raw, list(commands))
        except PagingError as exc:
            raise PagingError(f"{method}: {exc}", method=method) from None
        if error is not None:
            raise self._command_error(method, error)
        return rows, _date_start(response.time)

    def _pages_per_batch(self, method: str) -> int:
        per_page = self.pacer.expected_cost(method)
        if per_page <= 0:
            return MAX_BATCH
        ceiling = self.pacer.limits.operating_budget_s * _BATCH_COST_SHARE
        return max(1, min(MAX_BATCH, int(ceiling / per_page)))

    def _checked(self, method: str, read: Callable[[], KeysetStep]) -> KeysetStep:
        try:
            return read()
        except PagingError as exc:
            raise PagingError(f"{method}: {exc}", method=method) from None

    # -- batch ------------------------------------------------------------------------------
    def _batch_once(self, cmd: Mapping[str, str], halt: bool) -> BatchResponse:
        methods: Counter[str] = Counter(_method_of(c) for c in cmd.values())
        methods[BATCH] = 1
        body = {"halt": 1 if halt else 0, "cmd": dict(cmd)}
        data = self._send(BATCH, body, methods, commands=cmd)
        response = _batch_response(data)
        # One limit hit per method and code per response: once a method is blocked,
        # every later command of it fails too, and that is still one refusal.
        seen = {(_method_of(cmd.get(key, "")), str(payload.get("error") or ""))
                for key, payload in response.errors.items()}
        for method, code in sorted(seen):
            self._note_command_error(method, {"error": code})
        return response

    def _note_command_error(self, method: str, payload: Mapping[str, Any]) -> None:
        code = str(payload.get("error") or "")
        if code == "QUERY_LIMIT_EXCEEDED":
            self.stats.http_503 += 1
        elif code == "OPERATION_TIME_LIMIT":
            self.stats.http_429 += 1
            self._block(method)

    def _command_error(self, method: str, payload: Mapping[str, Any]) -> CrmError:
        wait = None
        if payload.get("error") == "OPERATION_TIME_LIMIT":
            wait = self._block(method)
        return translate_error(status=200, body=payload, method=method, retry_after=wait,
                               secrets=self._secrets)

    # -- transport ----------------------------------------------------------------------
    def _retrying(self, attempt: Callable[[], T]) -> T:
        retrying = self.retry.retrying(sleep=self.sleep, before_sleep=self._on_retry)
        return retrying(attempt)

    def _on_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.retries += 1
        self.stats.waited_s += state.upcoming_sleep or 0.0

    def _send(
        self,
        method: str,
        body: Mapping[str, Any],
        methods: Mapping[str, int],
        *,
        commands: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self.stats.waited_s += self.pacer.before_request(methods)
        self.stats.requests += 1
        self.stats.by_method[method] += 1
        started = self.pacer.clock()
        with map_transport_errors(method, self._secrets):
            try:
                response = self.http.post(self._base + method, json=body)
            except httpx.TransportError:
                self.stats.network_errors += 1
                raise
        data = self._decode(method, response)
        self._account(method, data, methods, self.pacer.clock() - started, commands)
        return data

    def _account(
        self,
        method: str,
        data: Mapping[str, Any],
        methods: Mapping[str, int],
        elapsed_s: float,
        commands: Mapping[str, str] | None,
    ) -> None:
        timing = _mapping(data.get("time"))
        per_command = _command_times(data) if commands is not None else {}
        costs, operating = _nested_costs(per_command, commands or {})
        self.pacer.after_response(methods, timing, elapsed_s, costs=costs or None,
                                  operating=operating or None)
        self._remember_reset(method, timing)
        for key, command_time in per_command.items():
            self._remember_reset(_method_of((commands or {}).get(key, "")), command_time)

    def _decode(self, method: str, response: httpx.Response) -> dict[str, Any]:
        if 300 <= response.status_code < 400:
            raise self._redirect_error(method, response)
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if response.status_code >= 400 or not isinstance(data, dict) or "error" in data:
            raise self._http_error(method, response)
        return data

    def _redirect_error(self, method: str, response: httpx.Response) -> FatalCrmError:
        # A renamed portal answers 302. Re-sending a POST elsewhere silently is not ours
        # to decide: name the new host (never the path, which holds the secret).
        host = urlsplit(response.headers.get("location", "")).hostname
        where = f" to {host}" if host else ""
        return FatalCrmError(
            self.redact(f"{method}: HTTP {response.status_code} redirect{where} — the portal "
                        "may have been renamed; update webhook_url"),
            crm=CRM, method=method, status=response.status_code)

    def _http_error(self, method: str, response: httpx.Response) -> CrmError:
        status = response.status_code
        if status == 503:
            self.stats.http_503 += 1
        elif status == 429:
            self.stats.http_429 += 1
        elif status >= 500:
            self.stats.http_5xx += 1
        code, _ = parse_error_body(response.content)
        if status not in _LIMIT_CODES and code in _LIMIT_CODES.values():
            self._note_command_error(method, {"error": code})  # a limit code, odd status
        # A 429 waits until the method's reset time, not a blind backoff.
        wait = self._block(method) if status == 429 or code == "OPERATION_TIME_LIMIT" else None
        return translate_error(status=status, body=response.content, method=method,
                               retry_after=wait, secrets=self._secrets)

    def _block(self, method: str) -> float:
        """Register a 429 for ``method`` with the pacer; returns the wait in seconds.

        The vendor's rule: retry at ``operating_reset_at`` of the method's last good
        answer; if that has passed, at the next bucket reset.
        """
        now = self.wall_clock()
        reset_at = self._reset_at.get(method)
        if reset_at is None or reset_at <= now:
            reset_at = self.pacer.next_bucket_reset(now)
        self.pacer.blocked_until(method, reset_at)
        return reset_at - now

    def _remember_reset(self, method: str, timing: Mapping[str, Any]) -> None:
        reset_at = timing.get("operating_reset_at")
        if isinstance(reset_at, int | float) and not isinstance(reset_at, bool) and reset_at > 0:
            self._reset_at[method] = float(reset_at)


def _batch_response(data: Mapping[str, Any]) -> BatchResponse:
    inner = _mapping(data.get("result"))
    return BatchResponse(
        result=as_php_map(inner.get("result")),
        errors={k: _mapping(v) for k, v in as_php_map(inner.get("result_error")).items()},
        total=_int_map(inner.get("result_total")),
        next=_int_map(inner.get("result_next")),
        time=_mapping(data.get("time")),
        command_time={k: _mapping(v) for k, v in as_php_map(inner.get("result_time")).items()},
    )


def _command_times(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    inner = _mapping(data.get("result"))
    times = as_php_map(inner.get("result_time"))
    return {k: _mapping(v) for k, v in times.items() if isinstance(v, Mapping)}


def _nested_costs(
    per_command: Mapping[str, Mapping[str, Any]], commands: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Server seconds per nested method, and each method's latest ``operating`` figure."""
    if not per_command:
        return {}, {}
    costs: dict[str, float] = {_method_of(c): 0.0 for c in commands.values()}
    operating: dict[str, float] = {}
    for key, timing in per_command.items():
        method = _method_of(commands.get(key, ""))
        if method not in costs:
            continue
        costs[method] += _float(timing.get("processing"))
        if _is_number(timing.get("operating")):
            # accumulated, so the largest figure is the latest
            operating[method] = max(operating.get(method, 0.0), _float(timing.get("operating")))
    return costs, operating


def _method_of(command: str) -> str:
    return command.split("?", 1)[0].strip().lower().removesuffix(".json")


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _int_map(value: Any) -> dict[str, int]:
    pairs = ((k, _int_or_none(v)) for k, v in as_php_map(value).items())
    return {k: v for k, v in pairs if v is not None}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: Any) -> float:
    return float(value) if _is_number(value) else 0.0


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _date_start(timing: Mapping[str, Any]) -> str | None:
    """The server clock of a response, as a ``>=DATE_MODIFY`` bound the server accepts.

    ``DATE_MODIFY`` has whole seconds: a bound with a fraction (``…:35.4+03:00``) would
    skip what changed in the first part of that second, so it is floored. A value
    without an offset is ambiguous on the server (portal or user zone): not used.
    """
    value = timing.get("date_start")
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.replace(microsecond=0).isoformat()

