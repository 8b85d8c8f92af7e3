import inspect

import httpx
import pytest

from adapters.bitrix24.errors import (
    ERROR_TABLE,
    FATAL_TRANSPORT_ERRORS,
    STATUS_TABLE,
    TRANSPORT_ERRORS,
    error_class,
    map_transport_errors,
    parse_error_body,
    translate_error,
)
from connector.errors import (
    AuthError,
    ConnectorError,
    FatalCrmError,
    RetryableCrmError,
)

SECRET = "SECRETSECRET9"
URL = f"https://p.example/rest/1/{SECRET}/crm.deal.list"

# Every code the facts sheet names (§1.3 OAuth, §1.4, §2.3, §4, §7-§10) must be in the table.
FACTS_SHEET_CODES = {
    "expired_token", "invalid_token", "NO_AUTH_FOUND", "INVALID_CREDENTIALS",
    "insufficient_scope", "user_access_error", "ACCESS_DENIED", "WRONG_AUTH_TYPE",
    "authorization_error", "PAYMENT_REQUIRED", "PORTAL_DELETED", "METHOD_CONFIRM_WAITING",
    "invalid_request", "invalid_client", "invalid_grant", "invalid_scope",
    "INTERNAL_SERVER_ERROR", "ERROR_UNEXPECTED_ANSWER", "QUERY_LIMIT_EXCEEDED",
    "OPERATION_TIME_LIMIT", "OVERLOAD_LIMIT", "ERROR_BATCH_METHOD_NOT_ALLOWED",
    "ERROR_BATCH_LENGTH_EXCEEDED", "INVALID_REQUEST", "ERROR_MANIFEST_IS_NOT_AVAILABLE",
    "ERROR_METHOD_NOT_FOUND", "NOT_FOUND", "INVALID_ARG_VALUE", "allowed_only_intranet_user",
    "ERROR_CORE", "ERROR_EVENT_NOT_FOUND", "ERROR_WRONG_WORKFLOW_ID", "OWNER_NOT_FOUND",
    "WRONG_DATETIME_FORMAT", "100", "0", "",
}


def test_the_table_covers_every_code_of_the_facts_sheet():
    assert not FACTS_SHEET_CODES - set(ERROR_TABLE)


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_code_in_the_table_resolves_to_a_connector_error(code):
    error = translate_error(status=400, body={"error": code, "error_description": "x"},
                            method="crm.deal.list")
    assert isinstance(error, ConnectorError)
    assert type(error) is ERROR_TABLE[code]
    assert error.code == code and error.method == "crm.deal.list" and error.crm == "bitrix24"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("QUERY_LIMIT_EXCEEDED", RetryableCrmError),
        ("OPERATION_TIME_LIMIT", RetryableCrmError),
        ("INTERNAL_SERVER_ERROR", RetryableCrmError),
        ("ERROR_UNEXPECTED_ANSWER", RetryableCrmError),
        ("OVERLOAD_LIMIT", RetryableCrmError),
        ("expired_token", AuthError),  # webhook auth: no refresh to try (OAuth comes later)
        ("NO_AUTH_FOUND", AuthError),
        ("INVALID_CREDENTIALS", AuthError),
        ("invalid_token", AuthError),
        ("authorization_error", AuthError),
        ("insufficient_scope", FatalCrmError),
        ("ACCESS_DENIED", FatalCrmError),
        ("PORTAL_DELETED", FatalCrmError),
        ("ERROR_BATCH_LENGTH_EXCEEDED", FatalCrmError),
        ("", FatalCrmError),
    ],
)
def test_what_the_caller_should_do(code, kind):
    assert type(translate_error(status=200, body={"error": code}, method="m")) is kind


@pytest.mark.parametrize("status", sorted(STATUS_TABLE))
def test_every_status_resolves_without_a_code(status):
    error = translate_error(status=status, body=b"<html>proxy</html>", method="batch")
    assert type(error) is STATUS_TABLE[status] and error.code == ""


@pytest.mark.parametrize(("status", "kind"), [(401, AuthError), (403, FatalCrmError),
                                              (404, FatalCrmError), (429, RetryableCrmError),
                                              (502, RetryableCrmError), (503, RetryableCrmError),
                                              (521, RetryableCrmError), (418, FatalCrmError)])
def test_html_pages_fall_back_to_the_status(status, kind):
    assert type(translate_error(status=status, body="<h1>nginx</h1>", method="m")) is kind


def test_code_wins_over_status():
    assert isinstance(translate_error(status=400, body={"error": "QUERY_LIMIT_EXCEEDED"},
                                      method="m"), RetryableCrmError)
    assert type(translate_error(status=500, body={"error": "ACCESS_DENIED"},
                                method="m")) is FatalCrmError
    assert type(translate_error(status=403, body={"error": "NO_AUTH_FOUND"},
                                method="m")) is AuthError


