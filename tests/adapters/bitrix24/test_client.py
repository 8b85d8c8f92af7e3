import json
import logging
from urllib.parse import parse_qsl

import httpx
import pytest
from fakes import FakeClock
from pydantic import SecretStr

from adapters.bitrix24.client import Bitrix24Client
from adapters.bitrix24.pagination import PagingError
from connector.errors import AuthError, FatalCrmError, RetryableCrmError
from connector.http import BATCH, Pacer, PacerLimits, RetryPolicy, make_http_client

SECRET = "hooksecret42xyz"
URL = f"https://p.bitrix24.ru/rest/1/{SECRET}/"
NOW = 1_800_000_000.0
RESET = NOW + 540
TIME = {"start": NOW, "finish": NOW + 0.1, "duration": 0.1, "processing": 0.05,
        "date_start": "2027-01-15T10:00:00+03:00", "date_finish": "2027-01-15T10:00:00+03:00",
        "operating": 0.05, "operating_reset_at": RESET}
LIMIT_503 = (503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
BLOCKED_429 = (429, {"error": "OPERATION_TIME_LIMIT",
                     "error_description": "Method is blocked due to operation time limit."})


class Portal:
    """Answers queued responses in order and records every request."""

    def __init__(self, responses) -> None:
        self.queue = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.queue.pop(0)
        if isinstance(item, Exception):
            raise item
        status, body = item
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers={"content-type": "text/html"})
        return httpx.Response(status, json=body)

    def body(self, index: int) -> dict:
        return json.loads(self.requests[index].content)


def client_for(responses, *, http=None, limits=None, retry=None, url=URL):
    clock = FakeClock(NOW)
    portal = Portal(responses)
    http = http or httpx.Client(transport=httpx.MockTransport(portal))
    pacer = Pacer(limits or PacerLimits(), clock=clock, wall_clock=clock, sleep=clock.sleep)
    client = Bitrix24Client(url, http=http, pacer=pacer, retry=retry or RetryPolicy(),
                            sleep=clock.sleep, wall_clock=clock)
    return client, portal, clock


def rows(start, n):
    return [{"ID": str(i), "TITLE": f"deal {i}"} for i in range(start, start + n)]


def ok(result, **extra):
    return (200, {"result": result, **extra, "time": TIME})


def batch_ok(results, errors=None, times=None):
    return (200, {"result": {"result": results or [], "result_error": errors or [],
                             "result_total": {k: 0 for k in results or {}},
                             "result_next": [], "result_time": times or []}, "time": TIME})


def command_filters(body: dict) -> dict[str, str]:
    """Command key -> its >ID filter value."""
    return {key: dict(parse_qsl(cmd.partition("?")[2]))["filter[>ID]"]
            for key, cmd in body["cmd"].items()}


# -- call ---------------------------------------------------------------------------------------


def test_call_posts_json_and_parses_the_envelope():
    client, portal, _ = client_for([ok(rows(1, 2), total=120, next=50)])
    response = client.call("crm.deal.list", {"select": ["ID"], "filter": {">ID": 0}})
    assert response.result == rows(1, 2) and response.total == 120 and response.next == 50
    assert response.time["date_start"] == TIME["date_start"]
    request = portal.requests[0]
    assert request.method == "POST" and request.url == URL + "crm.deal.list"
    assert request.headers["content-type"] == "application/json"
    assert portal.body(0) == {"select": ["ID"], "filter": {">ID": 0}}
    assert client.stats.requests == 1 and client.stats.by_method["crm.deal.list"] == 1


def test_envelope_without_list_fields_and_secretstr_webhook():
    client, portal, _ = client_for([(200, {"result": True})], url=SecretStr(URL.rstrip("/")))
    response = client.call("profile")
    assert response.result is True and response.total is None and response.next is None
    assert response.time == {} and portal.requests[0].url == URL + "profile"


def test_an_error_body_with_http_200_is_still_an_error():
    client, _, _ = client_for([(200, {"error": "", "error_description": "Not found"})])
    with pytest.raises(FatalCrmError, match="Not found"):
        client.call("crm.deal.get", {"id": 5})


def test_count_reads_total_from_one_counted_page():
    client, portal, _ = client_for([ok(rows(1, 50), total=12_345, next=50)])
    assert client.count("crm.contact.list", {">=DATE_MODIFY": "2027-01-01"}) == 12_345
    assert portal.body(0) == {"filter": {">=DATE_MODIFY": "2027-01-01"}, "select": ["ID"],
                              "start": 0}


