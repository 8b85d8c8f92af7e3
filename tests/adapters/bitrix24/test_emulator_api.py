import json
from datetime import datetime

import httpx
import pytest
from fakes import FakeClock

from adapters.bitrix24.emulator import (
    BitrixEmulator,
    DataConfig,
    EmulatorLimits,
    FaultConfig,
    Portal,
    serve,
)

AS_OF = datetime.fromisoformat("2025-06-01T00:00:00+03:00")
OFF = EmulatorLimits(enabled=False)


@pytest.fixture(scope="module")
def portal() -> Portal:
    return Portal.generate(DataConfig(seed=2, contacts=400, deals=1_500, as_of=AS_OF))


def make(portal, **kwargs):
    kwargs.setdefault("limits", OFF)
    emulator = BitrixEmulator(portal, secret="sekret", **kwargs)
    http = httpx.Client(transport=emulator.transport())
    base = emulator.webhook_url("https://portal.test")
    return emulator, http, base


def post(http, base, method, body=None):
    return http.post(base + method, json=body or {})


def test_envelope_and_wire_types(portal):
    _, http, base = make(portal)
    data = post(http, base, "crm.deal.list", {"select": ["ID", "OPPORTUNITY", "CLOSEDATE"],
                                              "start": 0}).json()
    assert data["total"] == 1_500 and data["next"] == 50 and len(data["result"]) == 50
    row = data["result"][0]
    assert set(row) == {"ID", "OPPORTUNITY", "CLOSEDATE"}
    assert isinstance(row["ID"], str) and row["OPPORTUNITY"].endswith((".00", "0"))
    assert set(data["time"]) >= {"start", "finish", "duration", "processing", "date_start",
                                 "date_finish", "operating", "operating_reset_at"}
    datetime.fromisoformat(data["time"]["date_start"])


def test_select_semantics_multifields_and_user_fields(portal):
    _, http, base = make(portal)
    star = post(http, base, "crm.contact.list", {"select": ["*"], "start": -1}).json()["result"]
    assert all("PHONE" not in r and "UF_CRM_NPS" not in r for r in star)
    named = post(http, base, "crm.contact.list",
                 {"select": ["ID", "PHONE", "UF_*"], "start": -1}).json()["result"]
    stored = portal.records("contact")
    # Empty user fields are omitted by default (UNVERIFIED in the sheet: the strict reading).
    assert all(("UF_CRM_NPS" in r) == (stored[int(r["ID"])]["UF_CRM_NPS"] != "") for r in named)
    assert any("UF_CRM_NPS" in r for r in named) and any("UF_CRM_NPS" not in r for r in named)
    assert all("UF_CRM_REVIEW" in r for r in named)
    without = [r for r in named if not stored[int(r["ID"])].get("PHONE")]
    assert without, "the sample must hold contacts without a phone"
    assert all("PHONE" not in r for r in without), "an empty multifield key is omitted"
    assert any("PHONE" in r for r in named), "a named multifield is returned when present"


@pytest.mark.parametrize(
    ("filter_", "check"),
    [
        ({">ID": 1490}, lambda r: int(r["ID"]) > 1490),
        ({"<=ID": 3}, lambda r: int(r["ID"]) <= 3),
        ({"@ID": [5, 7]}, lambda r: r["ID"] in ("5", "7")),
        ({"!@ID": list(range(1, 1490))}, lambda r: int(r["ID"]) >= 1490),
        ({"STAGE_SEMANTIC_ID": "S"}, lambda r: r["STAGE_SEMANTIC_ID"] == "S"),
        ({"!STAGE_SEMANTIC_ID": "S"}, lambda r: r["STAGE_SEMANTIC_ID"] != "S"),
        ({">=DATE_MODIFY": "2025-05-01"}, lambda r: r["DATE_MODIFY"] >= "2025-05-01"),
        ({"%TITLE": "№14"}, lambda r: "№14" in r["TITLE"]),
        ({"=%TITLE": "Заказ №1%"}, lambda r: r["TITLE"].startswith("Заказ №1")),
    ],
)
def test_filter_operators(portal, filter_, check):
    _, http, base = make(portal)
    result = post(http, base, "crm.deal.list", {"filter": filter_, "select": ["*"],
                                                "order": {"ID": "ASC"}, "start": 0}).json()
    expected = [r for r in portal.records("deal").values() if check(r)]
    assert result["total"] == len(expected) and result["total"] > 0
    assert all(check(r) for r in result["result"])


def test_strict_filters_and_unsupported_fields(portal):
    _, http, base = make(portal)
    bad = post(http, base, "crm.deal.list", {"filter": {"NO_SUCH_FIELD": 1}})
    assert bad.status_code == 400 and bad.json()["error"] == ""
    ids = post(http, base, "crm.deal.list", {"select": ["CONTACT_IDS"]})
    assert ids.status_code == 400
    like = post(http, base, "crm.deal.list", {"filter": {"%STAGE_ID": "WON"}})
    assert like.status_code == 400