def test_codes_are_matched_case_insensitively_and_unknown_codes_use_the_status():
    assert error_class("EXPIRED_TOKEN", 200) is AuthError
    assert error_class("error_method_not_found", 200) is FatalCrmError
    assert error_class("SOMETHING_NEW", 503) is RetryableCrmError
    assert error_class("SOMETHING_NEW", 400) is FatalCrmError


def test_legacy_business_errors_keep_their_description():
    legacy = translate_error(status=400, body={"error": "", "error_description": "Not found"},
                             method="crm.deal.get")
    assert isinstance(legacy, FatalCrmError) and "Not found" in str(legacy)
    assert "legacy error" in str(legacy) and legacy.status == 400


def test_overload_waits_long_and_limits_carry_the_given_wait():
    overload = translate_error(status=503, body={"error": "OVERLOAD_LIMIT"}, method="m")
    assert isinstance(overload, RetryableCrmError) and overload.retry_after == 60.0
    blocked = translate_error(status=429, body={"error": "OPERATION_TIME_LIMIT"}, method="m",
                              retry_after=312.0)
    assert isinstance(blocked, RetryableCrmError) and blocked.retry_after == 312.0


def test_html_bodies_are_shown_short_and_redacted():
    body = f"<html><a href='{URL}'>retry</a>".encode() + b"x" * 5000
    error = translate_error(status=599, body=body, method="m")
    assert isinstance(error, RetryableCrmError) and len(str(error)) < 250
    assert "non-JSON body" in str(error) and SECRET not in str(error)


def test_descriptions_never_carry_a_secret():
    body = {"error": "NO_AUTH_FOUND", "error_description": f"bad hook {URL} token {SECRET}"}
    error = translate_error(status=401, body=body, method="m", secrets=[SECRET])
    assert SECRET not in str(error) and "***" in str(error)


@pytest.mark.parametrize("body", [b"", b"null", b"[1,2]", b"\xff\xfe", {"result": 1}, None, 7])
def test_odd_bodies_parse_to_no_code(body):
    code, _ = parse_error_body(body)
    assert code is None


# -- httpx exceptions ------------------------------------------------------------------------


def _httpx_error_classes():
    """Every exception class httpx exports that it raises on purpose."""
    classes = [obj for _, obj in inspect.getmembers(httpx, inspect.isclass)
               if issubclass(obj, Exception) and obj.__module__.startswith("httpx")]
    return [c for c in classes if issubclass(c, httpx.HTTPError | httpx.InvalidURL)]


def _instance(exc_type):
    request = httpx.Request("POST", URL)
    if issubclass(exc_type, httpx.HTTPStatusError):
        return exc_type(f"boom {URL}", request=request, response=httpx.Response(500))
    if issubclass(exc_type, httpx.RequestError):
        return exc_type(f"boom {URL}", request=request)
    return exc_type(f"boom {URL}")


def test_the_meta_test_sees_the_httpx_tree():
    names = {c.__name__ for c in _httpx_error_classes()}
    assert {"ConnectError", "ReadTimeout", "RemoteProtocolError", "HTTPStatusError",
            "UnsupportedProtocol", "InvalidURL"} <= names


@pytest.mark.parametrize("exc_type", _httpx_error_classes(), ids=lambda c: c.__name__)
def test_every_httpx_error_resolves_to_a_connector_error_without_the_url(exc_type):
    with pytest.raises(ConnectorError) as info, map_transport_errors("crm.deal.list"):
        raise _instance(exc_type)
    error = info.value
    assert SECRET not in str(error) and SECRET not in repr(error)
    # not chained: the httpx exception (and its request URL) is not reachable
    assert error.__cause__ is None and error.__suppress_context__
    assert error.method == "crm.deal.list" and error.code == exc_type.__name__
    retryable = issubclass(exc_type, TRANSPORT_ERRORS)
    assert isinstance(error, RetryableCrmError) is retryable


@pytest.mark.parametrize("exc_type", TRANSPORT_ERRORS + FATAL_TRANSPORT_ERRORS,
                         ids=lambda c: c.__name__)
def test_every_listed_class_is_an_httpx_class(exc_type):
    assert exc_type.__module__.startswith("httpx")


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ReadTimeout,
                                      httpx.ConnectTimeout, httpx.WriteError, httpx.PoolTimeout,
                                      httpx.RemoteProtocolError, httpx.ReadError])
def test_network_trouble_is_retryable(exc_type):
    with pytest.raises(RetryableCrmError), map_transport_errors("profile"):
        raise _instance(exc_type)


def test_other_exceptions_pass_through_untouched():
    with pytest.raises(KeyError), map_transport_errors("profile"):
        raise KeyError("programmer mistake")
