"""Lifecycle boundaries (incl. time zone and cadence mode) and value segments."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from rules.config import LifecycleConfig, RulesConfig, ValueConfig
from rules.engine import compute
from rules.models import Contact, CustomerState, Deal

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)


def at(days_ago: int, hour: int = 12) -> datetime:
    return datetime.combine(AS_OF.date() - timedelta(days=days_ago), time(hour), MSK)


def won(deal_id: int, contact: int, days_ago: int, amount: float = 1000.0) -> Deal:
    return Deal(id=deal_id, contact_id=contact, company_id=None, title=None, amount=amount,
                currency="RUB", status="won", created_at=at(days_ago), closed_at=at(days_ago))


def states(deals: list[Deal], contacts: int,
           config: RulesConfig | None = None) -> dict[int, CustomerState]:
    result = compute([Contact(id=i) for i in range(1, contacts + 1)], deals, [],
                     config or RulesConfig(), AS_OF)
    return {s.customer_id: s for s in result.states}


@pytest.mark.parametrize(("days_ago", "expected"), [
    (29, "new"), (30, "active"), (59, "active"), (60, "sleeping"),
    (99, "sleeping"), (100, "lost"), (400, "lost"),
])
def test_lifecycle_boundaries_for_a_first_and_only_purchase(days_ago: int, expected: str) -> None:
    assert states([won(1, 1, days_ago)], 1)[1].lifecycle == expected


def test_repeat_customer_uses_last_purchase_and_prospect_has_none() -> None:
    got = states([won(1, 1, 200), won(2, 1, 10), won(3, 2, 5)], 3)
    assert got[1].lifecycle == "active"  # first purchase long ago, last 10 days ago
    assert got[2].lifecycle == "new"  # "new" takes precedence over active
    assert got[3].lifecycle == "prospect"


def test_days_are_counted_in_the_portal_zone_not_utc() -> None:
    # 21:30 UTC on (as_of - 60 days) is 00:30 Moscow time the next day: 59 days → active.
    day = AS_OF.date() - timedelta(days=60)
    moment = datetime.combine(day, time(21, 30), UTC)
    deal = Deal(id=1, contact_id=1, company_id=None, title=None, amount=1.0, currency="RUB",
                status="won", created_at=moment, closed_at=moment)
    assert states([deal], 1)[1].lifecycle == "active"
    utc = RulesConfig(timezone="UTC")
    assert states([deal], 1, utc)[1].lifecycle == "sleeping"


def test_cadence_mode_scales_thresholds_with_the_customers_own_rhythm() -> None:
    weekly = [won(i, 1, d) for i, d in enumerate((20, 27, 34, 41), start=1)]
    weekly_lapsed = [won(10 + i, 2, d) for i, d in enumerate((30, 37, 44), start=1)]
    twice_a_year = [won(20 + i, 3, d) for i, d in enumerate((70, 252, 434), start=1)]
    deals = weekly + weekly_lapsed + twice_a_year
    fixed = states(deals, 3)
    assert [fixed[i].lifecycle for i in (1, 2, 3)] == ["active", "active", "sleeping"]
    cadence = RulesConfig(lifecycle=LifecycleConfig(cadence=True))
    got = states(deals, 3, cadence)
    # weekly: sleeping from 2 × 7 = 14 days, lost from 4 × 7 = 28 days
    assert got[1].lifecycle == "sleeping"
    assert got[2].lifecycle == "lost"
    # twice a year: sleeping only after 2 × 182 days
    assert got[3].lifecycle == "active"
    assert got[3].median_gap_days == 182.0


def test_cadence_needs_enough_purchases() -> None:
    cadence = RulesConfig(lifecycle=LifecycleConfig(cadence=True))
    got = states([won(1, 1, 70), won(2, 1, 77)], 1, cadence)  # 2 purchases < 3
    assert got[1].lifecycle == "sleeping"


def test_cadence_counts_distinct_purchase_days_not_deals() -> None:
    # Three deals on two consecutive days: one 1-day gap, not a daily habit.  With deals
    # counted it was "lost" after 8 days; with 2 distinct days < 3 the fixed thresholds
    # apply: 44 days → active.
    cadence = RulesConfig(lifecycle=LifecycleConfig(cadence=True))
    got = states([won(1, 1, 45), won(2, 1, 44), won(3, 1, 44)], 1, cadence)
    assert got[1].lifecycle == "active" and got[1].median_gap_days == 1.0


@pytest.mark.parametrize(("days_since", "expected"), [
    (6, "active"), (7, "sleeping"), (13, "sleeping"), (14, "lost")])
def test_cadence_floors_for_a_daily_buyer(days_since: int, expected: str) -> None:
    # Four days in a row (gaps 1, 1, 1), plus a first purchase 45 days ago so the customer
    # is not "new": median gap 1, so 2 × g = 2 and 4 × g = 4 days are floored to 7
    # (sleeping) and 14 (lost).
    cadence = RulesConfig(lifecycle=LifecycleConfig(cadence=True))
    deals = [won(i, 1, days_since + k) for i, k in enumerate(range(4), start=1)]
    got = states([*deals, won(9, 1, 45)], 1, cadence)
    assert got[1].median_gap_days == 1.0
    assert got[1].lifecycle == expected


def test_cadence_floors_are_configurable_and_ordered() -> None:
    config = LifecycleConfig(cadence=True, cadence_min_days=3, cadence_min_lost_days=5)
    cadence = RulesConfig(lifecycle=config)
    deals = [won(i, 1, 5 + k) for i, k in enumerate(range(4), start=1)] + [won(9, 1, 45)]
    assert states(deals, 1, cadence)[1].lifecycle == "lost"  # 5 days ≥ floor 5
    with pytest.raises(ValueError, match="cadence_min_lost_days"):
        LifecycleConfig(cadence_min_days=7, cadence_min_lost_days=7)


def test_value_top_share_ranks_window_revenue() -> None:
    deals = [won(i, i, 10, amount=100.0 * i) for i in range(1, 11)]
    deals.append(won(11, 11, 400, amount=99999.0))  # outside the 365-day window
    got = states(deals, 12)
    segments = [got[i].value_segment for i in range(1, 13)]
    assert segments == ["base"] * 5 + ["middle"] * 3 + ["vip"] * 2 + ["base", "base"]


def test_value_ties_at_the_cutoff_join_the_band() -> None:
    amounts = [300.0, 200.0, 200.0, 200.0, 100.0]
    got = states([won(i, i, 5, a) for i, a in enumerate(amounts, start=1)], 5)
    assert [got[i].value_segment for i in range(1, 6)] == [
        "vip", "middle", "middle", "middle", "base"]


def test_value_thresholds_mode() -> None:
    config = RulesConfig(value=ValueConfig(mode="thresholds", vip_min=1000, middle_min=500))
    amounts = [1000.0, 999.99, 500.0, 499.0]
    got = states([won(i, i, 5, a) for i, a in enumerate(amounts, start=1)], 4, config)
    assert [got[i].value_segment for i in range(1, 5)] == ["vip", "middle", "middle", "base"]


def test_zero_amount_purchase_counts_but_is_not_valuable() -> None:
    got = states([won(1, 1, 5, amount=0.0)], 1)
    assert got[1].purchases == 1
    assert got[1].value_segment == "base"
    assert got[1].first_purchase == date(2025, 2, 24)
