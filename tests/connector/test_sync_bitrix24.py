"""End-to-end sync against the strict in-process Bitrix24 emulator (and once over loopback).

Expected values are computed here from the portal's wire-format records with a
deliberately independent, minimal reading of the facts sheet, not with the adapter's
mapping functions, so a mapping bug cannot hide behind itself.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import httpx
import pytest

from adapters.bitrix24.client import Bitrix24Client
from adapters.bitrix24.emulator import (
    BitrixEmulator,
    DataConfig,
    EmulatorLimits,
    FaultConfig,
    Portal,
)
from connector.config import Config, parse_config
from connector.http import Pacer, PacerLimits, RetryPolicy
from connector.mirror import Mirror
from connector.pipeline import run_sync

SECRET = "q7w8e9r0t1y2u3i4"
NO_LIMITS = EmulatorLimits(enabled=False)


class FakeTime:
    """A clock that only moves when slept on, so retries and pacing never really wait."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


def make_config(url: str, **sync: Any) -> Config:
    return parse_config({"crm": {"kind": "bitrix24", "webhook_url": url},
                         "sync": {"reconcile": "count", **sync}}, {})


def make_client(emulator: BitrixEmulator, transport: httpx.BaseTransport | None = None,
                fake: FakeTime | None = None) -> Bitrix24Client:
    fake = fake or FakeTime()
    http = httpx.Client(transport=transport or emulator.transport())
    return Bitrix24Client(
        emulator.webhook_url("https://portal.test"), http=http,
        pacer=Pacer(PacerLimits(), clock=fake.time, wall_clock=fake.time, sleep=fake.sleep),
        retry=RetryPolicy(max_attempts=12), sleep=fake.sleep, wall_clock=fake.time,
    )


def emulator_for(portal: Portal, **kwargs: Any) -> BitrixEmulator:
    kwargs.setdefault("limits", NO_LIMITS)
    return BitrixEmulator(portal, secret=SECRET, **kwargs)


def sync_once(emulator: BitrixEmulator, mirror: Mirror, client: Bitrix24Client | None = None):
    config = make_config(emulator.webhook_url("https://portal.test"))
    return run_sync(config, mirror, client or make_client(emulator))


# -- expected mirror rows, read independently from the wire format ---------------------------


def _int_or_none(value: Any) -> int | None:
    return int(value) if value not in (None, "", "0") else None


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def expected_deal(raw: dict[str, Any]) -> dict[str, Any]:
    status = {"P": "open", "S": "won", "F": "lost"}[raw["STAGE_SEMANTIC_ID"]]
    closed = None if status == "open" else _ts(raw["CLOSEDATE"] or raw["MOVED_TIME"])
    return {"id": int(raw["ID"]), "contact_id": _int_or_none(raw.get("CONTACT_ID")),
            "company_id": _int_or_none(raw.get("COMPANY_ID")), "title": raw["TITLE"],
            "amount": float(raw["OPPORTUNITY"]), "currency": raw["CURRENCY_ID"],
            "status": status, "created_at": _ts(raw["DATE_CREATE"]), "closed_at": closed,
            "updated_at": _ts(raw["DATE_MODIFY"])}


def expected_contact(raw: dict[str, Any]) -> dict[str, Any]:
    names = [raw.get(k) for k in ("NAME", "SECOND_NAME", "LAST_NAME")]
    return {"id": int(raw["ID"]), "name": " ".join(n.strip() for n in names if n) or None,
            "phones": [p["VALUE"] for p in raw.get("PHONE", [])],
            "emails": [e["VALUE"] for e in raw.get("EMAIL", [])],
            "birthday": raw["BIRTHDATE"][:10] or None,
            "responsible_id": _int_or_none(raw.get("ASSIGNED_BY_ID")),
            "created_at": _ts(raw["DATE_CREATE"]), "updated_at": _ts(raw["DATE_MODIFY"])}


