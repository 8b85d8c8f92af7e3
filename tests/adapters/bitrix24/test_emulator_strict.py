"""The emulator refuses what a strict Bitrix24 would refuse (facts sheet §2–§3, §6, §8).

Lists, filters, select, order, start, top-level parameter case, field descriptions and
updates. Each test names the behaviour of the real API it pins down.
"""

from datetime import datetime

import httpx
import pytest

from adapters.bitrix24.emulator import (
    BitrixEmulator,
    DataConfig,
    EmulatorLimits,
    Portal,
    Strictness,
)

AS_OF = datetime.fromisoformat("2025-06-01T00:00:00+03:00")
OFF = EmulatorLimits(enabled=False)


@pytest.fixture(scope="module")
def portal() -> Portal:
    return Portal.generate(DataConfig(seed=3, contacts=300, deals=1_200, as_of=AS_OF))


def fresh() -> Portal:
    return Portal.generate(DataConfig(seed=8, contacts=60, deals=200, as_of=AS_OF))


def client(portal: Portal, **kwargs):
    kwargs.setdefault("limits", OFF)
    emulator = BitrixEmulator(portal, secret="sekret", **kwargs)
    http = httpx.Client(transport=emulator.transport())
    base = emulator.webhook_url("https://portal.test")
    return lambda method, body=None: http.post(base + method, json=body or {})