def test_start_minus_one_has_no_next_and_zero_total(portal):
    _, http, base = make(portal)
    data = post(http, base, "crm.deal.list", {"start": -1, "select": ["ID"]}).json()
    assert data["total"] == 0 and "next" not in data and len(data["result"]) == 50


def test_top_level_keys_are_case_insensitive_and_methods_too(portal):
    _, http, base = make(portal)
    data = http.post(base + "crm.deal.List.json", json={"SELECT": ["ID"], "FILTER": {"ID": 3}})
    assert data.json()["result"] == [{"ID": "3"}]
    form = http.post(base + "crm.deal.list", data={"filter[>ID]": "1497", "select[]": "ID"})
    assert [r["ID"] for r in form.json()["result"]] == ["1498", "1499", "1500"]
    get = http.get(base + "crm.deal.list?filter%5BID%5D=4&select%5B0%5D=ID")
    assert get.json()["result"] == [{"ID": "4"}]


def test_batch_substitution_halt_and_php_quirks(portal):
    _, http, base = make(portal)
    cmd = {"a": "crm.deal.list?select[0]=ID&order[ID]=ASC&start=-1",
           "b": "crm.deal.list?select[0]=ID&order[ID]=ASC&filter[>ID]=$result[a][49][ID]&start=-1",
           "c": "crm.deal.get?id=999999"}
    data = post(http, base, "batch", {"cmd": cmd, "halt": 0}).json()["result"]
    assert data["result"]["b"][0]["ID"] == "51"
    assert data["result_error"]["c"]["error"] == ""
    assert data["result_next"] == []  # PHP: an empty map is []
    numeric = post(http, base, "batch", {"cmd": ["profile", "scope"]}).json()["result"]
    assert isinstance(numeric["result"], list), "keys 0..n-1 collapse into a list"
    halted = post(http, base, "batch", {"cmd": {"x": "crm.deal.get?id=0", "y": "profile"},
                                         "halt": 1}).json()["result"]
    assert "y" not in halted["result"] and "x" in halted["result_error"]


def test_missing_result_path_substitutes_empty_and_restarts(portal):
    _, http, base = make(portal)
    cmd = {"a": "crm.deal.list?select[0]=ID&filter[>ID]=1490&start=-1",
           "b": "crm.deal.list?select[0]=ID&filter[>ID]=$result[a][49][ID]&start=-1"}
    data = post(http, base, "batch", {"cmd": cmd}).json()["result"]
    assert data["result"]["b"][0]["ID"] == "1", "a careless client would read duplicates"


