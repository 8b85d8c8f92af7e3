"""Emulator limits, batch accounting, transport rules and generated data (facts sheet §1–§5).

Time runs on a fake clock: the emulator sleeps its server costs on it, so budgets and
timeouts are exact and nothing really waits.
"""

from datetime import datetime
from typing import Any

import httpx
import pytest
from fakes import FakeClock

from adapters.bitrix24.emulator import (
    BitrixEmulator,
    DataConfig,
    EmulatorLimits,
    FaultConfig,
    Portal,
    Strictness,
    serve,
)
from adapters.bitrix24.emulator.wire import is_loopback

AS_OF = datetime.fromisoformat("2025-06-01T00:00:00+03:00")
OFF = EmulatorLimits(enabled=False)
PAGE = "crm.deal.list?select[0]=ID&start=-1"


@pytest.fixture(scope="module")
def portal() -> Portal:
    return Portal.generate(DataConfig(seed=4, contacts=300, deals=1_000, as_of=AS_OF))


def emulate(portal: Portal, clock: FakeClock | None = None, **kwargs: Any):
    clock = clock or FakeClock()
    kwargs.setdefault("limits", OFF)
    emulator = BitrixEmulator(portal, secret="sekret", clock=clock, sleep=clock.sleep, **kwargs)
    http = httpx.Client(transport=emulator.transport())
    return emulator, http, emulator.webhook_url("https://portal.test")


def test_the_bucket_counts_requests_with_a_wrong_secret_too(portal):
    limits = EmulatorLimits(bucket_size=2, drain_per_s=0.5)
    _, http, base = emulate(portal, limits=limits)
    wrong = base.replace("sekret", "wrong")
    assert [http.post(wrong + "profile").status_code for _ in range(2)] == [401, 401]
    assert http.post(base + "profile").status_code == 503


# -- the per-method time budget -----------------------------------------------------------


