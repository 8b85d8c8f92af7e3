"""ledger_delta: the stored ledger and a new one compared as numbers, checked against dicts."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from connector.ledger_delta import ledger_delta
from connector.mirror import Mirror, SyncState
from connector.rules_io import run_rules
from rules.config import RulesConfig
from rules.ledger_rows import entry_fingerprint
from rules.models import LedgerEntry

AS_OF = datetime.fromisoformat("2025-03-01T12:00:00+00:00")


def contact(i: int, birthday: str | None = None) -> dict[str, Any]:
    return {"id": i, "name": f"C{i}", "phones": [], "emails": [], "birthday": birthday,
            "responsible_id": 1, "created_at": "2024-01-01T10:00:00+03:00",
            "updated_at": "2024-01-01T10:00:00+03:00", "deleted_at": None, "raw": {}}


def deal(i: int, who: int, day: date, amount: float, status: str = "won",
         **uf: Any) -> dict[str, Any]:
    moment = f"{day.isoformat()}T12:00:00+03:00"
    return {"id": i, "contact_id": who, "company_id": None, "title": "", "amount": amount,
            "currency": "RUB", "status": status, "stage_id": "", "category_id": "0",
            "responsible_id": 1, "created_at": moment, "closed_at": moment,
            "updated_at": moment, "deleted_at": None, "raw": {"ID": str(i), **uf}}


def shop() -> Mirror:
    mirror = Mirror.memory()
    mirror.write_page("contacts", [contact(1), contact(2, "1990-02-20"), contact(3)], [],
                      SyncState("contacts"), seen_at="t")
    start = date(2024, 1, 5)
    rows = [deal(k, 1 + k % 3, start + timedelta(days=9 * k), 1000.0 + 10 * k,
                 UF_CRM_POINTS_SPENT="40" if k % 7 == 3 else "",
                 UF_CRM_REVIEW="Y" if k % 5 == 0 else "") for k in range(1, 40)]
    mirror.write_page("deals", rows, [], SyncState("deals"), seen_at="t")
    return mirror


CONFIG = RulesConfig.model_validate({"loyalty": {"expiry_days": 200, "bonuses": [
    {"field": "UF_CRM_REVIEW", "entity": "deal", "equals": "Y", "points": 100,
     "reason": "review"}]}})


def by_key(rows: list[Any]) -> dict[tuple[int, str], tuple[Any, ...]]:
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def stored_rows(mirror: Mirror) -> dict[tuple[int, str], tuple[Any, ...]]:
    return by_key(mirror.db.execute(
        "select customer_id, entry_key, kind, deal_id, points, at, tier_at_purchase, reason "
        "from points_ledger").fetchall())


def test_the_delta_is_exactly_what_a_dict_comparison_finds() -> None:
    mirror = shop()
    run_rules(mirror, CONFIG, as_of=AS_OF)
    old = stored_rows(mirror)
    keyed = {(c, fp): (c, key) for c, key, fp in mirror.db.execute(
        "select customer_id, entry_key, fingerprint from points_ledger").fetchall()}
    # a lost deal (reversal, later earns re-priced), a deleted one, a new one, a redemption
    # cleared, and 40 days later (more expiries)
    mirror.write_page("deals", [deal(2, 3, date(2024, 1, 23), 1020.0, status="lost"),
                                deal(60, 2, date(2025, 3, 20), 700.0),
                                deal(3, 1, date(2024, 2, 1), 1030.0)], [],
                      SyncState("deals"), seen_at="t")
    mirror.mark_deleted("deals", [10], "2025-04-01T00:00:00+03:00", SyncState("deals"))
    # a deleted customer: the ledger drops what it held
    mirror.mark_deleted("contacts", [3], "2025-04-01T00:00:00+03:00", SyncState("contacts"))
    result = run_rules(mirror, CONFIG, as_of=AS_OF + timedelta(days=40), store=False)
    new = {(e.customer_id, e.entry_key): (e.kind, e.deal_id, e.points, e.at.isoformat(),
                                         e.tier_at_purchase, e.reason)
           for e in result.ledger}
    delta = ledger_delta(result.ledger_view, mirror.db, "contact")
    upserted = {(result.ledger[i].customer_id, result.ledger[i].entry_key)
                for i in delta.upsert.tolist()}
    changed = {k for k, v in new.items() if old.get(k) != v}
    assert upserted == changed
    stale = {keyed[(c, fp)] for c, fp in delta.stale}
    assert stale == {k for k, v in old.items() if new.get(k) != v}  # changed or vanished
    assert delta.stored == len(old)
    kinds = {v[0] for k, v in new.items() if k in upserted}
    assert {"earn", "expire", "reversal"} <= kinds  # the test saw each case
    assert old.keys() - new.keys() and stale & new.keys()  # both vanished and changed rows


def test_an_unchanged_ledger_has_an_empty_delta() -> None:
    mirror = shop()
    result = run_rules(mirror, CONFIG, as_of=AS_OF)
    delta = ledger_delta(result.ledger_view, mirror.db, "contact")
    assert len(delta.upsert) == 0 and delta.stale == [] and delta.stored == len(result.ledger)


def test_a_changed_text_is_a_change() -> None:
    mirror = shop()
    result = run_rules(mirror, CONFIG, as_of=AS_OF)
    # edited by hand: the stored fingerprint no longer describes the row, so it is
    # recomputed here as a later version of the connector would see it
    for key, column, value in (("earn:deal:4", "reason", "edited by hand"),
                               ("earn:deal:5", "tier_at_purchase", "Platinum")):
        row = mirror.db.execute("select customer_id, kind, deal_id, points, at, "
                                "tier_at_purchase, reason from points_ledger where "
                                "entry_key = ?", [key]).fetchone()
        values = dict(zip(("customer_id", "kind", "deal_id", "points", "at",
                           "tier_at_purchase", "reason"), row, strict=True))
        values[column] = value
        entry = LedgerEntry(values["customer_id"], values["kind"], values["deal_id"],
                            values["points"], date.fromisoformat(values["at"]),
                            values["tier_at_purchase"], values["reason"], key)
        mirror.db.execute(f"update points_ledger set {column} = ?, fingerprint = ? where "
                          "entry_key = ?", [value, entry_fingerprint(entry), key])
    delta = ledger_delta(result.ledger_view, mirror.db, "contact")
    assert sorted(result.ledger[i].entry_key for i in delta.upsert.tolist()) == [
        "earn:deal:4", "earn:deal:5"]
    assert len(delta.stale) == 2