def test_batch_limits(portal):
    _, http, base = make(portal)
    too_many = post(http, base, "batch", {"cmd": {f"c{i}": "profile" for i in range(51)}})
    assert too_many.status_code == 400
    assert too_many.json()["error"] == "ERROR_BATCH_LENGTH_EXCEEDED"
    nested = post(http, base, "batch", {"cmd": {"n": "batch?cmd[x]=profile"}}).json()
    assert nested["result"]["result_error"]["n"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"


def test_auth_scope_https_and_app_only_errors(portal):
    emulator, http, base = make(portal, scopes=("user",))
    wrong = http.post(base.replace("sekret", "nope") + "profile")
    assert wrong.status_code == 401 and wrong.json()["error"] == "NO_AUTH_FOUND"
    assert post(http, base, "crm.deal.list").status_code == 403
    assert post(http, base, "no.such.method").json()["error"] == "ERROR_METHOD_NOT_FOUND"
    plain = http.post(base.replace("https://", "http://") + "profile")
    assert plain.status_code == 400 and plain.json()["error"] == "INVALID_REQUEST"
    app_only = post(http, base, "event.bind")
    assert app_only.status_code == 400 and app_only.json()["error"] == "ACCESS_DENIED"
    emulator.add_token("tok", expires_at=0)
    expired = http.post("https://portal.test/rest/profile", json={"auth": "tok"})
    assert expired.status_code == 401 and expired.json()["error"] == "expired_token"


def test_leaky_bucket_answers_503_then_recovers(portal):
    clock = FakeClock()
    limits = EmulatorLimits(bucket_size=5, drain_per_s=1.0, call_cost_s=0.0)
    _, http, base = make(portal, limits=limits, clock=clock, sleep=clock.sleep)
    statuses = [post(http, base, "profile").status_code for _ in range(7)]
    assert statuses == [200] * 5 + [503, 503]
    body = post(http, base, "profile").json()
    assert body == {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
    clock.now += 3
    assert post(http, base, "profile").status_code == 200


def test_operating_budget_blocks_one_method_until_reset(portal):
    clock = FakeClock()
    limits = EmulatorLimits(operating_budget_s=1.0, page_cost_s=0.6, drain_per_s=100)
    emulator, http, base = make(portal, limits=limits, clock=clock, sleep=clock.sleep)
    first = post(http, base, "crm.deal.list", {"start": -1}).json()
    second = post(http, base, "crm.deal.list", {"start": -1})  # crosses 1.0: completes
    assert second.status_code == 200
    blocked = post(http, base, "crm.deal.list", {"start": -1})
    assert blocked.status_code == 429 and blocked.json()["error"] == "OPERATION_TIME_LIMIT"
    assert post(http, base, "crm.contact.list", {"start": -1}).status_code == 200
    clock.now = first["time"]["operating_reset_at"] + 61
    assert post(http, base, "crm.deal.list", {"start": -1}).status_code == 200
    assert emulator.stats.http_429 == 1


def test_counting_costs_grow_with_table_size():
    small = Portal.generate(DataConfig(seed=1, contacts=50, deals=200, as_of=AS_OF))
    big = Portal.generate(DataConfig(seed=1, contacts=500, deals=5_000, as_of=AS_OF))
    costs = []
    for p in (small, big):
        _, http, base = make(p, limits=EmulatorLimits(time_scale=1e-3))
        counted = post(http, base, "crm.deal.list", {"start": 0}).json()["time"]["processing"]
        keyset = post(http, base, "crm.deal.list", {"start": -1}).json()["time"]["processing"]
        costs.append((counted, keyset))
    assert costs[1][0] > costs[0][0] > costs[0][1]
    assert costs[1][1] == pytest.approx(costs[0][1])


def test_faults_are_deterministic_and_change_nothing(portal):
    def run():
        emulator, http, base = make(portal, faults=FaultConfig(rate=0.5, seed=9,
                                                                kinds=("503", "500", "html")))
        return [post(http, base, "profile").status_code for _ in range(20)], emulator

    first, emulator = run()
    second, _ = run()
    assert first == second and {503, 500, 502} & set(first)
    assert emulator.stats.faults_injected == sum(s != 200 for s in first)


def test_dropped_connections_and_timeouts_raise_in_process(portal):
    for kind, exc in (("drop", httpx.RemoteProtocolError), ("timeout", httpx.ReadTimeout)):
        _, http, base = make(portal, faults=FaultConfig(rate=1.0, kinds=(kind,)))
        with pytest.raises(exc):
            post(http, base, "profile")


def test_generator_is_deterministic_and_realistic():
    a = Portal.generate(DataConfig(seed=5, contacts=1_000, deals=5_000, as_of=AS_OF,
                                   dirty_rate=0.02))
    b = Portal.generate(DataConfig(seed=5, contacts=1_000, deals=5_000, as_of=AS_OF,
                                   dirty_rate=0.02))
    assert a.records("deal") == b.records("deal") and a.records("contact") == b.records("contact")
    deals = list(a.records("deal").values())
    closed = [d for d in deals if d["STAGE_SEMANTIC_ID"] in ("S", "F")]
    won_share = sum(d["STAGE_SEMANTIC_ID"] == "S" for d in closed) / len(closed)
    assert 0.6 < won_share < 0.85
    amounts = sorted(float(d["OPPORTUNITY"]) for d in deals if d["OPPORTUNITY"][0].isdigit()
                     and "," not in d["OPPORTUNITY"])
    assert 2_500 < amounts[len(amounts) // 2] < 9_000
    per_contact: dict[str, int] = {}
    for d in deals:
        per_contact[d["CONTACT_ID"]] = per_contact.get(d["CONTACT_ID"], 0) + 1
    assert sum(n >= 3 for n in per_contact.values()) > 50, "repeat buyers exist"
    dirty = sum(d["OPPORTUNITY"] == "12 000,50 руб" or d["DATE_CREATE"] == ""
                or d["STAGE_SEMANTIC_ID"] not in "PSF" for d in deals)
    assert 50 < dirty < 200
    phones = [c["PHONE"][0]["VALUE"] for c in a.records("contact").values() if c.get("PHONE")]
    assert any(p.startswith("8 (") for p in phones), "duplicates written differently"
    assert all(d["DATE_CREATE"] <= d["MOVED_TIME"] <= d["DATE_MODIFY"]
               for d in deals if d["DATE_CREATE"])


def test_loopback_server_answers_real_http(portal):
    emulator = BitrixEmulator(portal, secret="sekret", limits=OFF)
    with serve(emulator, port=0) as server, httpx.Client() as http:
        response = http.post(server.webhook_url + "crm.deal.get", json={"id": 1})
    assert response.status_code == 200
    assert json.loads(response.content)["result"]["ID"] == "1"
