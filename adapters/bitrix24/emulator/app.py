"""The emulated Bitrix24 REST endpoint: routing, auth, envelopes, batch, limits, faults.

:meth:`BitrixEmulator.dispatch` turns one HTTP request into one :class:`Reply`; the
in-process :meth:`~BitrixEmulator.transport` and the loopback server both use it.
Every duration comes from the cost model in ``limits.py``; the emulator *sleeps* it
(scaled), so a client sees the latency it would see on a real portal.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

import httpx

from adapters.bitrix24.emulator.faults import FaultConfig, FaultInjector
from adapters.bitrix24.emulator.limits import EmulatorLimits, LeakyBucket, OperatingBudget
from adapters.bitrix24.emulator.methods import (
    APP_ONLY,
    HANDLERS,
    ApiError,
    Context,
    Outcome,
    required_scope,
)
from adapters.bitrix24.emulator.php import parse_php_pairs, parse_php_query, php_value
from adapters.bitrix24.emulator.query import BadRequest
from adapters.bitrix24.emulator.store import Portal

__all__ = ["BitrixEmulator", "EmulatorStats", "Reply"]

MAX_BATCH = 50
_RESULT_REF = re.compile(r"\$result\[([^\]]*)\]((?:\[[^\]]*\])*)")
HTML_ERROR = ("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad "
              "Gateway</h1></center><hr><center>nginx</center></body></html>")


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
        return _Transport(self, require_https)

    # -- dispatch -------------------------------------------------------------------------
    def dispatch(self, scheme: str, path: str, query: str, content_type: str, body: bytes,
                 *, require_https: bool = True) -> Reply:
        """Answer one HTTP request."""
        with self._lock:
            self.stats.requests += 1
            fault = self.faults.draw()
        if fault is not None:
            return self._fault(fault)
        try:
            reply = self._serve(scheme, path, query, content_type, body, require_https)
        except ApiError as exc:
            reply = _error(exc.status, exc.code, exc.description)
        except BadRequest as exc:
            reply = _error(400, "", str(exc))
        except _Timeout:
            raise
        except Exception:  # a handler bug must not kill the server thread or the client
            reply = _error(500, "INTERNAL_SERVER_ERROR", "Internal server error")
        self._count(reply.status)
        return reply

    def _serve(self, scheme: str, path: str, query: str, content_type: str, body: bytes,
               require_https: bool) -> Reply:
        if require_https and scheme != "https":
            raise ApiError(400, "INVALID_REQUEST", "Https required.")
        params = _parse_body(query, content_type, body)
        method, credential = self._route(path, params)
        with self._lock:
            admitted = not self.real.enabled or self.bucket.admit(self.clock())
        if not admitted:
            raise ApiError(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        if method == "batch":
            return self._batch(credential, params)
        return self._single(credential, method, params)

    def _route(self, path: str, params: Mapping[str, Any]) -> tuple[str, str]:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "rest":
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        if len(parts) == 4 and parts[1].isdigit():
            if int(parts[1]) != self.user_id or parts[2] != self.secret:
                raise ApiError(401, "NO_AUTH_FOUND", "Wrong authorization data")
            return self._method_name(parts[3]), f"webhook:{parts[1]}"
        if len(parts) == 2:
            return self._method_name(parts[1]), self._token_credential(params)
        raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")

    @staticmethod
    def _method_name(raw: str) -> str:
        name = raw.lower()
        if name.endswith(".xml"):
            raise ApiError(400, "INVALID_REQUEST", "XML output is not supported here")
        return name.removesuffix(".json")

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
        self._check_allowed(credential, method)
        outcome = self._run(method, params)
        self._spend(outcome.cost, started)
        timing = self._charge(credential, method, outcome.cost, started)
        envelope: dict[str, Any] = {"result": php_value(outcome.result)}
        if outcome.total is not None:
            envelope["total"] = outcome.total
        if outcome.next is not None:
            envelope["next"] = outcome.next
        envelope["time"] = timing
        return Reply(200, _json(envelope))

    def _check_allowed(self, credential: str, method: str) -> None:
        if method not in HANDLERS and method not in APP_ONLY:
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        if method in APP_ONLY and credential.startswith("webhook:"):
            raise ApiError(400, "ACCESS_DENIED", "Access denied! Application context required")
        scope = required_scope(method)
        if scope is not None and scope not in self.scopes:
            raise ApiError(403, "insufficient_scope",
                           "The request requires higher privileges than provided by the "
                           "webhook token")
        if self.real.enabled:
            with self._lock:
                blocked = self.budget.blocked(f"{credential}:{method}", self.clock())
            if blocked:
                raise ApiError(429, "OPERATION_TIME_LIMIT",
                               "Method is blocked due to operation time limit.")

    def _run(self, method: str, params: Mapping[str, Any]) -> Outcome:
        handler = HANDLERS.get(method)
        if handler is None:  # app-only methods that passed the auth check
            raise ApiError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        ctx = Context(self.portal, self.real, self.user_id, self.scopes)
        return handler(ctx, params)

    def _spend(self, cost: float, started: float) -> None:
        # Act out the server time (minus what real processing already took), and cut the
        # request off like the cloud does when it runs past the hard timeout.
        if not self.real.enabled:
            return
        total = cost + self.real.latency_s
        if total > self.real.request_timeout_s:
            self.sleep(self.real.request_timeout_s)
            raise _Timeout()
        remaining = total - (self.clock() - started)
        if remaining > 0:
            self.sleep(remaining)

    def _charge(self, credential: str, method: str, cost: float, started: float) -> dict[str,
                                                                                        Any]:
        now = self.clock()
        key = f"{credential}:{method}"
        with self._lock:
            self.stats.by_method[method] += 1
            spent = self.stats.server_time_by_method
            spent[method] = spent.get(method, 0.0) + cost
            if self.real.enabled:
                self.budget.charge(key, now, cost)
            operating = self.budget.operating(key, now)
            reset_at = self.budget.reset_at(key, now)
        return self._time_block(started, now, cost, operating, reset_at)

    def _time_block(self, started: float, finished: float, cost: float, operating: float,
                    reset_at: int) -> dict[str, Any]:
        return {
            "start": round(started, 6), "finish": round(finished, 6),
            "duration": round(finished - started, 6), "processing": round(cost, 6),
            "date_start": self.portal.stamp(datetime.fromtimestamp(started, self.portal.tz)),
            "date_finish": self.portal.stamp(datetime.fromtimestamp(finished, self.portal.tz)),
            "operating_reset_at": reset_at, "operating": round(operating, 6),
        }

    # -- batch ------------------------------------------------------------------------------
    def _batch(self, credential: str, params: Mapping[str, Any]) -> Reply:
        started = self.clock()
        commands = _commands(params.get("cmd"))
        if len(commands) > MAX_BATCH:
            raise ApiError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        halt = str(params.get("halt", "0")).lower() in ("1", "true", "y")
        parts: dict[str, dict[str, Any]] = {name: {} for name in
                                            ("result", "result_error", "result_total",
                                             "result_next", "result_time")}
        total_cost = 0.0
        for key, command in commands.items():
            outcome, error = self._batch_command(credential, command, parts["result"])
            if error is not None:
                parts["result_error"][key] = error
                if halt:
                    break
                continue
            assert outcome is not None
            total_cost += outcome.cost
            self._record_command(key, outcome, parts, credential, command, started)
        self._spend(total_cost, started)
        if self.limits.batch_accounting == "batch":
            timing = self._charge(credential, "batch", total_cost, started)
        else:
            timing = self._charge(credential, "batch", 0.0, started)
        envelope = {"result": {k: php_value(v) for k, v in parts.items()}, "time": timing}
        return Reply(200, _json(envelope))

    def _batch_command(self, credential: str, command: str, done: Mapping[str, Any]
                       ) -> tuple[Outcome | None, dict[str, str] | None]:
        name, _, query = command.partition("?")
        method = name.strip().lower().removesuffix(".json")
        try:
            if method == "batch":
                raise ApiError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED",
                               "Method is not allowed for batch usage")
            if self.limits.batch_accounting == "batch":
                self._check_allowed_no_budget(credential, method)
            else:
                self._check_allowed(credential, method)
            return self._run(method, _command_params(query, done)), None
        except ApiError as exc:
            if exc.code == "OPERATION_TIME_LIMIT":
                with self._lock:
                    self.stats.batch_429 += 1
            return None, {"error": exc.code, "error_description": exc.description}
        except BadRequest as exc:
            return None, {"error": "", "error_description": str(exc)}
        except Exception:  # a handler bug answers like PHP would: a 500 for that command
            return None, {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal error"}

    def _check_allowed_no_budget(self, credential: str, method: str) -> None:
        enabled, self.real = self.real.enabled, _disabled(self.real)
        try:
            self._check_allowed(credential, method)
        finally:
            self.real = _enabled(self.real, enabled)

    def _record_command(self, key: str, outcome: Outcome, parts: dict[str, dict[str, Any]],
                        credential: str, command: str, started: float) -> None:
        parts["result"][key] = outcome.result
        if outcome.total is not None:
            parts["result_total"][key] = outcome.total
        if outcome.next is not None:
            parts["result_next"][key] = outcome.next
        method = command.partition("?")[0].strip().lower().removesuffix(".json")
        if self.limits.batch_accounting == "nested":
            parts["result_time"][key] = self._charge(credential, method, outcome.cost, started)
        else:
            parts["result_time"][key] = self._time_block(started, self.clock(), outcome.cost,
                                                         0.0, 0)

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
            reply = Reply(502, HTML_ERROR.encode(), "text/html; charset=utf-8")
        else:
            return Reply(0, b"", fault=kind)
        self._count(reply.status)
        return reply

    def _count(self, status: int) -> None:
        with self._lock:
            self.stats.by_status[status] += 1
            self.stats.http_503 += int(status == 503)
            self.stats.http_429 += int(status == 429)


class _Timeout(Exception):
    """The request ran past the cloud's hard timeout."""