def mirrored(mirror: Mirror, entity: str, columns: list[str]) -> dict[int, dict[str, Any]]:
    result = {}
    for row in mirror.rows(entity):
        picked = {c: row[c] for c in columns}
        for c in ("created_at", "closed_at", "updated_at"):
            if c in picked and picked[c] is not None:
                picked[c] = _ts(picked[c])
        result[row["id"]] = picked
    return result


def assert_mirror_equals_portal(mirror: Mirror, portal: Portal) -> None:
    deals = {i: expected_deal(r) for i, r in portal.records("deal").items()}
    contacts = {i: expected_contact(r) for i, r in portal.records("contact").items()}
    got_deals = mirrored(mirror, "deals", list(next(iter(deals.values())).keys()))
    got_contacts = mirrored(mirror, "contacts", list(next(iter(contacts.values())).keys()))
    assert got_deals.keys() == deals.keys()
    assert got_deals == deals
    assert got_contacts == contacts
    assert mirror.live_ids("companies") == set(portal.records("company"))


@pytest.fixture(scope="module")
def big_portal() -> Portal:
    return Portal.generate(DataConfig(seed=11, contacts=1_500, deals=5_200))


def small_portal(seed: int = 3, **kwargs: Any) -> Portal:
    return Portal.generate(DataConfig(seed=seed, contacts=300, deals=1_200, **kwargs))


# -- tests ------------------------------------------------------------------------------------


