import httpx
import pytest

from adapters.bitrix24.errors import (
    ERROR_TABLE,
    STATUS_TABLE,
    TRANSPORT_ERRORS,
    map_transport_errors,
    translate_error,
)
from connector.errors import (
    AuthError,
    ConnectorError,
    FatalCrmError,
    RetryableCrmError,
)


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_code_in_the_table_resolves_to_a_connector_error(code):
    error = translate_error(status=400, body={"error": code, "error_description": "x"},
                            method="crm.deal.list")
    assert isinstance(error, ConnectorError)
    assert type(error) is ERROR_TABLE[code]
    assert error.code == code and error.method == "crm.deal.list"


@pytest.mark.parametrize("status", sorted(STATUS_TABLE))
def test_every_status_resolves_without_a_code(status):
    error = translate_error(status=status, body=b"<html>proxy</html>", method="batch")
    assert type(error) is STATUS_TABLE[status]


@pytest.mark.parametrize("exc_type", TRANSPORT_ERRORS)
def test_every_transport_error_we_catch_resolves(exc_type):
    request = httpx.Request("POST", "https://p.example/rest/1/SECRETSECRET/crm.deal.list")
    with pytest.raises(RetryableCrmError) as info, map_transport_errors("crm.deal.list"):
        raise exc_type("boom https://p.example/rest/1/SECRETSECRET/", request=request)
    assert "SECRETSECRET" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_code_wins_over_status_and_kinds_are_right():
    assert isinstance(translate_error(status=503, body={"error": "QUERY_LIMIT_EXCEEDED"},
                                      method="m"), RetryableCrmError)
    assert isinstance(translate_error(status=401, body={"error": "NO_AUTH_FOUND"}, method="m"),
                      AuthError)
    legacy = translate_error(status=400, body={"error": "", "error_description": "Not found"},
                             method="crm.deal.get")
    assert isinstance(legacy, FatalCrmError) and "Not found" in str(legacy)
    overload = translate_error(status=503, body={"error": "OVERLOAD_LIMIT"}, method="m")
    assert isinstance(overload, RetryableCrmError) and overload.retry_after == 60.0


def test_html_bodies_are_shown_short_and_unknown_5xx_retry():
    error = translate_error(status=599, body=b"<html>" + b"x" * 5000, method="m")
    assert isinstance(error, RetryableCrmError) and len(str(error)) < 300
