"""Ledger rows built by SQLite from numbers equal the rows written from the entries."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from connector.mirror import Mirror, table_sql
from connector.rules_rows import vector_ledger_insert, write_ledger
from rules.config import BonusRule, LoyaltyConfig, RulesConfig, TierConfig
from rules.engine import compute
from rules.models import Contact, Deal, RulesResult

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)


def deal(n: int, contact: int, days_ago: int, amount: float, **fields: Any) -> Deal:
    moment = datetime.combine(AS_OF.date() - timedelta(days=days_ago), time(12), MSK)
    return Deal(id=n, contact_id=contact, company_id=None, title=None, amount=amount,
                currency="RUB", status="won", created_at=moment, closed_at=moment,
                fields=fields)


def ledger_of(tier_names: tuple[str, str]) -> RulesResult:
    tiers = (TierConfig(name=tier_names[0], min_purchases=0, cashback_percent=3),
             TierConfig(name=tier_names[1], min_purchases=3, cashback_percent=5.5))
    config = RulesConfig(loyalty=LoyaltyConfig(
        tiers=tiers, expiry_days=90, redeem_field="UF_CRM_POINTS_SPENT",
        bonuses=(BonusRule(field="UF_CRM_REVIEW", entity="deal", points=200,
                           reason="review left? it's 'nice'"),)))
    contacts = [Contact(id=1, birthday=date(1990, 2, 10)), Contact(id=2), Contact(id=3)]
    deals = [deal(10 + i, 1 + i % 3, 200 - 15 * i, 1000.0 + 17 * i,
                  **({"UF_CRM_REVIEW": "Y"} if i % 4 == 0 else {}),
                  **({"UF_CRM_POINTS_SPENT": "20"} if i % 5 == 3 else {}))
             for i in range(11)]
    deals.append(deal(99, 1, 19, 500.0))  # 19 days ago: on the birthday, 10 Feb
    return compute(contacts, deals, [], config, AS_OF)


def written(result: RulesResult, with_view: bool) -> list[tuple[Any, ...]]:
    schema = Mirror.memory().db
    conn = sqlite3.connect(":memory:")
    conn.execute(table_sql(schema, "points_ledger"))
    conn.execute(table_sql(schema, "points_ledger_digest"))
    entries = result.ledger if with_view else list(result.ledger)
    write_ledger(conn, entries, result.ledger_view if with_view else None, "contact")
    return conn.execute("select * from points_ledger order by customer_id, entry_key").fetchall()


@pytest.mark.parametrize("names", [("Bronze", "Silver"), ("O'Brien ?", "Gold 'VIP'?"),
                                   ("Nul\x00l", "Silver")])
def test_rows_built_from_numbers_equal_rows_from_the_entries(names: tuple[str, str]) -> None:
    result = ledger_of(names)
    kinds = {e.kind for e in result.ledger}
    assert {"earn", "expire", "bonus", "redeem"} <= kinds
    assert any("birthday" in (e.reason or "") for e in result.ledger)
    built = vector_ledger_insert("contact", result.ledger_view)
    assert (built is None) == ("\x00" in names[0])  # a NUL cannot be an SQL literal
    assert written(result, with_view=True) == written(result, with_view=False)