# -- batch --------------------------------------------------------------------------------------


def test_batch_encodes_commands_and_normalises_php_maps():
    body = {"result": {"result": {"a": rows(1, 1), "b": {"ID": "9"}},
                       "result_error": {"c": {"error": "", "error_description": "Access denied."}},
                       "result_total": {"a": 1}, "result_next": [], "result_time": []},
            "time": TIME}
    client, portal, _ = client_for([(200, body)])
    response = client.batch({"a": ("crm.deal.list", {"filter": {">ID": 0}, "select": ["ID"]}),
                             "b": "crm.deal.get?id=9", "c": ("crm.contact.get", {"id": 1})},
                            halt=True)
    sent = portal.body(0)
    assert sent["halt"] == 1
    assert sent["cmd"] == {"a": "crm.deal.list?filter%5B%3EID%5D=0&select%5B0%5D=ID",
                           "b": "crm.deal.get?id=9", "c": "crm.contact.get?id=1"}
    assert response.result == {"a": rows(1, 1), "b": {"ID": "9"}}
    assert response.errors == {"c": {"error": "", "error_description": "Access denied."}}
    assert response.total == {"a": 1} and response.next == {} and response.time == TIME


def test_batch_reads_list_collapsed_maps_by_index():
    body = {"result": {"result": [rows(1, 1), rows(2, 1)], "result_error": [],
                       "result_total": [1, 1], "result_next": [], "result_time": []},
            "time": TIME}
    client, _, _ = client_for([(200, body)])
    response = client.batch({"0": "crm.deal.list?start=-1", "1": "crm.deal.list?start=-1"})
    assert response.result == {"0": rows(1, 1), "1": rows(2, 1)}
    assert response.errors == {} and response.total == {"0": 1, "1": 1}


@pytest.mark.parametrize("size", [0, 51])
def test_batch_size_is_checked_before_sending(size):
    client, portal, _ = client_for([])
    with pytest.raises(ValueError):
        client.batch({f"c{i}": "profile" for i in range(size)})
    assert portal.requests == []


def test_batch_server_time_is_charged_to_the_nested_methods():
    times = {"d": {**TIME, "processing": 3.0, "operating": 40.0},
             "c": {**TIME, "processing": 1.0, "operating": 2.0}}
    body = batch_ok({"d": [], "c": []}, times=times)
    body[1]["time"] = {**TIME, "processing": 4.0, "operating": 0}
    client, _, _ = client_for([body])
    client.batch({"d": "crm.deal.list?start=-1", "c": "crm.contact.list?start=-1"})
    assert client.pacer.operating("crm.deal.list") == pytest.approx(40.0), "server's larger figure"
    assert client.pacer.operating("crm.contact.list") == pytest.approx(2.0)
    assert client.pacer.operating(BATCH) == 0, "the server says batches are not charged"


# -- list_keyset --------------------------------------------------------------------------------


def test_list_keyset_single_call_then_chained_batch_until_short_page():
    results = {f"p{i}": rows(51 + 50 * i, 50) for i in range(3)}
    results["p3"] = rows(201, 7)
    results["p4"] = rows(1, 50)  # ran on a missing $result path: must be discarded
    client, portal, _ = client_for([ok(rows(1, 50), total=0), batch_ok(results)])
    pages = list(client.list_keyset("crm.deal.list", select=["ID", "TITLE"],
                                    filter={">=DATE_MODIFY": "2027-01-01T00:00:00+03:00"}))
    assert [len(p.rows) for p in pages] == [50, 157]
    assert pages[0].server_time == TIME["date_start"]
    ids = [int(r["ID"]) for p in pages for r in p.rows]
    assert ids == list(range(1, 208)), "rows after the short page were discarded"
    first = portal.body(0)
    assert first == {"order": {"ID": "ASC"}, "select": ["ID", "TITLE"], "start": -1,
                     "filter": {">=DATE_MODIFY": "2027-01-01T00:00:00+03:00", ">ID": 0}}
    filters = command_filters(portal.body(1))
    assert len(filters) == 50 and filters["p0"] == "50"
    assert filters["p1"] == "$result[p0][49][ID]" and filters["p49"] == "$result[p48][49][ID]"


