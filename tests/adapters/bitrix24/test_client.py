import json

import httpx
import pytest

from adapters.bitrix24.client import Bitrix24Client
from connector.errors import AuthError, FatalCrmError
from connector.http import Pacer, PacerLimits, RetryPolicy

URL = "https://p.bitrix24.ru/rest/1/hooksecret42/"
TIME = {"start": 1.0, "finish": 1.1, "duration": 0.1, "processing": 0.05,
        "date_start": "2024-09-02T17:48:35+03:00", "date_finish": "2024-09-02T17:48:35+03:00",
        "operating": 0.05, "operating_reset_at": 1_800_000_600}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def client_for(responses, clock=None):
    clock = clock or Clock()
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        status, body = item
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers={"content-type": "text/html"})
        return httpx.Response(status, json=body)

    client = Bitrix24Client(
        URL, http=httpx.Client(transport=httpx.MockTransport(handler)),
        pacer=Pacer(PacerLimits(), clock=clock, wall_clock=clock, sleep=clock.sleep),
        retry=RetryPolicy(max_attempts=5), sleep=clock.sleep, wall_clock=clock)
    return client, seen, clock


def rows(start, n):
    return [{"ID": str(i)} for i in range(start, start + n)]


def test_call_posts_json_and_parses_the_envelope():
    client, seen, _ = client_for([(200, {"result": rows(1, 2), "total": 2, "time": TIME})])
    response = client.call("crm.deal.list", {"select": ["ID"]})
    assert response.result == rows(1, 2) and response.total == 2 and response.next is None
    assert seen[0].url == URL + "crm.deal.list"
    assert json.loads(seen[0].content) == {"select": ["ID"]}
    assert client.stats.requests == 1


def test_batch_normalises_php_empty_maps_and_collapsed_lists():
    body = {"result": {"result": [rows(1, 1), rows(2, 1)],
                       "result_error": [], "result_total": [], "result_next": [],
                       "result_time": []}, "time": TIME}
    client, _, _ = client_for([(200, body)])
    response = client.batch({"0": "crm.deal.list?start=-1", "1": "crm.deal.list?start=-1"})
    assert response.result == {"0": rows(1, 1), "1": rows(2, 1)} and response.errors == {}


def test_list_keyset_single_call_then_chained_batch_until_short_page():
    batch = {"result": {"result": {"p0": rows(51, 50), "p1": rows(101, 7), "p2": rows(1, 50)},
                        "result_error": [], "result_total": {"p0": 0, "p1": 0, "p2": 0},
                        "result_next": [], "result_time": {}}, "time": TIME}
    client, seen, _ = client_for([(200, {"result": rows(1, 50), "total": 0, "time": TIME}),
                                  (200, batch)])
    pages = list(client.list_keyset("crm.deal.list", select=["ID"], filter={}))
    assert [len(p.rows) for p in pages] == [50, 57]
    assert pages[0].server_time == TIME["date_start"]
    ids = [int(r["ID"]) for p in pages for r in p.rows]
    assert ids == list(range(1, 108)), "rows after the short page were discarded"
    body = json.loads(seen[1].content)
    assert len(body["cmd"]) == 50 and "$result[p0][49][ID]" in body["cmd"]["p1"]


@pytest.mark.parametrize(
    "failure",
    [
        (503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
        (500, {"error": "INTERNAL_SERVER_ERROR", "error_description": ""}),
        (502, "<html>Bad Gateway</html>"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
    ],
)
def test_transient_failures_are_retried(failure):
    client, _seen, clock = client_for([failure, (200, {"result": True, "time": TIME})])
    assert client.call("profile").result is True
    assert client.stats.retries == 1 and len(clock.slept) >= 1


def test_429_waits_until_operating_reset_at():
    blocked = (429, {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"})
    ok = (200, {"result": [], "total": 0, "time": TIME})
    client, _, clock = client_for([ok, blocked, ok])
    client.call("crm.deal.list")
    started = clock.now
    client.call("crm.deal.list")
    assert clock.now >= TIME["operating_reset_at"] - 1
    assert clock.now - started == pytest.approx(TIME["operating_reset_at"] - started, abs=2)
    assert client.stats.http_429 == 1


def test_fatal_errors_are_not_retried_and_carry_no_secret():
    client, seen, _ = client_for([(401, {"error": "NO_AUTH_FOUND",
                                         "error_description": "Wrong authorization data"})])
    with pytest.raises(AuthError) as info:
        client.call("crm.deal.list")
    assert len(seen) == 1
    assert "hooksecret42" not in str(info.value) and "hooksecret42" not in repr(client)


def test_redirect_is_reported_not_followed():
    client, seen, _ = client_for([(302, {"moved": True})])
    with pytest.raises(FatalCrmError, match="renamed"):
        client.call("crm.deal.list")
    assert len(seen) == 1


def test_batch_limit_error_with_no_rows_is_retried_from_the_same_id():
    error = {"result": {"result": [], "result_error": {"p0": {"error": "OPERATION_TIME_LIMIT",
                                                               "error_description": "x"}},
                        "result_total": [], "result_next": [], "result_time": []},
             "time": TIME}
    ok = {"result": {"result": {"p0": rows(51, 3)}, "result_error": [], "result_total": [],
                     "result_next": [], "result_time": []}, "time": TIME}
    client, seen, _ = client_for([(200, {"result": rows(1, 50), "time": TIME}), (200, error),
                                  (200, ok)])
    pages = list(client.list_keyset("crm.deal.list", select=["ID"]))
    assert sum(len(p.rows) for p in pages) == 53
    assert json.loads(seen[1].content)["cmd"] == json.loads(seen[2].content)["cmd"]
    assert client.stats.http_429 == 1


def test_batch_rejects_more_than_50_commands():
    client, _, _ = client_for([])
    with pytest.raises(ValueError):
        client.batch({f"c{i}": "profile" for i in range(51)})