def test_batch_charged_as_one_method_is_blocked_as_one(portal):
    limits = EmulatorLimits(operating_budget_s=1.0, page_cost_s=0.6, drain_per_s=100,
                            batch_accounting="batch")
    emulator, http, base = emulate(portal, limits=limits)
    answers = [http.post(base + "batch", json={"cmd": {"a": PAGE, "b": PAGE}}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert answers[1].json() == {"error": "OPERATION_TIME_LIMIT",
                                 "error_description": "Method is blocked due to operation "
                                                      "time limit."}
    first = answers[0].json()
    assert first["time"]["operating"] == pytest.approx(1.2)
    # every sub-result carries the accumulated figure of what was charged: the batch
    assert {t["operating"] for t in first["result"]["result_time"].values()} == {1.2}
    assert http.post(base + "crm.deal.list", json={"start": -1}).status_code == 200
    assert emulator.stats.http_429 == 1


def test_nested_accounting_blocks_the_nested_method_inside_the_batch(portal):
    limits = EmulatorLimits(operating_budget_s=1.0, page_cost_s=0.6, drain_per_s=100)
    emulator, http, base = emulate(portal, limits=limits)
    data = http.post(base + "batch", json={"cmd": {"a": PAGE, "b": PAGE, "c": PAGE,
                                                   "p": "profile"}}).json()["result"]
    assert list(data["result"]) == ["a", "b", "p"], "b crosses the budget and completes"
    assert data["result_error"]["c"]["error"] == "OPERATION_TIME_LIMIT"
    assert emulator.stats.batch_429 == 1


def test_one_budget_per_method_for_the_whole_portal_by_default(portal):
    limits = EmulatorLimits(operating_budget_s=1.0, page_cost_s=1.2, drain_per_s=100)
    for scope, second_status in (("portal", 429), ("credential", 200)):
        clock = FakeClock()
        emulator, http, base = emulate(portal, clock, limits=EmulatorLimits(
            **{**vars(limits), "operating_scope": scope}))
        emulator.add_token("app-token", expires_at=clock.now + 3600)
        assert http.post(base + "crm.deal.list", json={"start": -1}).status_code == 200
        other = http.post("https://portal.test/rest/crm.deal.list",
                          json={"auth": "app-token", "start": -1})
        assert other.status_code == second_status, scope


def test_a_call_past_the_hard_timeout_is_cut_off_but_still_charged(portal):
    limits = EmulatorLimits(page_cost_s=70.0, operating_budget_s=60.0, drain_per_s=100)
    clock = FakeClock()
    _, http, base = emulate(portal, clock, limits=limits)
    cut = http.post(base + "crm.deal.list", json={"start": -1})
    assert cut.status_code == 504 and cut.headers["content-type"].startswith("text/html")
    assert clock.slept == [60.0], "the client waits the hard timeout, not the full cost"
    blocked = http.post(base + "crm.deal.list", json={"start": -1})
    assert blocked.status_code == 429, "the 70 s the server spent count against the budget"


def test_a_batch_past_the_hard_timeout_is_cut_off(portal):
    limits = EmulatorLimits(page_cost_s=25.0, drain_per_s=100)
    _, http, base = emulate(portal, limits=limits)
    cut = http.post(base + "batch", json={"cmd": {"a": PAGE, "b": PAGE, "c": PAGE}})
    assert cut.status_code == 504


def test_latency_and_seeded_jitter_apply_without_limits(portal):
    def sleeps(seed: int) -> list[float]:
        clock = FakeClock()
        _, http, base = emulate(portal, clock, limits=EmulatorLimits(enabled=False,
                                                                      latency_s=0.2),
                                faults=FaultConfig(seed=seed, jitter_s=0.1))
        for _ in range(5):
            http.post(base + "profile")
        return clock.slept

    first = sleeps(1)
    assert first == sleeps(1) and first != sleeps(2)
    assert len(first) == 5 and all(0.2 <= s < 0.3 for s in first)


# -- batch --------------------------------------------------------------------------------


def test_more_than_fifty_commands_can_fail_per_command_instead(portal):
    _, http, base = emulate(portal, strictness=Strictness(batch_overflow="per_command"))
    cmd = {f"c{i}": "scope" for i in range(52)}
    data = http.post(base + "batch", json={"cmd": cmd}).json()["result"]
    assert len(data["result"]) == 50
    assert {k: v["error"] for k, v in data["result_error"].items()} == {
        "c50": "ERROR_BATCH_LENGTH_EXCEEDED", "c51": "ERROR_BATCH_LENGTH_EXCEEDED"}
    halted = http.post(base + "batch", json={"cmd": cmd, "halt": 1}).json()["result"]
    assert list(halted["result_error"]) == ["c50"]


def test_a_true_result_substitutes_as_php_one(portal):
    _, http, base = emulate(portal)
    cmd = {"u": "crm.deal.update?id=5&fields[OPENED]=Y",
           "l": "crm.deal.list?filter[ID]=$result[u]&select[]=ID"}
    data = http.post(base + "batch", json={"cmd": cmd}).json()["result"]
    assert data["result"]["l"] == [{"ID": "1"}]


# -- transport ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("10.0.0.5", False), ("portal.test", False), ("", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_plain_http_is_refused_except_on_loopback(portal):
    _, http, _ = emulate(portal)
    for host, status in (("127.0.0.1", 200), ("[::1]", 200), ("portal.test", 400)):
        answer = http.post(f"http://{host}/rest/1/sekret/profile")
        assert answer.status_code == status, host
    emulator, _, _ = emulate(portal)
    refused = emulator.dispatch("http", "/rest/1/sekret/profile", "", "", b"", host="10.1.2.3")
    assert refused.status == 400 and b"INVALID_REQUEST" in refused.body
    with serve(emulator) as server, httpx.Client() as plain:
        assert plain.post(server.webhook_url + "profile").status_code == 200


def test_multipart_values_keep_their_exact_bytes(portal):
    _, http, base = emulate(portal)
    title = portal.records("deal")[7]["TITLE"]
    for value, hits in ((title, 1), (title + " ", 0), (" " + title, 0)):
        answer = http.post(base + "crm.deal.list", data={"filter[=%TITLE]": value,
                                                         "select[]": "ID"},
                           files={"unused": ("a.txt", b"x")})
        assert answer.json()["total"] == hits, repr(value)


def test_a_body_of_another_content_type_is_not_read(portal):
    _, http, base = emulate(portal)
    answer = http.post(base + "crm.deal.list", content=b"filter[ID]=3&select[]=ID",
                       headers={"content-type": "text/plain"})
    assert answer.json()["total"] == len(portal.records("deal"))
    form = http.post(base + "crm.deal.list", content=b"filter[ID]=3&select[]=ID",
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.json()["result"] == [{"ID": "3"}]


# -- generated data -------------------------------------------------------------------------


def test_repeat_deals_are_flagged_per_client_contact_or_company(portal):
    seen: set[tuple[str, str]] = set()
    deals = portal.records("deal")
    for deal_id in sorted(deals):
        deal = deals[deal_id]
        client = (("contact", deal["CONTACT_ID"]) if deal["CONTACT_ID"]
                  else ("company", deal["COMPANY_ID"]))
        assert deal["IS_RETURN_CUSTOMER"] == ("Y" if client in seen else "N"), deal_id
        seen.add(client)
    assert any(d["CONTACT_ID"] is None for d in deals.values())


def test_duplicate_contacts_share_the_name_of_the_original():
    portal = Portal.generate(DataConfig(seed=4, contacts=600, deals=100, as_of=AS_OF,
                                        duplicate_rate=0.05))
    by_phone: dict[str, list[dict[str, Any]]] = {}
    for contact in portal.records("contact").values():
        if contact.get("PHONE"):
            value = contact["PHONE"][0]["VALUE"]
            digits = "".join(ch for ch in value if ch.isdigit())[-10:]
            by_phone.setdefault(digits, []).append(contact)
    shared = [group for group in by_phone.values() if len(group) > 1]
    assert len(shared) > 10, "duplicates share a phone, written differently"
    for group in shared:
        assert len({(c["NAME"], c["SECOND_NAME"], c["LAST_NAME"]) for c in group}) == 1
