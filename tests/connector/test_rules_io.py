"""rules_io: mirror rows → rules → customer_state / points_ledger / metric_snapshots."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shop_rows import AS_OF, LATER, company, contact, deal, many_buyers, write

from connector import ledger_digest, rules_io, rules_read, rules_rows, rules_stage, rules_store
from connector.errors import MirrorError
from connector.mirror import Mirror, SyncState
from connector.parallel import can_fork
from connector.rules_io import load_inputs, run_rules
from rules.columns import reachability, wanted_fields
from rules.config import CustomerConfig, RulesConfig
from rules.engine import compute


def shop(mirror: Mirror | None = None) -> Mirror:
    """Contact 1 bought twice (one birthday purchase) and lost a deal; contact 2 never."""
    mirror = mirror or Mirror.memory()
    write(mirror, "contacts", [
        contact(1, phones=["+7 916 123-45-67"], emails=["a@b.ru"], birthday="1990-02-10"),
        contact(2, emails=["not an email"]),
    ])
    write(mirror, "deals", [
        deal(10, 1, "2025-01-15T12:00:00+03:00", 1000.0, UF_CRM_NPS="9", OTHER="x"),
        deal(11, 1, "2025-02-10T12:00:00+03:00", 2000.0),
        deal(12, 1, "2025-02-11T12:00:00+03:00", 5000.0, status="lost"),
        deal(13, 2, "2025-02-12T12:00:00+03:00", 7000.0, status="open"),
    ])
    return mirror


def table(mirror: Mirror, name: str, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    cursor = mirror.db.execute(f"select * from {name} order by 1, 2")
    names = [d[0] for d in cursor.description]
    return [{k: v for k, v in zip(names, row, strict=True) if k not in skip}
            for row in cursor.fetchall()]


def balance(mirror: Mirror, customer_id: int, kind: str = "contact") -> int:
    row = mirror.db.execute("select points_balance from customer_state where customer_id = ? "
                            "and customer_kind = ?", [customer_id, kind]).fetchone()
    return int(row[0])


def test_load_inputs_converts_types_and_keeps_deleted_rows() -> None:
    mirror = shop()
    mirror.mark_deleted("deals", [11], "2025-03-02T09:00:00+03:00", SyncState("deals"))
    contacts, deals, companies = load_inputs(mirror)
    first = contacts[0]
    assert first.birthday == date(1990, 2, 10)
    assert first.phones == ("+7 916 123-45-67",) and first.emails == ("a@b.ru",)
    assert first.created_at == datetime(2024, 1, 1, 7, tzinfo=UTC)
    assert first.created_at is not None and first.created_at.tzinfo is not None
    by_id = {d.id: d for d in deals}
    assert set(by_id) == {10, 11, 12, 13} and companies == []
    assert by_id[10].fields == {"UF_CRM_NPS": "9"}  # custom fields only
    assert by_id[11].deleted_at == datetime(2025, 3, 2, 6, tzinfo=UTC)
    assert by_id[13].closed_at is None and by_id[13].status == "open"


def test_run_rules_stores_states_ledger_and_a_snapshot() -> None:
    mirror = shop()
    result = run_rules(mirror, RulesConfig(), as_of=AS_OF)
    states = table(mirror, "customer_state", skip=("computed_at",))
    assert [(s["customer_id"], s["customer_kind"], s["lifecycle"]) for s in states] == [
        (1, "contact", "active"), (2, "contact", "prospect")]
    one = states[0]
    # 1000 × 3 % = 30; the second purchase is on the birthday: 2000 × 3 % × 2 = 120
    assert (one["purchases"], one["revenue"], one["points_balance"]) == (2, 3000.0, 150)
    assert json.loads(one["channels"]) == ["phone", "email"]
    assert (one["first_purchase"], one["last_purchase"]) == ("2025-01-15", "2025-02-10")
    assert json.loads(states[1]["channels"]) == ["none"] and states[1]["purchases"] == 0
    ledger = table(mirror, "points_ledger")
    assert [(e["entry_key"], e["points"], e["at"], e["tier_at_purchase"]) for e in ledger] == [
        ("earn:deal:10", 30, "2025-01-15", "Bronze"), ("earn:deal:11", 120, "2025-02-10",
                                                       "Bronze")]
    assert "birthday" in ledger[1]["reason"] and ledger[0]["customer_kind"] == "contact"
    snapshots = table(mirror, "metric_snapshots")
    assert len(snapshots) == 1 and snapshots[0]["period_start"] == "2025-02-01"
    metrics = json.loads(snapshots[0]["metrics"])
    assert metrics["period_purchases"] == 1 == result.metrics.period_purchases
    assert metrics["points_liability"] == 150
    assert json.loads(snapshots[0]["notes"]) == list(result.notes)


def test_deleted_won_deal_is_reversed_and_the_balance_drops() -> None:
    mirror = shop()
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    assert balance(mirror, 1) == 150
    mirror.mark_deleted("deals", [11], "2025-03-02T09:00:00+03:00", SyncState("deals"))
    run_rules(mirror, RulesConfig(), as_of=LATER)
    assert balance(mirror, 1) == 30
    ledger = {e["entry_key"]: e for e in table(mirror, "points_ledger")}
    assert ledger["earn:deal:11"]["points"] == 120  # carried over unchanged ...
    reversal = ledger["reversal:earn:deal:11"]  # ... and reversed once, dated as_of
    assert (reversal["points"], reversal["at"], reversal["kind"]) == (-120, "2025-03-05",
                                                                      "reversal")
    run_rules(mirror, RulesConfig(), as_of=LATER)
    keys = [e["entry_key"] for e in table(mirror, "points_ledger")]
    assert keys.count("reversal:earn:deal:11") == 1 and balance(mirror, 1) == 30


def test_running_twice_changes_nothing_but_appends_a_snapshot() -> None:
    mirror = shop()
    mirror.mark_deleted("deals", [10], "2025-02-20T09:00:00+03:00", SyncState("deals"))
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    before = (table(mirror, "customer_state", skip=("computed_at",)),
              table(mirror, "points_ledger"))
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    after = (table(mirror, "customer_state", skip=("computed_at",)),
             table(mirror, "points_ledger"))
    assert after == before
    snapshots = table(mirror, "metric_snapshots", skip=("id", "computed_at"))
    assert len(snapshots) == 2 and snapshots[0] == snapshots[1]


def test_company_mode_reaches_companies_through_their_deals_contacts() -> None:
    mirror = shop()
    write(mirror, "companies", [company(100), company(200)])
    write(mirror, "deals", [deal(20, 1, "2025-02-20T12:00:00+03:00", 10_000.0,
                                 company_id=100)])
    config = RulesConfig(customer=CustomerConfig(kind="company"))
    run_rules(mirror, config, as_of=AS_OF)
    states = table(mirror, "customer_state", skip=("computed_at",))
    assert [(s["customer_id"], s["customer_kind"], s["purchases"]) for s in states] == [
        (100, "company", 1), (200, "company", 0)]
    assert json.loads(states[0]["channels"]) == ["phone", "email"]
    assert [(e["entry_key"], e["customer_id"], e["customer_kind"], e["points"])
            for e in table(mirror, "points_ledger")] == [
        ("earn:deal:20", 100, "company", 300)]


def ledger_of(mirror: Mirror, kind: str) -> list[tuple[str, int, int]]:
    return [(e["entry_key"], e["customer_id"], e["points"])
            for e in table(mirror, "points_ledger") if e["customer_kind"] == kind]


def test_a_contact_ledger_is_not_read_as_a_company_ledger() -> None:
    mirror = shop()
    write(mirror, "companies", [company(1)])
    run_rules(mirror, RulesConfig(), as_of=AS_OF)  # contact 1 earns on deals 10 and 11
    contact_ledger = ledger_of(mirror, "contact")
    run_rules(mirror, RulesConfig(customer=CustomerConfig(kind="company")), as_of=AS_OF)
    # company 1 never bought: contact 1's earns must not be carried and reversed onto it
    assert ledger_of(mirror, "company") == []
    assert balance(mirror, 1, "company") == 0
    # ...and the contact ledger is kept for when contacts are the customers again
    assert ledger_of(mirror, "contact") == contact_ledger


def test_switching_kind_and_back_still_reverses_what_changed_meanwhile() -> None:
    mirror = shop()
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    assert balance(mirror, 1) == 150
    run_rules(mirror, RulesConfig(customer=CustomerConfig(kind="company")), as_of=AS_OF)
    mirror.mark_deleted("deals", [11], "2025-03-02T09:00:00+03:00", SyncState("deals"))
    run_rules(mirror, RulesConfig(), as_of=LATER)
    # deal 11 (2,000 on the birthday: 3 % x 2 = 120 points) is reversed exactly once
    assert ledger_of(mirror, "contact") == [("earn:deal:10", 1, 30), ("earn:deal:11", 1, 120),
                                            ("reversal:earn:deal:11", 1, -120)]
    assert balance(mirror, 1) == 30


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_contact_and_a_company_of_the_same_id_keep_separate_ledgers(on_disk: bool,
                                                                       tmp_path: Path) -> None:
    """Contact 1 and company 1 are two customers; both earn on deal 10 (it has both)."""
    mirror = Mirror.open(tmp_path / "m.db") if on_disk else Mirror.memory()
    write(mirror, "contacts", [contact(1)])
    write(mirror, "companies", [company(1)])
    write(mirror, "deals", [deal(10, 1, "2025-01-15T12:00:00+03:00", 1000.0, company_id=1),
                            deal(11, 1, "2025-02-01T12:00:00+03:00", 2000.0, company_id=1)])
    companies = RulesConfig(customer=CustomerConfig(kind="company"))
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    run_rules(mirror, companies, as_of=AS_OF)
    both = [("earn:deal:10", 1, 30), ("earn:deal:11", 1, 60)]
    assert ledger_of(mirror, "contact") == both and ledger_of(mirror, "company") == both
    mirror.mark_deleted("deals", [11], "2025-03-02T09:00:00+03:00", SyncState("deals"))
    run_rules(mirror, RulesConfig(), as_of=LATER)
    # the contact's earn on deal 11 is reversed; the company's waits for its own run
    assert ledger_of(mirror, "contact") == [*both, ("reversal:earn:deal:11", 1, -60)]
    assert ledger_of(mirror, "company") == both
    run_rules(mirror, companies, as_of=LATER)
    assert ledger_of(mirror, "company") == [*both, ("reversal:earn:deal:11", 1, -60)]
    assert (balance(mirror, 1), balance(mirror, 1, "company")) == (30, 30)


def test_store_false_writes_nothing() -> None:
    mirror = shop()
    result = run_rules(mirror, RulesConfig(), as_of=AS_OF, store=False)
    assert result.state_of(1).points_balance == 150
    for name in ("customer_state", "points_ledger", "metric_snapshots"):
        assert table(mirror, name) == []


def test_a_failure_while_storing_keeps_the_previous_results(monkeypatch: Any) -> None:
    mirror = shop()
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    before = [table(mirror, n) for n in ("customer_state", "points_ledger", "metric_snapshots")]

    real = rules_rows.ledger_columns

    def boom(*args: Any) -> Iterator[list[list[Any]]]:
        yield next(real(*args))  # some rows are already written when it fails
        raise RuntimeError("disk full")

    monkeypatch.setattr(rules_rows, "ledger_columns", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run_rules(mirror, RulesConfig(), as_of=LATER)
    after = [table(mirror, n) for n in ("customer_state", "points_ledger", "metric_snapshots")]
    assert after == before


def rich_shop(mirror: Mirror | None = None) -> Mirror:
    """Everything the SQL column reader converts itself: offsets, fractions, codes, fields."""
    mirror = shop(mirror)
    write(mirror, "contacts", [
        contact(3, phones=["8 (916) 000-11-22"], birthday="1985-12-31"),
        contact(4, deleted_at="2025-01-01T00:00:00+00:00", phones=["+79160001122"]),
    ])
    write(mirror, "companies", [company(100)])
    write(mirror, "deals", [
        # a fraction of a second just after as_of: excluded, exactly as compute() decides
        deal(30, 3, "2025-03-01T15:00:00.000001+03:00", 500.0),
        deal(31, 3, "2025-02-28T23:30:00-05:00", 800.0, UF_CRM_POINTS_SPENT="10",
             UF_CRM_REVIEW="Y"),
        deal(32, 3, "2025-01-01T00:00:00.5+00:00", 1.5, UF_CRM_NPS=3),
        deal(33, 4, "2025-02-01T12:00:00+03:00", 900.0),
        deal(34, None, "2025-02-01T12:00:00+03:00", 900.0, company_id=100),
        {**deal(35, 3, "2024-12-01T12:00:00Z", 100.0), "currency": "USD"},
        {**deal(36, 3, "2024-12-02T12:00:00+03:00", 100.0), "currency": "EUR"},
        {**deal(37, 3, "2024-12-03T12:00:00+03:00", 100.0), "category_id": "7"},
        {**deal(38, 3, "2024-12-04T12:00:00+03:00", 100.0), "amount": None},
        deal(39, 3, "2024-09-01T12:00:00+03:00", 1000.0),
    ])
    return mirror


RICH = RulesConfig.model_validate({
    "purchases": {"rates": {"USD": 90.0}, "categories": ["0"]},
    "loyalty": {"bonuses": [{"field": "UF_CRM_REVIEW", "entity": "deal", "equals": "Y",
                             "points": 200, "reason": "review"}], "expiry_days": 120},
})


@pytest.mark.parametrize(("kind", "on_disk"), [("contact", False), ("company", False),
                                              ("contact", True)])
def test_the_column_reader_matches_the_record_reader(kind: str, on_disk: bool,
                                                     tmp_path: Path) -> None:
    # a file-backed mirror as well as the in-memory one
    mirror = rich_shop(Mirror.open(tmp_path / "m.db") if on_disk else None)
    # field values that are not JSON strings or integers take the JSON-text path
    write(mirror, "deals", [deal(40, 3, "2024-10-01T12:00:00+03:00", 10.0, UF_CRM_NPS=5.5),
                            deal(41, 3, "2024-10-02T12:00:00+03:00", 10.0, UF_CRM_REVIEW=True,
                                 UF_CRM_POINTS_SPENT=[1], UF_CRM_NPS=None)])
    config = RICH.model_copy(update={"customer": CustomerConfig(kind=kind)})
    via_columns = run_rules(mirror, config, as_of=AS_OF, store=False)
    contacts, deals, companies = load_inputs(mirror)
    via_records = compute(contacts, deals, companies, config, AS_OF)
    assert list(via_columns.states) == list(via_records.states)
    assert list(via_columns.ledger) == list(via_records.ledger)
    assert via_columns.metrics == via_records.metrics
    assert via_columns.notes == via_records.notes
    if kind == "contact":  # the cases above really were exercised
        assert any("USD" in n for n in via_columns.notes)
        assert any("EUR" in n for n in via_columns.notes)
        assert any("after as_of" in n for n in via_columns.notes)
        keys = {e.entry_key for e in via_columns.ledger}
        assert {"bonus:UF_CRM_REVIEW:deal:31", "redeem:deal:31", "earn:deal:32",
                "expire:earn:deal:39"} <= keys


# Tiers renamed and re-priced: most ledger entries change, so the ledger is rewritten.
RENAMED_TIERS = RulesConfig.model_validate({"loyalty": {"tiers": [
    {"name": "Bronze", "min_purchases": 0, "cashback_percent": 3},
    {"name": "Argent", "min_purchases": 2, "cashback_percent": 4}]}})


def stored(mirror: Mirror) -> list[list[dict[str, Any]]]:
    return [table(mirror, "customer_state", skip=("computed_at",)),
            table(mirror, "points_ledger"),
            table(mirror, "metric_snapshots", skip=("id", "computed_at"))]


def three_runs(mirror: Mirror) -> list[list[list[dict[str, Any]]]]:
    """First run, a run after deletions, an unchanged re-run, a run with renamed tiers."""
    seen = []
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    seen.append(stored(mirror))
    mirror.mark_deleted("deals", [1005, 1010], "2025-03-02T09:00:00+03:00", SyncState("deals"))
    write(mirror, "deals", [deal(9000, 3, "2025-03-03T12:00:00+03:00", 5000.0)])
    run_rules(mirror, RulesConfig(), as_of=LATER)  # with a previous ledger to compare with
    seen.append(stored(mirror))
    run_rules(mirror, RulesConfig(), as_of=LATER)  # nothing changed: an empty delta
    seen.append(stored(mirror))
    run_rules(mirror, RENAMED_TIERS, as_of=LATER)  # most entries change: rewritten in full
    seen.append(stored(mirror))
    return seen


@pytest.mark.skipif(not can_fork(), reason="fork is not available here")
def test_forked_reading_and_the_staged_store_equal_the_serial_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.setattr(rules_store, "PARALLEL_MIN_LEDGER_ROWS", 1)  # always stage
    caplog.set_level(logging.DEBUG, logger="crm_retention.rules")
    forked = three_runs(many_buyers(Mirror.open(tmp_path / "forked.db")))
    modes = [r.getMessage() for r in caplog.records if "ledger ready" in r.getMessage()]
    monkeypatch.setenv("CRM_RETENTION_NO_FORK", "1")
    serial = three_runs(many_buyers(Mirror.open(tmp_path / "serial.db")))
    kinds = {e["kind"] for e in forked[1][1]}
    assert {"earn", "redeem", "reversal"} <= kinds
    assert forked == serial
    # the first run wrote two halves, the next two only what changed, the last in full
    assert ["full: " in modes[0], "delta: " in modes[1], "delta: 0 rows, 0 stale" in modes[2],
            "full: " in modes[3]] == [True] * 4, modes
    assert not list(tmp_path.glob("*stage*")), "the staging files are removed"


@pytest.mark.skipif(not can_fork(), reason="fork is not available here")
@pytest.mark.parametrize(("previous", "where"),
                         [(False, "child"), (True, "child"), (False, "parent")])
def test_a_failing_ledger_writer_keeps_the_previous_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, previous: bool, where: str) -> None:
    monkeypatch.setattr(rules_store, "PARALLEL_MIN_LEDGER_ROWS", 1)
    monkeypatch.setattr(ledger_digest, "PART_ROWS", 8)  # the parent has a share to write
    mirror = many_buyers(Mirror.open(tmp_path / "m.db"))
    if previous:
        run_rules(mirror, RulesConfig(), as_of=AS_OF)
        mirror.mark_deleted("deals", [1005], "2025-03-02T09:00:00+03:00", SyncState("deals"))
    before = stored(mirror)
    parent = os.getpid()
    real_chunks, real_list = rules_rows.ledger_columns, rules_stage.ledger_column_list
    real_states = rules_stage.state_columns

    def failing_here() -> bool:
        return (os.getpid() == parent) == (where == "parent")

    def boom(*args: Any) -> list[list[Any]]:
        if failing_here():
            raise RuntimeError("disk full")
        return real_list(*args)

    def boom_chunks(*args: Any) -> Iterator[list[list[Any]]]:
        if failing_here():
            raise RuntimeError("disk full")
        yield from real_chunks(*args)

    def boom_states(*args: Any) -> Iterator[list[list[Any]]]:
        if failing_here():
            raise RuntimeError("disk full")
        yield from real_states(*args)

    # the forked children inherit the patched module; a first run's child stages the
    # states first (and may find every ledger part claimed by the parent by then)
    monkeypatch.setattr(rules_rows, "ledger_columns", boom_chunks)
    monkeypatch.setattr(rules_stage, "ledger_column_list", boom)
    monkeypatch.setattr(rules_stage, "state_columns", boom_states)
    expected = r"points ledger failed: .*disk full" if where == "child" else "disk full"
    with pytest.raises((MirrorError, RuntimeError), match=expected):
        run_rules(mirror, RulesConfig(), as_of=LATER)
    assert stored(mirror) == before
    assert not list(tmp_path.glob("*stage*"))


@pytest.mark.skipif(not can_fork(), reason="fork is not available here")
def test_the_store_never_waits_on_a_child_holding_its_stage_locked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_store, "PARALLEL_MIN_LEDGER_ROWS", 1)
    mirror = many_buyers(Mirror.open(tmp_path / "m.db"))
    # Attaching a stage reads its schema, which fails while a child writes it: with no
    # busy timeout at all, any attach after the children started would raise.
    mirror.db.execute("pragma busy_timeout = 0")
    real, scratch = rules_rows.ledger_columns, rules_stage._scratch

    @contextmanager
    def spilling(stage: Path) -> Iterator[sqlite3.Connection]:
        with scratch(stage) as conn:
            # a real ledger outgrows the page cache at once, and the spill locks the
            # file until the commit: 4 MB of scratch does the same here
            conn.execute("create table spill (data blob)")
            conn.execute("insert into spill values (zeroblob(4000000))")
            yield conn

    def slow(*args: Any) -> Iterator[list[list[Any]]]:
        time.sleep(0.5)  # in the child, inside its write transaction
        yield from real(*args)

    monkeypatch.setattr(rules_rows, "ledger_columns", slow)
    monkeypatch.setattr(rules_stage, "_scratch", spilling)
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    monkeypatch.setenv("CRM_RETENTION_NO_FORK", "1")
    serial = many_buyers(Mirror.open(tmp_path / "serial.db"))
    run_rules(serial, RulesConfig(), as_of=AS_OF)
    assert stored(mirror) == stored(serial)


@pytest.mark.skipif(not can_fork(), reason="fork is not available here")
def test_the_parent_writes_its_share_of_the_ledger_while_the_child_writes_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.setattr(rules_store, "PARALLEL_MIN_LEDGER_ROWS", 1)
    monkeypatch.setattr(ledger_digest, "PART_ROWS", 8)  # a non-empty share for each
    caplog.set_level(logging.DEBUG, logger="crm_retention.rules")
    mirror = many_buyers(Mirror.open(tmp_path / "m.db"))
    done = tmp_path / "child's share written"
    parent = os.getpid()
    real_rows = rules_rows.ledger_columns
    written_before_done: list[bool] = []

    def rows(*args: Any) -> Iterator[list[list[Any]]]:
        if os.getpid() == parent:
            written_before_done.append(not done.exists())
        yield from real_rows(*args)
        if os.getpid() != parent:  # the child, in its write transaction
            time.sleep(1.0)
            done.touch()

    monkeypatch.setattr(rules_rows, "ledger_columns", rows)
    run_rules(mirror, RulesConfig(), as_of=AS_OF)
    # parts, claimed as it goes; the first while the child still held its transaction
    # (later ones may follow the child's first part: how many is up to the timing)
    assert len(written_before_done) > 1 and written_before_done[0]
    message = next(r.getMessage() for r in caplog.records if "ledger ready" in r.getMessage())
    assert "direct: " in message and "full: " in message, message
    assert "0 states here" in message, message  # the child staged them: nothing stored yet
    monkeypatch.setenv("CRM_RETENTION_NO_FORK", "1")
    serial = many_buyers(Mirror.open(tmp_path / "serial.db"))
    run_rules(serial, RulesConfig(), as_of=AS_OF)
    assert stored(mirror) == stored(serial)


@pytest.mark.skipif(not can_fork(), reason="fork is not available here")
@pytest.mark.parametrize("rewrite", [False, True])
def test_beside_a_delta_child_parent_and_child_share_the_states(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        rewrite: bool) -> None:
    monkeypatch.setattr(rules_store, "PARALLEL_MIN_LEDGER_ROWS", 1)
    monkeypatch.setattr(rules_stage, "_STATE_PART", 8)
    mirror = many_buyers(Mirror.open(tmp_path / "m.db"))
    run_rules(mirror, RulesConfig(), as_of=AS_OF)  # a stored ledger: the next run is a delta
    parent, real = os.getpid(), rules_stage.state_columns

    def slow_in_parent(*args: Any) -> Iterator[list[list[Any]]]:
        if os.getpid() == parent:
            time.sleep(0.05)  # so the child, done with its delta, claims parts too
        yield from real(*args)

    monkeypatch.setattr(rules_stage, "state_columns", slow_in_parent)
    caplog.set_level(logging.DEBUG, logger="crm_retention.rules")
    # renamed tiers change most entries: the delta child's verdict is then "rewrite", and
    # a second child writes the ledger in full, after the states the first one staged
    later = RENAMED_TIERS if rewrite else RulesConfig()
    run_rules(mirror, later, as_of=LATER)
    message = next(r.getMessage() for r in caplog.records if "ledger ready" in r.getMessage())
    here = int(message.split("stored: ")[1].split(" states here")[0].replace(",", ""))
    staged = int(message.split("stale, ")[-1].split(" states")[0].replace(",", ""))
    assert ("full: " if rewrite else "delta: ") in message, message
    assert here > 0 and staged > 0, message
    monkeypatch.setenv("CRM_RETENTION_NO_FORK", "1")
    serial = many_buyers(Mirror.open(tmp_path / "serial.db"))
    run_rules(serial, RulesConfig(), as_of=AS_OF)
    run_rules(serial, later, as_of=LATER)
    assert stored(mirror) == stored(serial)


@pytest.mark.parametrize("kind", ["contact", "company"])
def test_the_rules_scans_read_the_narrow_covering_indexes(kind: str) -> None:
    mirror = rich_shop()
    config = RICH.model_copy(update={"customer": CustomerConfig(kind=kind)})
    custom, _ = rules_read._custom_sql(wanted_fields(config)[0])
    deal_sql, params = rules_read._deal_sql(config)
    for sql, args in ((deal_sql, [*params, 0, 100]),
                      (rules_read._deal_values_sql(custom, False), custom)):
        plan = " ".join(row[3] for row in mirror.db.execute(f"explain query plan {sql}",
                                                            args).fetchall())
        assert "USING COVERING INDEX deals_rules_scan" in plan, sql
    contacts_sql = rules_read._record_sql("contacts")
    plan = " ".join(row[3] for row in mirror.db.execute(
        f"explain query plan {contacts_sql}").fetchall())
    assert "USING COVERING INDEX contacts_rules_scan" in plan


PHONES = ["+7 916 123-45-67", "8 (916) 123-45-67", "8.916.123.45.67", "+79161234567",
          "+7\u00a0916\u00a0123\u00a04567", "+7 916 123-45-6", "+7 916 123-45-678",
          "7 916 123 45 67", "+7 ٩١٦ 123 45 67", "+44 20 7946 0958", "", "  ", "call me",
          "+7 916 123-45-67 ext", "8-800-555-35-35"]


@pytest.mark.parametrize("region", ["RU", "GB"])
def test_phones_decided_by_the_fast_pattern_agree_with_the_python_check(region: str) -> None:
    mirror = Mirror.memory()
    write(mirror, "contacts", [contact(i, phones=[p]) for i, p in enumerate(PHONES, start=1)]
          + [contact(100, phones=["call me", "+7 916 123-45-67"]), contact(101, phones=[])])
    config = RulesConfig(customer=CustomerConfig(phone_region=region))
    columns = rules_io.load_record_columns(mirror, "contacts", config)
    expected = [reachability([p], [], region)[0] for p in PHONES] + [True, False]
    assert columns.has_phone.tolist() == expected
    if region == "RU":  # the common Russian shapes never reach the Python check
        fast = [bool(rules_read._ONE_RU_PHONE.match(json.dumps([p]))) for p in PHONES]
        assert all(e for f, e in zip(fast, expected[:len(PHONES)], strict=True) if f)
        assert sum(fast) >= 4


EMAILS = ["a@b.ru", "client1@mail.ru", "first.last+tag@sub.example.com", "a@b.c", "a@b.",
          "a@.ru", "@b.ru", "a@b", "a@@b.ru", "a@b@c.ru", "a b@c.ru", " a@b.ru ", "a@b.ru\t",
          "a@b.c.d", "a@b.cc.d", "a@b.c.dd", "ива@почта.рф", "a@b.r\u00a0u", "a@b..ru", "",
          "a%b@c-d.ru", "a@b.ru.", "a@-.ru"]


def test_emails_decided_by_the_fast_pattern_agree_with_the_python_check() -> None:
    mirror = Mirror.memory()
    write(mirror, "contacts", [contact(i, emails=[e]) for i, e in enumerate(EMAILS, start=1)]
          + [contact(100, emails=["nope", "a@b.ru"]), contact(101, emails=[])])
    columns = rules_io.load_record_columns(mirror, "contacts", RulesConfig())
    expected = [reachability([], [e], "RU")[1] for e in EMAILS] + [True, False]
    assert columns.has_email.tolist() == expected
    # the pattern on the JSON text only ever says yes where the check would, and decides
    # most plain addresses without parsing
    fast = [bool(rules_read._ONE_EMAIL.match(json.dumps([e]))) for e in EMAILS]
    assert all(e for f, e in zip(fast, expected[:len(EMAILS)], strict=True) if f)
    assert sum(fast) >= 5


@pytest.mark.parametrize("staged", [False, True])
def test_absent_values_are_stored_as_sql_null(staged: bool, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # the writers bind NaN for None (rules_rows.NULL): SQLite must store NULL, never a real
    if staged:
        if not can_fork():
            pytest.skip("fork is not available here")
        monkeypatch.setattr(rules_store, "PARALLEL_MIN_LEDGER_ROWS", 1)
    mirror = rich_shop(Mirror.open(tmp_path / "m.db"))
    result = run_rules(mirror, RICH, as_of=AS_OF)
    nulls_seen = 0
    for name, rows in (("customer_state", result.states), ("points_ledger", result.ledger)):
        for column in table(mirror, name)[0]:
            if column in ("computed_at", "fingerprint", "customer_kind"):
                continue
            want = sum(getattr(row, column) is None for row in rows)
            kinds = dict(mirror.db.execute(f"select typeof({column}), count(*) from {name} "
                                           f"group by 1").fetchall())
            assert kinds.get("null", 0) == want, (name, column, kinds)
            assert "real" not in kinds or column in {"revenue", "median_gap_days",
                                                     "churn_score", "p_alive",
                                                     "expected_purchases", "predicted_clv"}
            nulls_seen += want
    assert nulls_seen > 10  # prospects' RFM and dates, expiries' deal and tier


AMOUNTS = st.one_of(st.floats(allow_nan=False), st.floats(-1e7, 1e7),
                    st.integers(-10**9, 10**9).map(lambda k: k / 100),
                    st.sampled_from([0.0, -0.0, 1e-300, 2.0**-10, 2.0**-11, 2.0**53,
                                     2.0**53 - 1, 0.1, 1e21, float("inf")]))


@settings(max_examples=25, deadline=None)
@given(st.lists(AMOUNTS, min_size=1, max_size=40))
def test_the_deal_scan_reads_every_amount_exactly(amounts: list[float]) -> None:
    # amounts travel as a whole part and a scaled fraction, or as stored when that is
    # not exact: either way the float read is the float stored, bit for bit
    mirror = Mirror.memory()
    write(mirror, "deals", [deal(i, 1, "2025-01-15T12:00:00+03:00", a)
                            for i, a in enumerate(amounts, start=1)])
    stored = [row[0] for row in mirror.db.execute("select amount from deals order by id")]
    read = rules_read.load_deal_columns(mirror, RulesConfig()).amount.tolist()
    assert [float(a).hex() for a in stored] == [a.hex() for a in read]
