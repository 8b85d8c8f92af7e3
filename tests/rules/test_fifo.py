"""The bulk FIFO walk (rules.fifo) against hand-computed lots and the one-by-one walk."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rules.loyalty as loyalty
from rules.config import BonusRule, LoyaltyConfig, RulesConfig
from rules.engine import compute
from rules.fifo import BulkWalk, FifoMoves, fifo_outcome, tied_groups
from rules.models import Contact, Deal, RulesResult

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)


def moves(*rows: tuple[int, int, int, bool]) -> FifoMoves:
    group, day, points, credit = (np.array(c) for c in zip(*rows, strict=True))
    return FifoMoves(group.astype(np.int64), day.astype(np.int64),
                     points.astype(np.int64), credit.astype(bool))


def test_a_redemption_takes_the_oldest_lot_first_and_the_rest_expires() -> None:
    # lots of 100 (day 0) and 50 (day 10); 120 spent on day 20; lots live 30 days
    out = fifo_outcome(moves((0, 0, 100, True), (0, 10, 50, True), (0, 20, 120, False)),
                       expiry_days=30, as_of_day=100)
    assert out.taken.tolist() == [0, 0, 120]
    assert out.expired.tolist() == [0, 30, 0]  # the first lot was spent whole


def test_a_lot_expired_before_the_redemption_cannot_pay_for_it() -> None:
    # the 100 expire on day 30, so on day 35 only the 50 are there: clamped to 50
    out = fifo_outcome(moves((0, 0, 100, True), (0, 10, 50, True), (0, 35, 120, False)),
                       expiry_days=30, as_of_day=100)
    assert out.taken.tolist() == [0, 0, 50]
    assert out.expired.tolist() == [100, 0, 0]


def test_a_lot_expiring_on_the_redemption_day_is_gone_that_day() -> None:
    out = fifo_outcome(moves((0, 0, 100, True), (0, 30, 40, False)),
                       expiry_days=30, as_of_day=100)
    assert out.taken.tolist() == [0, 0]
    assert out.expired.tolist() == [100, 0]


def test_customers_do_not_share_lots_and_lots_not_yet_due_keep_their_points() -> None:
    out = fifo_outcome(moves((0, 0, 100, True), (0, 5, 30, False), (0, 6, 30, False),
                             (1, 7, 10, True), (1, 8, 500, False), (2, 90, 70, True)),
                       expiry_days=30, as_of_day=100)
    assert out.taken.tolist() == [0, 30, 30, 0, 10, 0]
    assert out.expired.tolist() == [40, 0, 0, 0, 0, 0]  # customer 2's lot is not due yet


def test_without_expiry_nothing_expires() -> None:
    out = fifo_outcome(moves((0, 0, 100, True), (0, 500, 60, False), (0, 600, 60, False)),
                       expiry_days=0, as_of_day=1000)
    assert out.taken.tolist() == [0, 60, 40]
    assert out.expired.tolist() == [0, 0, 0]


def test_tied_groups_names_customers_with_two_moves_equal_in_every_key() -> None:
    group = np.array([0, 0, 1, 1, 2], dtype=np.int64)
    day = np.array([1, 1, 1, 2, 3], dtype=np.int64)
    deal = np.array([5, 5, 5, 5, 5], dtype=np.int64)
    assert tied_groups(group, [day, deal]).tolist() == [0]


# Generated histories: the bulk walk and the one-by-one walk must give the same ledger.
deal_specs = st.lists(
    st.tuples(st.integers(1, 4), st.integers(0, 300), st.integers(0, 6000),
              st.sampled_from(["", "", "30", "250", "900", "9000"]), st.booleans(),
              st.booleans()),
    min_size=1, max_size=30,
)


def build(specs: list[tuple[int, int, int, str, bool, bool]]) -> list[Deal]:
    deals = []
    for n, (contact, days_ago, amount, spent, review, photo) in enumerate(specs, start=1):
        moment = datetime.combine(AS_OF.date() - timedelta(days=days_ago), time(12), MSK)
        fields = {"UF_CRM_POINTS_SPENT": spent, "UF_CRM_REVIEW": "Y" if review else "",
                  "UF_CRM_PHOTO": "Y" if photo else ""}
        deals.append(Deal(id=n, contact_id=contact, company_id=None, title=None,
                          amount=float(amount), currency="RUB", status="won",
                          created_at=moment, closed_at=moment, fields=fields))
    return deals


def ledger_of(deals: list[Deal], expiry_days: int) -> RulesResult:
    # two bonuses on one deal tie in every number: that customer takes the slow walk
    bonuses = (BonusRule(field="UF_CRM_REVIEW", entity="deal", points=200, reason="review"),
               BonusRule(field="UF_CRM_PHOTO", entity="deal", points=70, reason="photo"),
               BonusRule(field="UF_CRM_REFERRAL", entity="contact", points=500,
                         reason="referral"))
    config = RulesConfig(loyalty=LoyaltyConfig(expiry_days=expiry_days, bonuses=bonuses,
                                               redeem_field="UF_CRM_POINTS_SPENT"))
    contacts = [Contact(id=1), Contact(id=2, fields={"UF_CRM_REFERRAL": "Y"}),
                Contact(id=3), Contact(id=4)]
    return compute(contacts, deals, [], config, AS_OF)


def one_by_one(history: object, earn_points: object, rows: list[int], events: object,
               expiry_days: int) -> BulkWalk:
    return BulkWalk([], [], list(rows), 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deal_specs, st.sampled_from([0, 1, 30, 120, 400]))
def test_the_bulk_walk_gives_the_one_by_one_walks_ledger(
        specs: list[tuple[int, int, int, str, bool, bool]], expiry_days: int) -> None:
    deals = build(specs)
    bulk = ledger_of(deals, expiry_days)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loyalty, "walk_in_bulk", one_by_one)
        walked = ledger_of(deals, expiry_days)
    assert list(bulk.ledger) == list(walked.ledger)  # the same entries, in the same order
    assert [s.points_balance for s in bulk.states] == [s.points_balance for s in walked.states]
    assert bulk.notes == walked.notes


def test_the_bulk_walk_is_used_for_a_customer_with_redemptions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    walks: list[BulkWalk] = []
    real = loyalty.walk_in_bulk

    def spy(*args: object, **kwargs: object) -> BulkWalk:
        walks.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return walks[-1]

    monkeypatch.setattr(loyalty, "walk_in_bulk", spy)
    deals = build([(1, 200, 1000, "", False, False), (1, 100, 1000, "20", False, False)])
    result = ledger_of(deals, 120)
    mine = [e for e in result.ledger if e.customer_id == 1]
    assert sorted(e.kind for e in mine) == ["earn", "earn", "expire", "redeem"]
    (walk,) = walks
    assert [e.kind for e in walk.entries] == ["redeem"] and walk.left == []
    # the first lot (30 points) paid the 20 spent: 10 expire, built as a column
    assert walk.lot_lost.tolist() == [10]
    assert [e.points for e in mine if e.kind == "expire"] == [-10]