def test_a_short_first_page_needs_no_batch_and_resumes_after_an_id():
    client, portal, _ = client_for([ok(rows(1001, 3))])
    pages = list(client.list_keyset("crm.contact.list", select=["*"], after_id=1000))
    assert len(pages) == 1 and len(portal.requests) == 1
    assert portal.body(0)["filter"] == {">ID": 1000}


def test_list_keyset_streams():
    client, portal, _ = client_for([ok(rows(1, 50)), batch_ok({"p0": rows(51, 2)})])
    pages = client.list_keyset("crm.deal.list", select=["ID"])
    assert portal.requests == []
    next(pages)
    assert len(portal.requests) == 1
    assert len(next(pages).rows) == 2 and len(portal.requests) == 2


def test_select_without_id_is_refused():
    client, _, _ = client_for([])
    with pytest.raises(ValueError, match="ID"):
        next(client.list_keyset("crm.deal.list", select=["TITLE"]))


def test_a_limit_error_mid_batch_keeps_the_rows_and_continues_after_them():
    first = batch_ok({"p0": rows(51, 50), "p1": rows(101, 50)},
                     errors={"p2": {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "x"}})
    client, portal, _ = client_for([ok(rows(1, 50)), first, batch_ok({"p0": rows(151, 5)})])
    pages = list(client.list_keyset("crm.deal.list", select=["ID"]))
    assert [len(p.rows) for p in pages] == [50, 100, 5]
    assert command_filters(portal.body(2))["p0"] == "150"
    assert client.stats.http_503 == 1 and client.stats.retries == 0


def test_a_fatal_error_mid_batch_yields_the_rows_then_raises():
    denied = {"error": "", "error_description": "Access denied."}
    client, portal, _ = client_for([ok(rows(1, 50)), batch_ok({"p0": rows(51, 50)},
                                                             errors={"p1": denied}),
                                    batch_ok({}, errors={"p0": denied})])
    pages = client.list_keyset("crm.deal.list", select=["ID"])
    assert len(next(pages).rows) == 50 and len(next(pages).rows) == 50
    with pytest.raises(FatalCrmError, match="Access denied"):
        next(pages)
    assert len(portal.requests) == 3, "fatal: not retried"


def test_a_429_in_a_batch_with_no_rows_waits_for_the_reset_and_retries_the_same_id():
    blocked = batch_ok({}, errors={"p0": {"error": "OPERATION_TIME_LIMIT",
                                          "error_description": "blocked"}})
    client, portal, clock = client_for([ok(rows(1, 50)), blocked, batch_ok({"p0": rows(51, 3)})])
    pages = list(client.list_keyset("crm.deal.list", select=["ID"]))
    assert sum(len(p.rows) for p in pages) == 53
    assert portal.body(1)["cmd"] == portal.body(2)["cmd"]
    assert clock.now >= RESET, "the method's operating_reset_at from the first page"
    assert client.stats.http_429 == 1 and client.stats.retries == 1


def test_a_method_blocked_mid_batch_is_one_limit_hit_not_one_per_command():
    blocked = {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}
    errors = {f"p{i}": blocked for i in range(1, 50)}  # everything after p0 was refused
    client, _, _ = client_for([ok(rows(1, 50)), batch_ok({"p0": rows(51, 50)}, errors=errors),
                               batch_ok({"p0": rows(101, 1)})])
    pages = list(client.list_keyset("crm.deal.list", select=["ID"]))
    assert sum(len(p.rows) for p in pages) == 101
    assert client.stats.http_429 == 1 and client.stats.limit_hits == 1


def test_ids_going_backwards_are_a_fatal_paging_error():
    client, _, _ = client_for([ok(rows(1, 50)), batch_ok({"p0": rows(10, 50)})])
    with pytest.raises(PagingError, match=r"crm\.deal\.list.*backwards") as info:
        list(client.list_keyset("crm.deal.list", select=["ID"]))
    assert isinstance(info.value, FatalCrmError)


def test_slow_pages_mean_fewer_pages_per_batch():
    slow_page = (200, {"result": rows(1, 50), "time": {**TIME, "processing": 2.0}})
    client, portal, _ = client_for([slow_page, batch_ok({"p0": rows(51, 1)})])
    list(client.list_keyset("crm.deal.list", select=["ID"]))
    # a batch stays within a tenth of the budget (48 s of 480): inside the 60 s timeout
    assert len(portal.body(1)["cmd"]) == 24


