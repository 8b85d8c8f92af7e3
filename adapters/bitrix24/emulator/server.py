"""The emulator over real loopback HTTP (tests, benchmarks, other clients).

Plain ``http://``: the server cannot offer TLS, so it accepts ``http`` on connections
that arrive over loopback (the only place a client may use it) and, like the cloud,
answers ``INVALID_REQUEST`` "Https required." to any other — e.g. when bound to
``0.0.0.0`` and reached over the network. ``require_https=False`` lifts that.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from adapters.bitrix24.emulator.app import BitrixEmulator

__all__ = ["LoopbackServer", "QuietServer", "run_forever", "serve"]

STALL_S = 70.0  # a "timeout" fault stalls longer than any sane client timeout


class QuietServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when a client hangs up.

    Clients that give up mid-answer (a peer client dying on a limit, a test closing its
    connection) are routine for an emulator; other errors still print, as usual.
    """

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


@dataclass
class LoopbackServer:
    """A running loopback server."""

    url: str
    webhook_url: str
    httpd: QuietServer


def _handler_for(emulator: BitrixEmulator, require_https: bool
                 ) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return  # request lines carry the webhook secret: never print them

        def do_GET(self) -> None:
            self._answer(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._answer(self.rfile.read(length))

        def _answer(self, body: bytes) -> None:
            parts = urlsplit(self.path)
            # The local address this connection arrived on: loopback or not.
            local = str(self.connection.getsockname()[0])
            reply = emulator.dispatch("http", unquote(parts.path), parts.query,
                                      self.headers.get("Content-Type", ""), body,
                                      require_https=require_https, host=local)
            if reply.fault == "drop":
                self.close_connection = True
                return
            if reply.fault == "timeout":
                threading.Event().wait(STALL_S)
                self.close_connection = True
                return
            self._send(reply.status, reply.body, reply.content_type)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(emulator: BitrixEmulator, host: str = "127.0.0.1", port: int = 0, *,
          require_https: bool = True) -> Iterator[LoopbackServer]:
    """Serve ``emulator`` on ``host:port`` (0 = any free port) in a background thread."""
    httpd = QuietServer((host, port), _handler_for(emulator, require_https))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://{host}:{httpd.server_address[1]}"
    try:
        yield LoopbackServer(url, emulator.webhook_url(url), httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_forever(emulator: BitrixEmulator, host: str, port: int, *,
                require_https: bool = True) -> None:
    """Serve until interrupted, printing the webhook URL to use."""
    httpd = QuietServer((host, port), _handler_for(emulator, require_https))
    url = f"http://{host}:{httpd.server_address[1]}"
    print(f"Emulated Bitrix24 portal on {url}")
    print(f"webhook_url = \"{emulator.webhook_url(url)}\"", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
