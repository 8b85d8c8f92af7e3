"""Loyalty ledger: tiers, rounding, birthdays, bonuses, redemption, expiry, reversals."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from rules.config import BonusRule, LoyaltyConfig, RulesConfig
from rules.engine import compute
from rules.loyalty import birthday_mask, earn_points
from rules.models import Contact, Deal, LedgerEntry, RulesResult

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)


def on(day: date) -> datetime:
    return datetime.combine(day, time(12), MSK)


def ago(days: int) -> date:
    return AS_OF.date() - timedelta(days=days)


def won(deal_id: int, contact: int, day: date, amount: float = 1000.0,
        **fields: Any) -> Deal:
    return Deal(id=deal_id, contact_id=contact, company_id=None, title=None, amount=amount,
                currency="RUB", status="won", created_at=on(day), closed_at=on(day),
                fields=fields)


def run(deals: list[Deal], contacts: list[Contact] | None = None,
        loyalty: LoyaltyConfig | None = None, previous: Any = (),
        as_of: datetime = AS_OF) -> RulesResult:
    config = RulesConfig(loyalty=loyalty or LoyaltyConfig())
    return compute(contacts or [Contact(id=1)], deals, [], config, as_of, previous)


def points(result: RulesResult) -> list[tuple[str, int]]:
    return [(e.entry_key, e.points) for e in result.ledger]


def test_nth_purchase_earns_at_the_tier_of_n_minus_1_prior_purchases() -> None:
    deals = [won(i, 1, ago(300 - i)) for i in range(1, 13)]
    result = run(deals)
    earned = [e.points for e in result.ledger]
    assert earned == [30] * 11 + [50]  # 12th purchase: 11 prior → Silver 5 %
    assert [e.tier_at_purchase for e in result.ledger][-2:] == ["Bronze", "Silver"]
    state = result.states[0]
    assert (state.tier, state.points_balance, state.purchases_to_next_tier) == ("Silver", 380, 14)
    assert state.perks == ("free delivery",)
    eleven = run(deals[:11]).states[0]
    assert (eleven.tier, eleven.purchases_to_next_tier) == ("Silver", 15)


def test_gold_is_the_top_tier() -> None:
    state = run([won(i, 1, ago(300 - i)) for i in range(1, 27)]).states[0]
    assert (state.tier, state.purchases_to_next_tier) == ("Gold", None)
    assert state.perks == ("priority support", "gifts")


def test_points_round_half_up_in_exact_integers() -> None:
    kop = np.array([101666, 101667, 105000, 1650, 5000, 0], dtype=np.int64)
    got = earn_points(kop, np.full(6, 300, dtype=np.int64), np.ones(6, dtype=np.int64))
    assert got.tolist() == [30, 31, 32, 0, 2, 0]


def test_zero_amount_purchase_earns_zero_points_but_counts() -> None:
    result = run([won(1, 1, ago(5), amount=0.0)])
    assert points(result) == [("earn:deal:1", 0)]
    assert result.states[0].purchases == 1


def test_birthday_on_29_february_in_leap_and_non_leap_years() -> None:
    contact = Contact(id=1, birthday=date(1992, 2, 29))
    deals = [won(1, 1, date(2024, 2, 29)), won(2, 1, date(2024, 2, 28)),
             won(3, 1, date(2025, 2, 28)), won(4, 1, date(2025, 3, 1))]
    as_of = datetime(2025, 3, 1, 20, tzinfo=MSK)
    feb28 = run(deals, [contact], as_of=as_of)
    # ledger order is by date: 28.02.2024, 29.02.2024, 28.02.2025, 01.03.2025
    assert [e.deal_id for e in feb28.ledger] == [2, 1, 3, 4]
    assert [e.points for e in feb28.ledger] == [30, 60, 60, 30]
    assert "×2 birthday" in feb28.ledger[1].reason
    mar1 = run(deals, [contact], LoyaltyConfig(leap_day_birthday="mar1"), as_of=as_of)
    assert [e.points for e in mar1.ledger] == [30, 60, 30, 60]


def test_birthday_window_crosses_the_new_year() -> None:
    day = np.array([date(2024, 12, 29).toordinal(), date(2024, 12, 28).toordinal(),
                    date(2025, 1, 4).toordinal(), date(2025, 1, 5).toordinal()])
    ones = np.ones(4, dtype=np.int64)
    assert birthday_mask(day, ones, ones, 3).tolist() == [True, False, True, False]
    assert birthday_mask(day, ones * 0, ones, 3).tolist() == [False] * 4  # unknown birthday


def test_customer_without_birthday_earns_plain_cashback() -> None:
    assert [e.points for e in run([won(1, 1, ago(5))]).ledger] == [30]


REVIEW = BonusRule(field="UF_CRM_REVIEW", entity="deal", equals="Y", points=200,
                   reason="review left")
REFERRAL = BonusRule(field="UF_CRM_REFERRAL", entity="contact", points=500,
                     reason="referred a friend")


def test_bonuses_once_per_record_and_stable_first_seen_date() -> None:
    contact = Contact(id=1, fields={"UF_CRM_REFERRAL": "Y"})
    deals = [won(1, 1, ago(10), UF_CRM_REVIEW="Y"), won(2, 1, ago(5), UF_CRM_REVIEW="N")]
    loyalty = LoyaltyConfig(bonuses=(REVIEW, REFERRAL))
    first = run(deals, [contact], loyalty)
    assert points(first) == [("earn:deal:1", 30), ("bonus:UF_CRM_REVIEW:deal:1", 200),
                             ("earn:deal:2", 30), ("bonus:UF_CRM_REFERRAL:contact:1", 500)]
    assert first.ledger[3].at == AS_OF.date()
    later = run(deals, [contact], loyalty, previous=list(first.ledger),
                as_of=AS_OF + timedelta(days=7))
    assert list(later.ledger) == list(first.ledger)
    assert later.states[0].points_balance == 760


def test_redemption_is_clamped_to_the_balance_before_the_deal() -> None:
    deals = [won(1, 1, ago(20)), won(2, 1, ago(10), UF_CRM_POINTS_SPENT="100")]
    result = run(deals)
    assert points(result) == [("earn:deal:1", 30), ("redeem:deal:2", -30), ("earn:deal:2", 30)]
    assert "clamped" in result.ledger[1].reason
    assert result.states[0].points_balance == 30
    assert any("1 redemptions clamped" in n for n in result.notes)


def test_fifo_expiry_after_partial_redemption() -> None:
    deals = [won(1, 1, ago(100)), won(2, 1, ago(80)),
             won(3, 1, ago(75), UF_CRM_POINTS_SPENT="40")]
    result = run(deals, loyalty=LoyaltyConfig(expiry_days=30))
    assert [(e.entry_key, e.points, e.at) for e in result.ledger] == [
        ("earn:deal:1", 30, ago(100)), ("earn:deal:2", 30, ago(80)),
        ("redeem:deal:3", -40, ago(75)), ("earn:deal:3", 30, ago(75)),
        ("expire:earn:deal:2", -20, ago(50)), ("expire:earn:deal:3", -30, ago(45)),
    ]
    assert result.states[0].points_balance == 0


def test_expiry_without_redemptions_is_whole_lots() -> None:
    result = run([won(1, 1, ago(40)), won(2, 1, ago(20))], loyalty=LoyaltyConfig(expiry_days=30))
    assert [(e.entry_key, e.points, e.at) for e in result.ledger] == [
        ("earn:deal:1", 30, ago(40)), ("earn:deal:2", 30, ago(20)),
        ("expire:earn:deal:1", -30, ago(10))]
    assert result.states[0].points_balance == 30


def test_won_deal_turned_lost_is_reversed_exactly_once() -> None:
    deals = [won(1, 1, ago(50)), won(2, 1, ago(40))]
    first = run(deals)
    assert first.states[0].points_balance == 60
    lost = [deals[0], replace(deals[1], status="lost")]
    second = run(lost, previous=list(first.ledger))
    assert points(second) == [("earn:deal:1", 30), ("earn:deal:2", 30),
                              ("reversal:earn:deal:2", -30)]
    assert second.ledger[2].at == AS_OF.date()
    assert second.states[0].points_balance == 30
    third = run(lost, previous=list(second.ledger), as_of=AS_OF + timedelta(days=3))
    assert list(third.ledger) == list(second.ledger)
    assert not any("reversed" in n for n in third.notes)


def test_deleted_deal_is_reversed_like_a_lost_one() -> None:
    deals = [won(1, 1, ago(50)), won(2, 1, ago(40))]
    first = run(deals)
    deleted = run([deals[0], replace(deals[1], deleted_at=AS_OF)], previous=list(first.ledger))
    vanished = run([deals[0]], previous=list(first.ledger))
    assert points(deleted) == points(vanished) == [
        ("earn:deal:1", 30), ("earn:deal:2", 30), ("reversal:earn:deal:2", -30)]


def test_reversal_of_spent_points_can_leave_a_negative_balance() -> None:
    deals = [won(1, 1, ago(50)), won(2, 1, ago(40), amount=0.0, UF_CRM_POINTS_SPENT="30")]
    first = run(deals)
    assert first.states[0].points_balance == 0
    second = run([replace(deals[0], status="lost"), deals[1]], previous=list(first.ledger))
    assert points(second) == [("earn:deal:1", 30), ("redeem:deal:2", -30),
                              ("earn:deal:2", 0), ("reversal:earn:deal:1", -30)]
    assert second.states[0].points_balance == -30


def test_reversal_withdrawn_when_the_deal_counts_again() -> None:
    deals = [won(1, 1, ago(50)), won(2, 1, ago(40))]
    first = run(deals)
    second = run([deals[0]], previous=list(first.ledger))
    again = run(deals, previous=list(second.ledger))
    assert list(again.ledger) == list(first.ledger)
    assert any("withdrawn" in n for n in again.notes)


def test_lost_redemption_deal_refunds_the_points() -> None:
    deals = [won(1, 1, ago(50), amount=2000.0), won(2, 1, ago(40), UF_CRM_POINTS_SPENT="50")]
    first = run(deals)
    assert first.states[0].points_balance == 60 - 50 + 30
    second = run([deals[0]], previous=list(first.ledger))
    assert points(second)[-2:] == [("reversal:earn:deal:2", -30), ("reversal:redeem:deal:2", 50)]
    assert second.states[0].points_balance == 60


def test_balance_is_the_sum_of_entries() -> None:
    deals = [won(i, 1 + i % 3, ago(5 * i), UF_CRM_POINTS_SPENT="10" if i % 4 == 0 else "")
             for i in range(1, 20)]
    result = run(deals, [Contact(id=i) for i in (1, 2, 3)])
    sums: dict[int, int] = {}
    for entry in result.ledger:
        assert isinstance(entry, LedgerEntry)
        sums[entry.customer_id] = sums.get(entry.customer_id, 0) + entry.points
    assert {s.customer_id: s.points_balance for s in result.states} == sums


def test_deal_ids_beyond_32_bits_never_collide_with_small_ones() -> None:
    big = 2**32 + 5  # (row << 32) | deal packing would confuse it with deal 5 of row 1
    deals = [won(big, 1, ago(50)), won(5, 2, ago(40))]
    contacts = [Contact(id=1), Contact(id=2)]
    first = run(deals, contacts)
    second = run([replace(deals[0], status="lost"), deals[1]], contacts,
                 previous=list(first.ledger))
    assert points(second) == [(f"earn:deal:{big}", 30), (f"reversal:earn:deal:{big}", -30),
                              ("earn:deal:5", 30)]
    assert [s.points_balance for s in second.states] == [0, 30]


def test_an_earn_re_priced_by_an_earlier_reversal_is_noted() -> None:
    deals = [won(i, 1, ago(300 - i)) for i in range(1, 13)]
    first = run(deals)
    assert points(first)[-1] == ("earn:deal:12", 50)  # 11 earlier purchases: Silver
    second = run([replace(deals[0], status="lost"), *deals[1:]], previous=list(first.ledger))
    # deal 12 is now the 11th purchase: Bronze again; the ledger says so in a note
    assert dict(points(second))["earn:deal:12"] == 30
    assert dict(points(second))["reversal:earn:deal:1"] == -30
    assert any(n.startswith("1 earns re-priced") for n in second.notes)
    unchanged = run([replace(deals[0], status="lost"), *deals[1:]],
                    previous=list(second.ledger))
    assert not any("re-priced" in n for n in unchanged.notes)
