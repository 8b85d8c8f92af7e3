"""The HTTP side of the emulator: request bodies as PHP reads them, and the httpx transport.

PHP fills its parameters from the query string plus a body it understands —
``application/x-www-form-urlencoded`` or ``multipart/form-data``, and the REST module
adds ``application/json`` (facts sheet §2.1). A body of any other type is not read at
all, so a client that forgets its Content-Type sends no parameters, as it would to
the real portal.
"""

from __future__ import annotations

import ipaddress
import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

from adapters.bitrix24.emulator.methods import ApiError
from adapters.bitrix24.emulator.php import parse_php_pairs, parse_php_query

if TYPE_CHECKING:
    from adapters.bitrix24.emulator.app import BitrixEmulator

__all__ = ["Transport", "is_loopback", "parse_body"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_body(query: str, content_type: str, body: bytes) -> dict[str, Any]:
    """The request's parameters: the query string, then the body over it (POST wins)."""
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
    elif kind == "application/x-www-form-urlencoded":
        params.update(parse_php_query(body.decode("utf-8", "replace")))
    return params


def _multipart(content_type: str, body: bytes) -> dict[str, Any]:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    pairs = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        # The raw payload, not get_content(): values keep their exact bytes (no
        # whitespace trimmed), and a file part reads as its text like any other field.
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        pairs.append((str(name), text))
    return parse_php_pairs(pairs)


class Transport(httpx.BaseTransport):
    """In-process transport: dispatches to the emulator, acts out dropped connections."""

    def __init__(self, emulator: BitrixEmulator, require_https: bool) -> None:
        self.emulator, self.require_https = emulator, require_https

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` as the portal would (or fail it like a broken network)."""
        body = request.read()
        reply = self.emulator.dispatch(
            request.url.scheme, unquote(request.url.path), request.url.query.decode(),
            request.headers.get("content-type", ""), body, require_https=self.require_https,
            host=request.url.host)
        if reply.fault == "drop":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                            request=request)
        if reply.fault == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(reply.status, content=reply.body,
                              headers={"content-type": reply.content_type})