@pytest.mark.parametrize(
    ("date_start", "bound"),
    [
        ("2027-01-15T10:00:00+03:00", "2027-01-15T10:00:00+03:00"),
        # DATE_MODIFY has whole seconds: a fractional bound would skip 10:00:00.x changes
        ("2027-01-15T10:00:00.750+03:00", "2027-01-15T10:00:00+03:00"),
        ("2027-01-15T07:00:00Z", "2027-01-15T07:00:00+00:00"),
        ("2027-01-15T10:00:00", None),  # no offset: ambiguous on the server, not a bound
        ("soon", None),
    ],
)
def test_the_server_clock_of_a_page_is_a_whole_second_with_an_offset(date_start, bound):
    client, _, _ = client_for([(200, {"result": rows(1, 2),
                                      "time": {**TIME, "date_start": date_start}})])
    (page,) = client.list_keyset("crm.deal.list", select=["ID"])
    assert page.server_time == bound


# -- records by ID ------------------------------------------------------------------------------


def id_filters(body: dict) -> dict[str, list[int]]:
    """Command key -> the IDs of its @ID filter."""
    return {key: [int(v) for k, v in parse_qsl(cmd.partition("?")[2])
                  if k.startswith("filter[@ID]")]
            for key, cmd in body["cmd"].items()}


def test_list_by_ids_sends_fifty_ids_a_command_and_ten_commands_a_batch():
    wanted = list(range(1, 1_202))  # 1,201 IDs: 25 commands of 50, the last of 1
    first = batch_ok({f"i{k}": rows(1 + 50 * k, 50) for k in range(10)})
    second = batch_ok({f"i{k}": rows(501 + 50 * k, 50) for k in range(10)})
    third = batch_ok({"i0": rows(1_001, 50), "i1": rows(1_051, 50), "i2": rows(1_101, 50),
                      "i3": rows(1_151, 50), "i4": rows(1_201, 1)})
    client, portal, _ = client_for([first, second, third])
    pages = list(client.list_by_ids("crm.deal.list", select=["ID", "TITLE"],
                                    ids=wanted[::-1]))
    assert [len(p.rows) for p in pages] == [500, 500, 201]
    sent = [id_filters(portal.body(i)) for i in range(3)]
    assert [len(s) for s in sent] == [10, 10, 5]
    assert [i for s in sent for ids in s.values() for i in ids] == wanted
    assert "start=-1" in portal.body(0)["cmd"]["i0"]


def test_list_by_ids_retries_the_whole_batch_on_a_command_error():
    limit = {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
    client, portal, _ = client_for([batch_ok({"i0": rows(1, 2)}, errors={"i1": limit}),
                                    batch_ok({"i0": rows(1, 2), "i1": rows(208, 1)})])
    ids = [1, 2, *range(60, 100), *range(200, 210)]  # 52 IDs: two commands
    (page,) = client.list_by_ids("crm.deal.list", select=["ID"], ids=ids)
    assert [r["ID"] for r in page.rows] == ["1", "2", "208"], "gone IDs are simply absent"
    assert portal.body(0)["cmd"] == portal.body(1)["cmd"] and client.stats.retries == 1


def test_list_by_ids_raises_a_fatal_command_error():
    denied = {"error": "", "error_description": "Access denied."}
    client, portal, _ = client_for([batch_ok({}, errors={"i0": denied})])
    with pytest.raises(FatalCrmError, match="Access denied"):
        list(client.list_by_ids("crm.deal.list", select=["ID"], ids=[5]))
    assert len(portal.requests) == 1


# -- retries and limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "counter"),
    [
        (LIMIT_503, "http_503"),
        ((500, {"error": "INTERNAL_SERVER_ERROR", "error_description": ""}), "http_5xx"),
        ((502, "<html><body>Bad Gateway</body></html>"), "http_5xx"),
        ((503, "<html>Service Unavailable</html>"), "http_503"),
        (httpx.ConnectError("refused"), "network_errors"),
        (httpx.ReadTimeout("slow"), "network_errors"),
        (httpx.RemoteProtocolError("dropped"), "network_errors"),
    ],
)
def test_transient_failures_are_retried_with_a_wait(failure, counter):
    client, portal, clock = client_for([failure, ok(True)])
    assert client.call("profile").result is True
    assert len(portal.requests) == 2 and client.stats.retries == 1
    assert getattr(client.stats, counter) == 1
    assert len(clock.slept) == 1 and 0.25 <= clock.slept[0] <= 0.5, "first backoff step"
    assert client.stats.waited_s == pytest.approx(sum(clock.slept))


