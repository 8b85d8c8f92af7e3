"""The loopback server stays quiet when a client hangs up, and loud otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from adapters.bitrix24.emulator.server import QuietServer


@pytest.fixture
def server() -> Iterator[QuietServer]:
    quiet = QuietServer(("127.0.0.1", 0), BaseHTTPRequestHandler, bind_and_activate=False)
    yield quiet
    quiet.server_close()


@pytest.mark.parametrize("gone", [BrokenPipeError, ConnectionResetError])
def test_a_client_hanging_up_prints_nothing(gone: type[OSError], server: QuietServer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise gone()
    except OSError:
        server.handle_error(None, ("127.0.0.1", 1))
    assert capsys.readouterr().err == ""


def test_any_other_error_still_prints_its_traceback(server: QuietServer,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    try:
        raise ValueError("emulator bug")
    except ValueError:
        server.handle_error(None, ("127.0.0.1", 1))
    assert "ValueError: emulator bug" in capsys.readouterr().err
