"""Ledger edge cases: the Silver → Gold step, a company customer, expiry on its exact day."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from rules.config import CustomerConfig, LoyaltyConfig, RulesConfig
from rules.engine import compute
from rules.models import Company, Contact, Deal

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)


def won(deal_id: int, day: date, contact: int | None = 1, company: int | None = None,
        amount: float = 1000.0) -> Deal:
    moment = datetime.combine(day, time(12), MSK)
    return Deal(id=deal_id, contact_id=contact, company_id=company, title=None,
                amount=amount, currency="RUB", status="won", created_at=moment,
                closed_at=moment)


def ago(days: int) -> date:
    return AS_OF.date() - timedelta(days=days)


def test_the_26th_purchase_earns_silver_and_the_27th_gold() -> None:
    # The Nth purchase earns at the tier of N − 1 prior purchases: 25 prior → Silver 5 %
    # (1000 ₽ → 50), 26 prior → Gold 7 % (→ 70).
    result = compute([Contact(id=1)], [won(i, ago(300 - i)) for i in range(1, 28)], [],
                     RulesConfig(), AS_OF)
    earns = [(e.points, e.tier_at_purchase) for e in result.ledger]
    assert earns[24:] == [(50, "Silver"), (50, "Silver"), (70, "Gold")]  # #25, #26, #27
    # 11 × 30 (Bronze) + 15 × 50 (Silver, #12–#26) + 70 (Gold)
    assert result.states[0].points_balance == 11 * 30 + 15 * 50 + 70
    assert result.states[0].tier == "Gold"


def test_a_company_customer_has_its_own_ledger_and_tier() -> None:
    # The deals count for company 10, not for the contact on them; the contact's birthday
    # (the day of purchase #12) does not double a company's points.
    config = RulesConfig(customer=CustomerConfig(kind="company"))
    contact = Contact(id=1, birthday=ago(3).replace(year=1990))
    deals = [won(i, ago(100 - i), contact=1, company=10) for i in range(1, 12)]
    deals.append(won(50, ago(3), contact=1, company=10))
    result = compute([contact], deals, [Company(id=10)], config, AS_OF)
    assert {e.customer_id for e in result.ledger} == {10}
    assert [e.points for e in result.ledger] == [30] * 11 + [50]  # #12 at Silver, no ×2
    state = result.states[0]
    assert (state.customer_id, state.customer_kind, state.tier) == (10, "company", "Silver")
    assert (state.points_balance, state.purchases_to_next_tier) == (11 * 30 + 50, 14)
    assert state.perks == ("free delivery",)


@pytest.mark.parametrize(("as_of_day", "balance"), [(date(2025, 2, 28), 30),
                                                    (date(2025, 3, 1), 0)])
def test_points_expire_on_the_day_credit_day_plus_expiry_days(as_of_day: date,
                                                               balance: int) -> None:
    # Credited on 2025-01-30 with expiry_days = 30: valid through 2025-02-28, expired at
    # the start of 2025-03-01 = d + 30, so an as_of on that very day shows the expiry.
    config = RulesConfig(loyalty=LoyaltyConfig(expiry_days=30))
    as_of = datetime.combine(as_of_day, time(12), MSK)
    result = compute([Contact(id=1)], [won(1, date(2025, 1, 30))], [], config, as_of)
    assert result.states[0].points_balance == balance
    expiries = [(e.entry_key, e.points, e.at) for e in result.ledger if e.kind == "expire"]
    assert expiries == ([] if balance else [("expire:earn:deal:1", -30, date(2025, 3, 1))])


@pytest.mark.parametrize("deal_high", [10**6, 2**55, 2**61])
def test_packed_entry_order_equals_the_five_key_lexsort(deal_high: int) -> None:
    """The one-key packing (small ids), the two-key one (deal ids too wide for one key)
    and the plain lexsort (too wide for two) must all order exactly as (row, day, phase,
    deal, sub) would."""
    from itertools import pairwise

    from rules.ledger_order import entry_order

    rng = np.random.default_rng(7)
    n = 20_000
    row = rng.integers(0, 50, n).astype(np.int32)
    day = rng.integers(730_000, 730_010, n).astype(np.int32)
    phase = rng.integers(0, 4, n).astype(np.int8)
    deal = rng.integers(-1, 5, n).astype(np.int64)
    deal[::97] = deal_high
    sub = rng.integers(0, 3, n).astype(np.int8)
    expected = np.lexsort((sub, deal, phase, day, row))
    cut = [0, 7_000, 7_001, 15_000, n]  # in parts, as the ledger assembles them
    parts = [[key[a:b] for a, b in pairwise(cut)]
             for key in (row, day, phase, deal, sub)]
    got = entry_order(*parts)
    assert all(part == [] for part in parts)  # consumed
    keys = np.stack([row, day, phase, deal, sub]).astype(np.int64)
    assert (keys[:, got] == keys[:, expected]).all()
    assert np.array_equal(got, expected)  # both sorts are stable: identical permutations


def test_extras_tied_on_every_number_are_ordered_by_entry_key() -> None:
    from rules.ledger_order import break_ties_by_entry_key
    from rules.models import LedgerEntry

    at = date(2026, 1, 1)
    extras = [LedgerEntry(1, "bonus", 5, 10, at, None, "r", key)
              for key in ("bonus:b", "bonus:c", "x", "bonus:a", "y")]
    # Five key rows × five entries: the first four entries tie, the fifth stands apart.
    keys = np.array([[0, 0, 0, 0, 1]], dtype=np.int64).repeat(5, axis=0)
    order = [1, 0, 3, 4, 2]  # "x" (entry 2) sits last, in the column that differs
    break_ties_by_entry_key(keys, order, extras)
    assert [extras[i].entry_key for i in order] == ["bonus:a", "bonus:b", "bonus:c", "y", "x"]