def test_retries_give_up_after_max_attempts():
    client, portal, _ = client_for([LIMIT_503] * 3, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(RetryableCrmError, match="QUERY_LIMIT_EXCEEDED"):
        client.call("crm.deal.list")
    assert len(portal.requests) == 3 and client.stats.retries == 2 and client.stats.http_503 == 3


def test_429_waits_until_operating_reset_at():
    client, _, clock = client_for([ok([]), BLOCKED_429, ok([])])
    client.call("crm.deal.list")
    client.call("crm.deal.list")
    assert clock.now == pytest.approx(RESET), "one wait, exactly to the reset"
    assert clock.slept == [pytest.approx(RESET - NOW)]
    assert client.stats.http_429 == 1 and client.stats.retries == 1


def test_429_after_the_reset_has_passed_waits_for_the_next_bucket_edge():
    client, _, clock = client_for([ok([]), BLOCKED_429, ok([])])
    client.call("crm.deal.list")
    clock.now = RESET + 10
    client.call("crm.deal.list")
    assert clock.now == pytest.approx(RESET + 60), "bucket edges learned from the reset time"


def test_429_blocks_only_its_method():
    client, _, clock = client_for([ok([]), BLOCKED_429, ok(True), ok([])])
    client.call("crm.deal.list")
    with pytest.raises(RetryableCrmError):
        # no retry budget left: the block stays registered with the pacer
        client.retry = RetryPolicy(max_attempts=1)
        client.call("crm.deal.list")
    assert client.call("profile").result is True and clock.now == NOW, "profile did not wait"
    client.call("crm.deal.list")
    assert clock.now == pytest.approx(RESET)


def test_fatal_errors_are_not_retried():
    for failure, kind in [((401, {"error": "NO_AUTH_FOUND", "error_description": "Wrong"}),
                           AuthError),
                          ((403, {"error": "insufficient_scope"}), FatalCrmError),
                          ((400, {"error": "", "error_description": "Not found"}), FatalCrmError),
                          ((401, "<html>Unauthorized</html>"), AuthError)]:
        client, portal, clock = client_for([failure])
        with pytest.raises(kind):
            client.call("crm.deal.list")
        assert len(portal.requests) == 1 and clock.slept == []


def test_redirect_is_reported_not_followed():
    seen: list[httpx.Request] = []

    def moved(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={
            "location": f"https://new.bitrix24.ru/rest/1/{SECRET}/crm.deal.list"})

    client, _, _ = client_for([], http=make_http_client(transport=httpx.MockTransport(moved)))
    with pytest.raises(FatalCrmError, match="renamed") as info:
        client.call("crm.deal.list")
    assert "new.bitrix24.ru" in str(info.value) and SECRET not in str(info.value)
    assert len(seen) == 1, "a POST is not silently re-sent as a GET elsewhere"


# -- secrets ------------------------------------------------------------------------------------


def test_the_secret_never_reaches_exceptions_repr_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    leaky = (500, {"error": "INTERNAL_SERVER_ERROR",
                   "error_description": f"failed at https://p.bitrix24.ru/rest/1/{SECRET}/x"})
    responses = [httpx.ConnectError(f"cannot reach {URL}"), leaky, (502, f"<a href='{URL}'>"),
                 ok(True), ok(rows(1, 50)), batch_ok({"p0": rows(51, 2)}),
                 (401, {"error": "NO_AUTH_FOUND", "error_description": URL})]
    portal = Portal(responses)
    http = make_http_client(transport=httpx.MockTransport(portal))  # quiets httpx's loggers
    client, _, _ = client_for([], http=http)
    client.call("profile")
    list(client.list_keyset("crm.deal.list", select=["ID"]))
    with pytest.raises(AuthError) as info:
        client.call("crm.deal.list")
    assert len(portal.requests) == 7
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in repr(client) and SECRET not in str(vars(client.stats))
    assert "retry" in caplog.text, "the retries were logged"
    assert SECRET not in caplog.text


def test_the_log_test_would_catch_httpx_logging_the_url(caplog):
    # Control for the test above: unquieted, httpx logs the full URL with the secret.
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.DEBUG)
    try:
        client, _, _ = client_for([ok(True)])
        client.call("profile")
        assert SECRET in caplog.text
    finally:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    assert client.redact(caplog.text).count(SECRET) == 0
