"""Bitrix24 error codes and HTTP statuses → the connector's error tree, by table.

The code decides first (facts sheet §1.4, §2.3); the HTTP status decides only when the
body carries no code (an HTML page from a proxy, an empty body). Nothing outside the
adapter looks at Bitrix24 codes. Messages name the method, status and code and never
contain the URL (the webhook secret lives in its path).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from connector.errors import (
    AuthError,
    CrmError,
    FatalCrmError,
    RetryableCrmError,
)
from connector.http import redact

__all__ = [
    "ERROR_TABLE",
    "FATAL_TRANSPORT_ERRORS",
    "STATUS_TABLE",
    "TRANSPORT_ERRORS",
    "error_class",
    "map_transport_errors",
    "parse_error_body",
    "translate_error",
]

CRM = "bitrix24"

ERROR_TABLE: Mapping[str, type[CrmError]] = {
    # limits and server trouble: retry later (§2.3, §5)
    "QUERY_LIMIT_EXCEEDED": RetryableCrmError,
    "OPERATION_TIME_LIMIT": RetryableCrmError,
    "OVERLOAD_LIMIT": RetryableCrmError,
    "INTERNAL_SERVER_ERROR": RetryableCrmError,
    "ERROR_UNEXPECTED_ANSWER": RetryableCrmError,
    # credentials (§1.4, OAuth server errors §1.3). expired_token will mean "refresh and
    # retry" once OAuth lands; a webhook never expires a token, so it is fatal for now.
    "expired_token": AuthError,
    "invalid_token": AuthError,
    "NO_AUTH_FOUND": AuthError,
    "INVALID_CREDENTIALS": AuthError,
    "authorization_error": AuthError,
    "invalid_grant": AuthError,
    "invalid_client": AuthError,
    # permissions, plan, portal state: an admin must act (§1.2, §1.4)
    "insufficient_scope": FatalCrmError,
    "invalid_scope": FatalCrmError,
    "ACCESS_DENIED": FatalCrmError,
    "user_access_error": FatalCrmError,
    "allowed_only_intranet_user": FatalCrmError,
    "WRONG_AUTH_TYPE": FatalCrmError,
    "PAYMENT_REQUIRED": FatalCrmError,
    "PORTAL_DELETED": FatalCrmError,
    "METHOD_CONFIRM_WAITING": FatalCrmError,
    # the request itself is wrong: retrying sends the same thing again (§2.3, §4, §7-§10)
    "ERROR_METHOD_NOT_FOUND": FatalCrmError,
    "INVALID_REQUEST": FatalCrmError,
    "invalid_request": FatalCrmError,
    "ERROR_BATCH_LENGTH_EXCEEDED": FatalCrmError,
    "ERROR_BATCH_METHOD_NOT_ALLOWED": FatalCrmError,
    "ERROR_MANIFEST_IS_NOT_AVAILABLE": FatalCrmError,
    "NOT_FOUND": FatalCrmError,
    "OWNER_NOT_FOUND": FatalCrmError,
    "INVALID_ARG_VALUE": FatalCrmError,
    "WRONG_DATETIME_FORMAT": FatalCrmError,
    "ERROR_CORE": FatalCrmError,
    "ERROR_EVENT_NOT_FOUND": FatalCrmError,
    "ERROR_WRONG_WORKFLOW_ID": FatalCrmError,
    "100": FatalCrmError,  # crm.activity.todo.add: required fields missing
    "0": FatalCrmError,  # tasks.task.list: bad sort key
    # legacy crm.* business errors carry an empty code (400 "Not found", "Access denied.")
    "": FatalCrmError,
}

# Codes differ in case between sources (expired_token vs EXPIRED_TOKEN, phpsdk's
# error_method_not_found): look them up case-insensitively.
_BY_FOLDED_CODE: Mapping[str, type[CrmError]] = {k.casefold(): v for k, v in ERROR_TABLE.items()}

STATUS_TABLE: Mapping[int, type[CrmError]] = {
    400: FatalCrmError,
    401: AuthError,
    403: FatalCrmError,
    404: FatalCrmError,
    405: FatalCrmError,
    408: RetryableCrmError,
    410: FatalCrmError,
    429: RetryableCrmError,
    500: RetryableCrmError,
    502: RetryableCrmError,
    503: RetryableCrmError,
    504: RetryableCrmError,
}

# OVERLOAD_LIMIT is a manual block by support: hammering it makes things worse.
_MIN_RETRY_AFTER = {"OVERLOAD_LIMIT": 60.0}
_SNIPPET = 120
_DESCRIPTION = 300


def error_class(code: str | None, status: int) -> type[CrmError]:
    """The class for a code (case-insensitive), else for the HTTP status."""
    if code is not None:
        cls = ERROR_TABLE.get(code) or _BY_FOLDED_CODE.get(code.casefold())
        if cls is not None:
            return cls
    if status in STATUS_TABLE:
        return STATUS_TABLE[status]
    # An unknown code or status: the server's fault is worth another try, ours is not.
    return RetryableCrmError if status >= 500 else FatalCrmError


def parse_error_body(body: bytes | str | Any) -> tuple[str | None, str]:
    """(code or None, description) from a response body of any shape.

    ``None`` means the body carries no Bitrix24 error code (HTML, plain text, empty);
    the description is then a short whitespace-collapsed snippet of the body.
    """
    data = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return None, _shorten(text, _SNIPPET)
    if isinstance(data, Mapping) and "error" in data:
        description = _shorten(str(data.get("error_description") or ""), _DESCRIPTION)
        return str(data.get("error") if data.get("error") is not None else ""), description
    return None, ""


def translate_error(
    *,
    status: int,
    body: bytes | str | Any,
    method: str,
    retry_after: float | None = None,
    secrets: Iterable[str] = (),
) -> CrmError:
    """The connector error for one failed call: by code first, then by HTTP status.

    The message names the method, status, code and a short description (or a redacted
    snippet of a non-JSON body); it never contains the request URL.
    """
    code, description = parse_error_body(body)
    cls = error_class(code, status)
    shown = code if code else ("non-JSON body" if code is None else "legacy error")
    text = f"{method}: HTTP {status} {shown}" + (f": {description}" if description else "")
    message = redact(text, secrets)
    attrs: dict[str, Any] = {"crm": CRM, "method": method, "status": status, "code": code or ""}
    if issubclass(cls, RetryableCrmError):
        wait = max(retry_after or 0.0, _MIN_RETRY_AFTER.get((code or "").upper(), 0.0)) or None
        return cls(message, retry_after=wait, **attrs)
    return cls(message, **attrs)


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# Worth another try: the request may not have reached the portal, or its answer was lost.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
    httpx.DecodingError,  # a body cut or garbled on the way (proxies, dropped connections)
)

# Retrying cannot help: the URL or our own request is wrong.
FATAL_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.TooManyRedirects,
    httpx.HTTPError,  # anything else httpx raises on purpose
    httpx.InvalidURL,
)


@contextmanager
def map_transport_errors(method: str, secrets: Iterable[str] = ()) -> Iterator[None]:
    """httpx errors → ``RetryableCrmError`` / ``FatalCrmError`` for ``method``.

    The httpx exception is not chained (``from None``): its text and its request carry
    the URL, and the webhook secret is in the URL's path.
    """
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise RetryableCrmError(
            _transport_message(method, exc, secrets), crm=CRM, method=method,
            code=type(exc).__name__,
        ) from None
    except FATAL_TRANSPORT_ERRORS as exc:
        raise FatalCrmError(
            _transport_message(method, exc, secrets), crm=CRM, method=method,
            code=type(exc).__name__,
        ) from None


def _transport_message(method: str, exc: Exception, secrets: Iterable[str]) -> str:
    # Only the exception's class and a redacted, shortened text: never its request URL.
    detail = _shorten(redact(str(exc), secrets), _SNIPPET)
    return f"{method}: {type(exc).__name__} talking to the portal" + (
        f" ({detail})" if detail else "")