def test_full_sync_equals_the_portal_on_every_pinned_column(big_portal: Portal) -> None:
    assert len(big_portal.records("deal")) >= 5_000
    mirror = Mirror.memory()
    summary = sync_once(emulator_for(big_portal), mirror)
    assert summary.ok, summary.as_dict()
    assert_mirror_equals_portal(mirror, big_portal)
    deals = next(r for r in summary.reports if r.entity == "deals")
    # keyset batches: 2,500 rows per request, plus the first page, the count and the IDs walk
    assert deals.counts.requests <= 2 + 2 * (5_200 // 2_500 + 2)


def test_incremental_sync_after_updates_additions_and_deletions() -> None:
    portal = small_portal()
    emulator = emulator_for(portal)
    mirror = Mirror.memory()
    client = make_client(emulator)
    sync_once(emulator, mirror, client)
    deal_ids, contact_ids = sorted(portal.records("deal")), sorted(portal.records("contact"))
    for deal_id in deal_ids[10:40]:
        portal.update("deal", deal_id, {"OPPORTUNITY": "777.00"})
    new_contact = portal.add("contact", {"NAME": "Новый", "LAST_NAME": "Клиент"})
    portal.add("deal", {"TITLE": "fresh", "CONTACT_ID": str(new_contact), "OPPORTUNITY": "10.00",
                        "CURRENCY_ID": "RUB", "STAGE_ID": "NEW", "STAGE_SEMANTIC_ID": "P"})
    for deal_id in deal_ids[100:104]:
        portal.delete("deal", deal_id)
    portal.delete("contact", contact_ids[5])
    summary = sync_once(emulator, mirror, client)
    assert summary.ok
    assert_mirror_equals_portal(mirror, portal)
    totals = summary.totals()
    assert totals["deleted"] == 5
    assert totals["fetched"] < 60, "an incremental run reads only what changed"
    gone = next(r for r in mirror.rows("deals", include_deleted=True) if r["id"] == deal_ids[100])
    assert gone["deleted_at"] is not None


def test_same_second_updates_across_a_page_boundary_are_neither_lost_nor_doubled() -> None:
    portal = small_portal(seed=4)
    emulator = emulator_for(portal)
    mirror = Mirror.memory()
    client = make_client(emulator)
    sync_once(emulator, mirror, client)
    watermark = datetime.fromisoformat(mirror.get_state("deals").watermark or "")
    ids = sorted(portal.records("deal"))[:130]  # > 2 pages, all in the watermark's second
    for deal_id in ids:
        portal.update("deal", deal_id, {"TITLE": "same second"}, modified_at=watermark)
    summary = sync_once(emulator, mirror, client)
    deals = next(r for r in summary.reports if r.entity == "deals")
    assert deals.counts.fetched == 130
    titles = {r["id"]: r["title"] for r in mirror.rows("deals")}
    assert all(titles[i] == "same second" for i in ids)
    assert_mirror_equals_portal(mirror, portal)


class BreakAfter(httpx.BaseTransport):
    """Passes requests through, then raises (a crash, not a CRM error) after ``n`` of them."""

    def __init__(self, inner: httpx.BaseTransport, n: int) -> None:
        self.inner, self.left = inner, n

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("power cut")
        return self.inner.handle_request(request)


def test_a_crash_mid_sync_and_a_rerun_give_the_same_mirror(big_portal: Portal) -> None:
    emulator = emulator_for(big_portal)
    mirror = Mirror.memory()
    # contacts (1 page + 1 batch + count + ids) then two deal requests, then the crash
    broken = make_client(emulator, transport=BreakAfter(emulator.transport(), 9))
    with pytest.raises(RuntimeError, match="power cut"):
        sync_once(emulator, mirror, broken)
    partial = mirror.count_live("deals")
    assert 0 < partial < len(big_portal.records("deal"))
    assert mirror.get_state("deals").resume_after_id > 0
    summary = sync_once(emulator, mirror)
    assert summary.ok
    assert_mirror_equals_portal(mirror, big_portal)
    deals = next(r for r in summary.reports if r.entity == "deals")
    assert deals.counts.fetched == len(big_portal.records("deal")) - partial, "resumed, not redone"


def test_ten_percent_faults_still_give_an_exact_mirror(big_portal: Portal) -> None:
    injected = 0
    kinds: set[int] = set()
    for seed in range(5):  # a sync is only ~15 requests: several seeds meet every kind
        emulator = emulator_for(big_portal, faults=FaultConfig(rate=0.10, seed=seed))
        mirror = Mirror.memory()
        summary = sync_once(emulator, mirror)
        assert summary.ok, summary.as_dict()
        assert summary.totals()["retries"] >= emulator.stats.faults_injected
        assert_mirror_equals_portal(mirror, big_portal)
        injected += emulator.stats.faults_injected
        kinds |= {s for s in emulator.stats.by_status if s != 200}
    assert injected >= 5 and len(kinds) >= 2


def test_bad_records_land_in_rejects_while_the_rest_syncs() -> None:
    portal = Portal.generate(DataConfig(seed=8, contacts=400, deals=2_000, dirty_rate=0.05))
    mirror = Mirror.memory()
    summary = sync_once(emulator_for(portal), mirror)
    assert summary.ok
    rejected = mirror.rejected_ids("deals")
    assert len(rejected) >= 20
    assert mirror.count_live("deals") + len(rejected) == len(portal.records("deal"))
    reasons = " ".join(r["reason"] for r in mirror.rejects(limit=10_000))
    assert "OPPORTUNITY" in reasons and "unknown stage" in reasons and "DATE_CREATE" in reasons
    # the second run does not re-walk every ID just because rejected records are missing
    again = sync_once(emulator_for(portal), mirror)
    assert all(not r.full_reconcile for r in again.reports)


def test_an_unchanged_portal_costs_at_most_two_requests_per_entity() -> None:
    portal = small_portal(seed=9)
    emulator = emulator_for(portal)
    mirror = Mirror.memory()
    client = make_client(emulator)
    sync_once(emulator, mirror, client)
    summary = sync_once(emulator, mirror, client)
    for report in summary.reports:
        assert report.counts.requests <= 2, (report.entity, report.counts)
        assert report.counts.fetched == 0 or report.entity == "deals"


def test_limits_on_scaled_clock_give_no_503_and_no_429() -> None:
    portal = small_portal(seed=10)
    scale = 0.0005
    emulator = emulator_for(portal, limits=EmulatorLimits(time_scale=scale))
    http = httpx.Client(transport=emulator.transport())
    client = Bitrix24Client(emulator.webhook_url("https://portal.test"), http=http,
                            pacer=Pacer(PacerLimits().scaled(scale)), retry=RetryPolicy())
    mirror = Mirror.memory()
    summary = sync_once(emulator, mirror, client)
    assert summary.ok
    assert emulator.stats.http_503 == 0 and emulator.stats.http_429 == 0
    assert_mirror_equals_portal(mirror, portal)


def test_secret_never_reaches_logs_or_the_mirror_over_loopback(tmp_path, caplog) -> None:
    from click.testing import CliRunner

    from adapters.bitrix24.emulator import serve
    from connector.cli import cli

    portal = small_portal(seed=12)
    emulator = BitrixEmulator(portal, secret=SECRET, limits=NO_LIMITS,
                              faults=FaultConfig(rate=0.15, seed=2, kinds=("503", "500")))
    caplog.set_level(logging.DEBUG)
    with serve(emulator, host="127.0.0.1", port=0) as server:
        assert SECRET in server.webhook_url and server.webhook_url.startswith("http://127.0.0.1")
        config = tmp_path / "retention.toml"
        config.write_text(
            '[crm]\nkind = "bitrix24"\nwebhook_url = "${HOOK}"\n'
            f'[mirror]\npath = "{tmp_path / "m.db"}"\n[crm.retry]\nmax_delay_s = 0.05\n'
        )
        result = CliRunner().invoke(
            cli, ["--config", str(config), "--log-level", "DEBUG", "sync", "--json"],
            env={"HOOK": server.webhook_url},
        )
    assert result.exit_code == 0, result.output
    assert emulator.stats.faults_injected > 0, "retries must have been logged"
    assert SECRET not in result.output
    assert SECRET not in caplog.text
    assert SECRET.encode() not in (tmp_path / "m.db").read_bytes()
    mirror = Mirror.open(tmp_path / "m.db")
    assert_mirror_equals_portal(mirror, portal)


def test_the_summary_counts_every_request_the_sync_made_even_for_the_progress_bar() -> None:
    portal = small_portal(seed=13)
    emulator = emulator_for(portal)
    client = make_client(emulator)
    seen: list[tuple[str, int, int | None]] = []
    config = make_config(emulator.webhook_url("https://portal.test"))
    summary = run_sync(config, Mirror.memory(), client,
                       progress=lambda entity, rows, total: seen.append((entity, rows, total)))
    assert summary.ok
    assert summary.totals()["requests"] == client.stats.requests == emulator.stats.requests
    deals = [total for entity, _, total in seen if entity == "deals"]
    assert deals and set(deals) == {len(portal.records("deal"))}, "a first pull has an ETA"


def test_a_deal_restored_with_its_old_date_modify_is_read_back_by_id() -> None:
    portal = small_portal(seed=14)
    emulator = emulator_for(portal)
    mirror = Mirror.memory()
    client = make_client(emulator)
    sync_once(emulator, mirror, client)
    deal_id = sorted(portal.records("deal"))[77]
    contact_id = sorted(portal.records("contact"))[3]
    saved = portal.records("deal")[deal_id]
    portal.delete("deal", deal_id)
    portal.delete("contact", contact_id)
    assert sync_once(emulator, mirror, client).totals()["deleted"] == 2
    portal.put_raw("deal", saved)  # back from the recycle bin: same ID, same DATE_MODIFY
    summary = sync_once(emulator, mirror, client)
    assert summary.ok
    assert_mirror_equals_portal(mirror, portal)
    contact = next(r for r in mirror.rows("contacts", include_deleted=True)
                   if r["id"] == contact_id)
    assert contact["deleted_at"] is not None, "a deleted contact stays, marked"
