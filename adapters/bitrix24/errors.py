"""Bitrix24 error codes and HTTP statuses → the connector's error tree, by table.

The code decides first (facts sheet §1.4, §2.3); the HTTP status decides only when the
body carries no code (an HTML page from a proxy, an empty body). Nothing outside the
adapter looks at Bitrix24 codes. Messages name the method, status and code and never
contain the URL (the webhook secret lives in its path).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
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
    "STATUS_TABLE",
    "TRANSPORT_ERRORS",
    "map_transport_errors",
    "parse_error_body",
    "translate_error",
]

CRM = "bitrix24"

ERROR_TABLE: Mapping[str, type[CrmError]] = {
    # limits and server trouble: retry later
    "QUERY_LIMIT_EXCEEDED": RetryableCrmError,
    "OPERATION_TIME_LIMIT": RetryableCrmError,
    "OVERLOAD_LIMIT": RetryableCrmError,
    "INTERNAL_SERVER_ERROR": RetryableCrmError,
    "ERROR_UNEXPECTED_ANSWER": RetryableCrmError,
    # credentials: fix the webhook (expired_token needs an OAuth refresh, not built yet)
    "expired_token": AuthError,
    "invalid_token": AuthError,
    "NO_AUTH_FOUND": AuthError,
    "INVALID_CREDENTIALS": AuthError,
    "authorization_error": AuthError,
    "invalid_grant": AuthError,
    "invalid_client": AuthError,
    # permissions, plan, request shape: give up
    "insufficient_scope": FatalCrmError,
    "invalid_scope": FatalCrmError,
    "ACCESS_DENIED": FatalCrmError,
    "user_access_error": FatalCrmError,
    "allowed_only_intranet_user": FatalCrmError,
    "WRONG_AUTH_TYPE": FatalCrmError,
    "PAYMENT_REQUIRED": FatalCrmError,
    "PORTAL_DELETED": FatalCrmError,
    "METHOD_CONFIRM_WAITING": FatalCrmError,
    "ERROR_METHOD_NOT_FOUND": FatalCrmError,
    "INVALID_REQUEST": FatalCrmError,
    "invalid_request": FatalCrmError,
    "ERROR_BATCH_LENGTH_EXCEEDED": FatalCrmError,
    "ERROR_BATCH_METHOD_NOT_ALLOWED": FatalCrmError,
    "ERROR_MANIFEST_IS_NOT_AVAILABLE": FatalCrmError,
    "NOT_FOUND": FatalCrmError,
    "INVALID_ARG_VALUE": FatalCrmError,
    "ERROR_CORE": FatalCrmError,
    # legacy crm.* business errors carry an empty code (400 "Not found", "Access denied.")
    "": FatalCrmError,
}

STATUS_TABLE: Mapping[int, type[CrmError]] = {
    400: FatalCrmError,
    401: AuthError,
    403: FatalCrmError,
    404: FatalCrmError,
    405: FatalCrmError,
    408: RetryableCrmError,
    429: RetryableCrmError,
    500: RetryableCrmError,
    502: RetryableCrmError,
    503: RetryableCrmError,
    504: RetryableCrmError,
}

# OVERLOAD_LIMIT is a manual block by support: hammering it makes things worse.
_MIN_RETRY_AFTER = {"OVERLOAD_LIMIT": 60.0}


def parse_error_body(body: bytes | str | Any) -> tuple[str | None, str]:
    """(code or None, description) from a response body of any shape."""
    data = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return None, " ".join(text.split())[:120]
    if isinstance(data, Mapping) and "error" in data:
        return str(data.get("error") or ""), str(data.get("error_description") or "")[:300]
    return None, ""


def translate_error(
    *, status: int, body: bytes | str | Any, method: str, retry_after: float | None = None
) -> CrmError:
    """The connector error for one failed call: by code first, then by HTTP status."""
    code, description = parse_error_body(body)
    cls = ERROR_TABLE.get(code) if code is not None else None
    if cls is None:
        cls = STATUS_TABLE.get(status) or (RetryableCrmError if status >= 500 else FatalCrmError)
    shown = code if code else ("non-JSON body" if code is None else "legacy error")
    message = redact(f"{method}: HTTP {status} {shown}" + (f": {description}" if description
                                                           else ""))
    attrs: dict[str, Any] = {"crm": CRM, "method": method, "status": status, "code": code or ""}
    if cls is RetryableCrmError:
        wait = max(retry_after or 0.0, _MIN_RETRY_AFTER.get(code or "", 0.0)) or None
        return RetryableCrmError(message, retry_after=wait, **attrs)
    return cls(message, **attrs)


TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)


@contextmanager
def map_transport_errors(method: str) -> Iterator[None]:
    """Network trouble → RetryableCrmError, without chaining the httpx error (its URL)."""
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise RetryableCrmError(
            f"{method}: {type(exc).__name__} talking to the portal", crm=CRM, method=method,
            code=type(exc).__name__,
        ) from None
    except httpx.HTTPError as exc:
        raise FatalCrmError(f"{method}: {type(exc).__name__}", crm=CRM, method=method) from None