def _disabled(limits: EmulatorLimits) -> EmulatorLimits:
    from dataclasses import replace

    return replace(limits, enabled=False)


def _enabled(limits: EmulatorLimits, enabled: bool) -> EmulatorLimits:
    from dataclasses import replace

    return replace(limits, enabled=enabled)


def _error(status: int, code: str, description: str) -> Reply:
    return Reply(status, _json({"error": code, "error_description": description}))


def _json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _parse_body(query: str, content_type: str, body: bytes) -> dict[str, Any]:
    params = parse_php_query(query)
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        return params
    if kind == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, "INVALID_REQUEST", "Invalid JSON body") from None
        if isinstance(data, dict):
            params.update(data)
    elif kind == "multipart/form-data":
        params.update(_multipart(content_type, body))
    else:
        params.update(parse_php_query(body.decode("utf-8", "replace")))
    return params


def _multipart(content_type: str, body: bytes) -> dict[str, Any]:
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    pairs = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            pairs.append((str(name), str(part.get_content()).strip()))
    return parse_php_pairs(pairs)


def _commands(value: Any) -> dict[str, str]:
    if isinstance(value, list):
        return {str(i): str(v) for i, v in enumerate(value)}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    raise BadRequest("Parameter 'cmd' must be array.")


def _command_params(query: str, done: Mapping[str, Any]) -> dict[str, Any]:
    """A batch command's parameters with ``$result[cmd][path…]`` references resolved.

    References are resolved in decoded values, so clients that percent-encode them
    (b24pysdk) and clients that do not (ours) are read alike. A missing path becomes an
    empty string: the real behaviour is undocumented (facts sheet §4), and an empty
    ``>ID`` then reads from the start — the duplicate trap a careless client falls into.
    """

    def value(match: re.Match[str]) -> str:
        node: Any = done.get(match.group(1))
        for part in re.findall(r"\[([^\]]*)\]", match.group(2)):
            node = _step(node, part)
        return "" if node is None or isinstance(node, dict | list) else str(node)

    pairs = [(k, _RESULT_REF.sub(value, v)) for k, v in parse_qsl(query, keep_blank_values=True)]
    return parse_php_pairs(pairs)


def _step(node: Any, part: str) -> Any:
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    if isinstance(node, dict):
        return node.get(part)
    return None


class _Transport(httpx.BaseTransport):
    """In-process transport: dispatches to the emulator, acts out dropped connections."""

    def __init__(self, emulator: BitrixEmulator, require_https: bool) -> None:
        self.emulator, self.require_https = emulator, require_https

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        reply = self.emulator.dispatch(
            request.url.scheme, unquote(request.url.path), request.url.query.decode(),
            request.headers.get("content-type", ""), body, require_https=self.require_https)
        if reply.fault == "drop":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                            request=request)
        if reply.fault == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(reply.status, content=reply.body,
                              headers={"content-type": reply.content_type})