def refused(response: httpx.Response) -> str:
    """The description of a legacy business error (HTTP 400, empty code)."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "" and set(body) == {"error", "error_description"}
    return str(body["error_description"])


# -- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("filter_", [
    {"UF_CRM_NO_SUCH_FIELD": 1},  # a typo in a user field is as unknown as any other
    {"!%TITLE": "1"},  # NOT LIKE exists only in crm.item.list (§3.2)
    {"id": 5},  # field names are upper case; "id" is not a field
    {"><ID": [1, 5]},  # not a legacy operator
])
def test_unknown_filter_keys_and_operators_are_refused(portal, filter_):
    call = client(portal)
    assert "filter field" in refused(call("crm.deal.list", {"filter": filter_}))


@pytest.mark.parametrize("value", ["yesterday", "", None, "2025-13-01", "1714550400"])
def test_a_date_filter_the_server_cannot_read_is_refused_not_empty(portal, value):
    # Matching nothing would make a bad watermark look like "no changes".
    call = client(portal)
    assert "Invalid date" in refused(call("crm.deal.list", {"filter": {">=DATE_MODIFY": value}}))


@pytest.mark.parametrize("value", ["2025-05-01", "2025-05-01T00:00:00+03:00",
                                   "2025-05-01 00:00:00", "01.05.2025"])
def test_date_filters_read_the_documented_forms(portal, value):
    data = client(portal)("crm.deal.list", {"filter": {">=DATE_MODIFY": value}}).json()
    expected = sum(d["DATE_MODIFY"] >= "2025-05-01T00:00:00+03:00"
                   for d in portal.records("deal").values())
    assert data["total"] == expected > 0


def test_a_registered_user_field_can_be_filtered():
    portal = fresh()
    call = client(portal)
    refused(call("crm.deal.list", {"filter": {"UF_CRM_POINTS": 1}}))
    portal.add_user_field("deal", "UF_CRM_POINTS", "integer")
    portal.update("deal", 7, {"UF_CRM_POINTS": 40})
    rows = call("crm.deal.list", {"filter": {">UF_CRM_POINTS": 9}, "select": ["ID"]}).json()
    assert rows["result"] == [{"ID": "7"}]


def test_unknown_filter_keys_can_be_ignored_instead(portal):
    call = client(portal, strictness=Strictness(unknown_filter="ignore"))
    data = call("crm.deal.list", {"filter": {"NO_SUCH": 1}, "select": ["ID"]}).json()
    assert data["total"] == len(portal.records("deal"))


@pytest.mark.parametrize("key", ["%CONTACT_ID", "=%COMPANY_ID", "%=STAGE_ID", "%CURRENCY_ID"])
def test_like_is_refused_on_reference_typed_fields(portal, key):
    call = client(portal)
    assert "LIKE" in refused(call("crm.deal.list", {"filter": {key: "1%"}}))


@pytest.mark.parametrize("key", [">PHONE", "%EMAIL", "!PHONE", "@PHONE", "=%EMAIL"])
def test_multifields_take_exact_matches_only(portal, key):
    call = client(portal)
    assert "exact" in refused(call("crm.contact.list", {"filter": {key: "+7"}}))


def test_multifield_match_is_exact_string(portal):
    call = client(portal)
    contact = next(r for r in portal.records("contact").values() if r.get("PHONE"))
    phone = contact["PHONE"][0]["VALUE"]
    found = call("crm.contact.list", {"filter": {"PHONE": phone}, "select": ["ID"]}).json()
    assert {"ID": contact["ID"]} in found["result"]
    partial = call("crm.contact.list", {"filter": {"PHONE": phone[:-1]}, "select": ["ID"]})
    assert {"ID": contact["ID"]} not in partial.json()["result"]


# -- select / order / start ----------------------------------------------------------------


def test_select_names_are_case_sensitive_and_must_be_an_array(portal):
    call = client(portal)
    row = call("crm.deal.list", {"select": ["id", "title"], "start": -1}).json()["result"][0]
    assert row == {"ID": row["ID"]}, "lower-case names are not fields (ID always comes)"
    assert "select" in refused(call("crm.deal.list", {"select": "ID"}))


def test_star_answers_every_standard_field_even_when_the_record_lacks_it():
    portal = fresh()
    portal.put_raw("contact", {"ID": "999", "NAME": "Bare", "DATE_CREATE": "",
                               "DATE_MODIFY": "2025-01-01T00:00:00+03:00"})
    call = client(portal)
    rows = call("crm.contact.list", {"select": ["*"], "filter": {"ID": 999}}).json()["result"]
    assert set(rows[0]) == {
        "ID", "NAME", "SECOND_NAME", "LAST_NAME", "BIRTHDATE", "TYPE_ID", "SOURCE_ID",
        "COMPANY_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "DATE_CREATE",
        "DATE_MODIFY", "HAS_PHONE", "HAS_EMAIL", "OPENED"}
    assert rows[0]["BIRTHDATE"] == "" and rows[0]["SECOND_NAME"] is None, "unset date is ''"
    generated = call("crm.contact.list", {"select": ["*"], "start": -1}).json()["result"]
    assert all(set(r) == set(rows[0]) for r in generated)


def test_empty_user_fields_are_omitted_unless_kept(portal):
    empty = next(i for i, r in portal.records("contact").items() if r["UF_CRM_NPS"] == "")
    strict, kept = client(portal), client(portal, strictness=Strictness(empty_user_fields="keep"))
    body = {"select": ["ID", "UF_*"], "filter": {"ID": empty}}
    assert "UF_CRM_NPS" not in strict("crm.contact.list", body).json()["result"][0]
    assert "UF_CRM_NPS" not in strict("crm.contact.get", {"id": empty}).json()["result"]
    assert kept("crm.contact.list", body).json()["result"][0]["UF_CRM_NPS"] == ""


@pytest.mark.parametrize(("order", "words"), [
    ({"NO_SUCH": "ASC"}, "order field"),
    ({"id": "ASC"}, "order field"),
    ({"ID": "UP"}, "direction"),
])
def test_order_fields_and_directions_are_checked(portal, order, words):
    assert words in refused(client(portal)("crm.deal.list", {"order": order}))


def test_order_on_a_multifield_is_refused_and_money_sorts_as_numbers(portal):
    call = client(portal)
    refused(call("crm.contact.list", {"order": {"PHONE": "ASC"}}))
    deals = portal.records("deal").values()
    # amounts of 5, 4 and 3 digits: "9990.00" > "12000.00" as strings, not as numbers
    picks = [next(d["ID"] for d in deals if low <= float(d["OPPORTUNITY"]) < high)
             for low, high in ((10_000, 99_999), (1_000, 9_999), (100, 999))]
    rows = call("crm.deal.list", {"order": {"OPPORTUNITY": "desc"}, "select": ["ID"],
                                  "filter": {"@ID": picks}}).json()["result"]
    assert [r["ID"] for r in rows] == picks


@pytest.mark.parametrize("start", ["abc", "", "5x", 50.0, True, [0]])
def test_a_start_that_is_not_an_integer_is_refused(portal, start):
    assert "start" in refused(client(portal)("crm.deal.list", {"start": start}))


def test_start_inside_a_page_reads_that_page_unless_offsets_are_exact(portal):
    body = {"start": "70", "select": ["ID"]}
    paged = client(portal)("crm.deal.list", body).json()
    assert paged["result"][0] == {"ID": "51"} and paged["next"] == 100
    exact = client(portal, strictness=Strictness(offset_paging="exact"))
    data = exact("crm.deal.list", body).json()
    assert data["result"][0] == {"ID": "71"} and data["next"] == 120


# -- top-level parameter names -------------------------------------------------------------


def test_upper_case_top_level_names_only_for_deals_and_contacts(portal):
    call = client(portal)
    body = {"FILTER": {"ID": 3}, "SELECT": ["ID"]}
    assert call("crm.deal.list", body).json()["result"] == [{"ID": "3"}]
    assert call("crm.contact.list", body).json()["result"] == [{"ID": "3"}]
    companies = call("crm.company.list", body).json()
    assert companies["total"] == len(portal.records("company")), "FILTER is not read"
    wider = client(portal, strictness=Strictness(either_case_families=("crm.",)))
    assert wider("crm.company.list", body).json()["result"] == [{"ID": "3"}]


def test_mixed_case_top_level_names_are_not_read(portal):
    data = client(portal)("crm.deal.list", {"Filter": {"ID": 3}, "Select": ["ID"]}).json()
    assert data["total"] == len(portal.records("deal"))


# -- fields and updates ----------------------------------------------------------------------


def test_fields_describe_real_types(portal):
    call = client(portal)
    deal = call("crm.deal.fields").json()["result"]
    assert {k: deal[k]["type"] for k in ("OPPORTUNITY", "STAGE_ID", "CLOSEDATE", "DATE_MODIFY",
                                         "CONTACT_ID", "ASSIGNED_BY_ID")} == {
        "OPPORTUNITY": "double", "STAGE_ID": "crm_status", "CLOSEDATE": "date",
        "DATE_MODIFY": "datetime", "CONTACT_ID": "crm_contact", "ASSIGNED_BY_ID": "user"}
    assert deal["CATEGORY_ID"]["isImmutable"] and deal["DATE_MODIFY"]["isReadOnly"]
    assert deal["CONTACT_IDS"]["isMultiple"]
    contact = call("crm.contact.fields").json()["result"]
    assert contact["PHONE"]["type"] == "crm_multifield" and contact["PHONE"]["isMultiple"]
    assert contact["BIRTHDATE"]["type"] == "date"
    assert contact["UF_CRM_NPS"]["isDynamic"] and not contact["NAME"]["isDynamic"]


def test_update_ignores_read_only_and_unknown_fields():
    portal = fresh()
    call = client(portal)
    before = portal.records("contact")[4]
    answer = call("crm.contact.update", {"id": 4, "fields": {
        "DATE_CREATE": "2000-01-01T00:00:00+03:00", "HAS_PHONE": "N" if before["HAS_PHONE"] ==
        "Y" else "Y", "UF_CRM_NOT_CREATED": "x", "NAME": "Новое"}})
    assert answer.json()["result"] is True
    after = portal.records("contact")[4]
    assert after["NAME"] == "Новое" and after["DATE_CREATE"] == before["DATE_CREATE"]
    assert after["HAS_PHONE"] == before["HAS_PHONE"] and "UF_CRM_NOT_CREATED" not in after
    assert after["DATE_MODIFY"] >= before["DATE_MODIFY"]


def test_moving_a_deal_to_a_final_stage_closes_it():
    portal = fresh()
    deal_id = next(i for i, r in portal.records("deal").items()
                   if r["CATEGORY_ID"] == "0" and r["STAGE_SEMANTIC_ID"] == "P")
    call = client(portal)
    assert call("crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "WON"}}).json()
    row = portal.records("deal")[deal_id]
    assert (row["STAGE_SEMANTIC_ID"], row["CLOSED"]) == ("S", "Y")
    refused(call("crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "C1:WON"}}))
    refused(call("crm.deal.update", {"id": deal_id, "fields": {"STAGE_SEMANTIC_ID": "P",
                                                              "STAGE_ID": "NO_SUCH"}}))
    assert portal.records("deal")[deal_id]["STAGE_SEMANTIC_ID"] == "S"


def test_update_writes_wire_formats():
    portal = fresh()
    call = client(portal)
    call("crm.deal.update", {"id": 3, "fields": {"OPPORTUNITY": 1200, "CLOSEDATE": None}})
    row = portal.records("deal")[3]
    assert row["OPPORTUNITY"] == "1200.00" and row["CLOSEDATE"] == "", "unset date is ''"
    assert "ID is not defined" in refused(call("crm.deal.update", {"id": "x", "fields": {}}))
    assert "Not found" in refused(call("crm.deal.update", {"id": 10**6, "fields": {}}))


def test_has_phone_follows_the_phone_multifield():
    portal = fresh()
    contact_id = next(i for i, r in portal.records("contact").items() if r.get("PHONE"))
    portal.update("contact", contact_id, {"PHONE": []})
    call = client(portal)
    row = call("crm.contact.list", {"select": ["ID", "HAS_PHONE", "PHONE"],
                                    "filter": {"ID": contact_id}}).json()["result"][0]
    assert row == {"ID": str(contact_id), "HAS_PHONE": "N"}
