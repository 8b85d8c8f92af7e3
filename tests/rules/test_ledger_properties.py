"""Property: balance = sum of entries, and recomputation with the previous ledger is stable."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.config import BonusRule, LoyaltyConfig, RulesConfig
from rules.engine import compute
from rules.models import Contact, Deal, LedgerEntry, RulesResult

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)
CONTACTS = [Contact(id=i, birthday=date(1990, 1 + i, 10 + i)) for i in range(1, 4)]

deal_specs = st.lists(
    st.tuples(st.integers(1, 3), st.integers(0, 400), st.integers(0, 5000),
              st.sampled_from(["", "", "25", "400"]), st.booleans()),
    min_size=1, max_size=25,
)
changes = st.lists(st.sampled_from(["keep", "keep", "lost", "deleted", "gone"]),
                   min_size=25, max_size=25)
loyalties = st.builds(
    LoyaltyConfig,
    expiry_days=st.sampled_from([0, 30, 120]),
    birthday_window_days=st.sampled_from([0, 3]),
    bonuses=st.just((BonusRule(field="UF_CRM_REVIEW", entity="deal", points=200,
                               reason="review left"),)),
)


def build(specs: list[tuple[int, int, int, str, bool]]) -> list[Deal]:
    deals = []
    for n, (contact, days_ago, amount, spent, review) in enumerate(specs, start=1):
        moment = datetime.combine(AS_OF.date() - timedelta(days=days_ago), time(12), MSK)
        fields = {"UF_CRM_POINTS_SPENT": spent, "UF_CRM_REVIEW": "Y" if review else ""}
        deals.append(Deal(id=n, contact_id=contact, company_id=None, title=None,
                          amount=float(amount), currency="RUB", status="won",
                          created_at=moment, closed_at=moment, fields=fields))
    return deals


def change(deals: list[Deal], how: list[str]) -> list[Deal]:
    out = []
    for deal, what in zip(deals, how, strict=False):
        if what == "lost":
            out.append(replace(deal, status="lost"))
        elif what == "deleted":
            out.append(replace(deal, deleted_at=AS_OF))
        elif what == "keep":
            out.append(deal)
    return out


def assert_balances_are_sums(result: RulesResult) -> None:
    sums = dict.fromkeys((s.customer_id for s in result.states), 0)
    keys: set[tuple[int, str]] = set()
    for entry in result.ledger:
        sums[entry.customer_id] += entry.points
        assert (entry.customer_id, entry.entry_key) not in keys
        keys.add((entry.customer_id, entry.entry_key))
    assert {s.customer_id: s.points_balance for s in result.states} == sums


@settings(max_examples=60, deadline=None)
@given(deal_specs, changes, loyalties, st.integers(0, 40))
def test_ledger_is_consistent_and_recomputation_idempotent(
        specs: list[tuple[int, int, int, str, bool]], how: list[str], loyalty: LoyaltyConfig,
        later: int) -> None:
    config = RulesConfig(loyalty=loyalty)
    deals = build(specs)
    first = compute(CONTACTS, deals, [], config, AS_OF)
    assert_balances_are_sums(first)
    assert list(compute(CONTACTS, deals, [], config, AS_OF, list(first.ledger)).ledger) == \
        list(first.ledger)
    as_of = AS_OF + timedelta(days=later)
    changed = change(deals, how)
    second = compute(CONTACTS, changed, [], config, as_of, list(first.ledger))
    assert_balances_are_sums(second)
    again = compute(CONTACTS, changed, [], config, as_of, list(second.ledger))
    assert list(again.ledger) == list(second.ledger)
    reversed_keys = {e.entry_key for e in second.ledger if e.kind == "reversal"}
    assert len(reversed_keys) == sum(1 for e in second.ledger if e.kind == "reversal")
    assert all(isinstance(e, LedgerEntry) for e in second.ledger)
