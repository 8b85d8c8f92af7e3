"""Properties of the ledger under any history and any later change to it.

* the balance is the sum of the customer's entries, and entry keys are unique;
* every reversal reverses an entry that is in the ledger, once;
* a balance goes negative only through a reversal (of points already spent);
* recomputing with the ledger just produced changes nothing (idempotent), also after the
  history changed (deals lost, deleted, gone, moved to another customer, re-priced,
  re-dated, spent) and after it changed back;
* the ledger does not depend on the order of the input records.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.config import BonusRule, LoyaltyConfig, RulesConfig
from rules.engine import compute
from rules.models import Contact, Deal, RulesResult

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)
# Contact 1 has a 29 February birthday, contact 2 a referral bonus, contact 3 neither.
CONTACTS = [Contact(id=1, birthday=date(1992, 2, 29)),
            Contact(id=2, fields={"UF_CRM_REFERRAL": "Y"}), Contact(id=3)]

deal_specs = st.lists(
    st.tuples(st.integers(1, 3), st.integers(0, 400), st.integers(0, 5000),
              st.sampled_from(["", "", "25", "400", "5000"]), st.booleans()),
    min_size=1, max_size=25,
)
changes = st.lists(st.sampled_from(["keep", "keep", "lost", "deleted", "gone", "move",
                                    "amount", "redate", "spend"]),
                   min_size=25, max_size=25)
loyalties = st.builds(
    LoyaltyConfig,
    expiry_days=st.sampled_from([0, 1, 30, 120]),
    birthday_window_days=st.sampled_from([0, 3]),
    bonuses=st.just((BonusRule(field="UF_CRM_REVIEW", entity="deal", points=200,
                               reason="review left"),
                     BonusRule(field="UF_CRM_REFERRAL", entity="contact", points=500,
                               reason="referred a friend"))),
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


def changed(deal: Deal, what: str) -> Deal | None:
    """``deal`` after ``what`` happened to it in the CRM (None: it left the mirror)."""
    if what == "lost":
        return replace(deal, status="lost")
    if what == "deleted":
        return replace(deal, deleted_at=AS_OF)
    if what == "move":
        return replace(deal, contact_id=(deal.contact_id or 0) % 3 + 1)
    if what == "amount":
        return replace(deal, amount=(deal.amount or 0.0) * 2 + 1)
    if what == "redate" and deal.closed_at is not None:
        return replace(deal, closed_at=deal.closed_at - timedelta(days=17))
    if what == "spend":
        return replace(deal, fields={**deal.fields, "UF_CRM_POINTS_SPENT": "100"})
    return deal if what in ("keep", "redate") else None


def change(deals: list[Deal], how: list[str]) -> list[Deal]:
    out = (changed(deal, what) for deal, what in zip(deals, how, strict=False))
    return [deal for deal in out if deal is not None]


def assert_consistent(result: RulesResult) -> None:
    sums = dict.fromkeys((s.customer_id for s in result.states), 0)
    keys: set[tuple[int, str]] = set()
    for entry in result.ledger:
        sums[entry.customer_id] += entry.points
        assert (entry.customer_id, entry.entry_key) not in keys, entry
        keys.add((entry.customer_id, entry.entry_key))
    assert {s.customer_id: s.points_balance for s in result.states} == sums
    reversed_by = [(e.customer_id, e.entry_key.removeprefix("reversal:"))
                   for e in result.ledger if e.kind == "reversal"]
    assert set(reversed_by) <= keys, "a reversal of an entry that is not in the ledger"
    debtors = {customer for customer, _ in reversed_by}
    assert all(s.points_balance >= 0 or s.customer_id in debtors for s in result.states)


def recompute(deals: list[Deal], config: RulesConfig, as_of: datetime,
              previous: RulesResult | None) -> RulesResult:
    """Compute, check consistency, and check that doing it again changes nothing."""
    ledger = list(previous.ledger) if previous else []
    result = compute(CONTACTS, deals, [], config, as_of, ledger)
    assert_consistent(result)
    again = compute(CONTACTS, deals, [], config, as_of, list(result.ledger))
    assert list(again.ledger) == list(result.ledger)
    return result


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deal_specs, changes, loyalties, st.integers(0, 200), st.integers(0, 200))
def test_ledger_is_consistent_and_recomputation_idempotent(
        specs: list[tuple[int, int, int, str, bool]], how: list[str], loyalty: LoyaltyConfig,
        later: int, later_still: int) -> None:
    config = RulesConfig(loyalty=loyalty)
    deals = build(specs)
    first = recompute(deals, config, AS_OF, None)
    second = recompute(change(deals, how), config, AS_OF + timedelta(days=later), first)
    # ...and the CRM changes back (a lost deal won again, a moved one moved back)
    recompute(deals, config, AS_OF + timedelta(days=later + later_still), second)
    shuffled = compute(list(reversed(CONTACTS)), list(reversed(deals)), [], config, AS_OF)
    assert list(shuffled.ledger) == list(first.ledger)
