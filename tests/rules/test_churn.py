"""Churn signals with readable reasons, and the BG/NBD fallback."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.config import ChurnConfig, RulesConfig
from rules.engine import compute
from rules.models import Contact, CustomerState, Deal, RulesResult

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)


def won(deal_id: int, days_ago: int, amount: float = 1000.0, contact: int = 1,
        **fields: Any) -> Deal:
    moment = datetime.combine(AS_OF.date() - timedelta(days=days_ago), time(12), MSK)
    return Deal(id=deal_id, contact_id=contact, company_id=None, title=None, amount=amount,
                currency="RUB", status="won", created_at=moment, closed_at=moment,
                fields=fields)


def run(deals: list[Deal], contacts: list[Contact] | None = None,
        config: RulesConfig | None = None) -> RulesResult:
    return compute(contacts or [Contact(id=1)], deals, [], config or RulesConfig(), AS_OF)


def state(deals: list[Deal], **kw: Any) -> CustomerState:
    return run(deals, **kw).states[0]


def test_overdue_against_own_rhythm() -> None:
    got = state([won(i, d) for i, d in enumerate((46, 60, 74, 88), start=1)])
    assert got.median_gap_days == 14.0
    # overdue: 46 / 14 = 3.3 ≥ 3 → full.  frequency: rate 3 days / 42 days; the window is
    # cut to the 89 days since the first purchase: usual = floor(3 × 89 / 42) = 6, and 4
    # purchase days in it → 1 − 4/6.
    assert got.churn_reasons == ("32 days overdue vs usual 14-day rhythm",
                                 "4 purchase days in the last 89 days (usually 6)")
    assert got.churn_score == pytest.approx(0.4 + 0.2 * (1 - 4 / 6), abs=1e-4)
    assert got.model_used == "signals"


def test_single_purchase_is_judged_against_the_default_cadence() -> None:
    got = state([won(1, 45)])
    assert got.churn_reasons == ("45 days since the only purchase day (expected within 30)",)
    assert got.churn_score == pytest.approx(0.4 * 0.25)  # ratio 1.5 → (1.5-1)/(3-1)


def test_on_rhythm_customer_has_no_reasons() -> None:
    got = state([won(i, d) for i, d in enumerate((5, 19, 33), start=1)])
    assert got.churn_score == 0.0 and got.churn_reasons == ()


def test_falling_frequency_against_the_customers_own_rate() -> None:
    # 5 purchase days from 130 to 10 days ago: 4 gaps in 120 days, so a 90-day window
    # usually holds floor(4 × 90 / 120) = 3; it holds 1.  Overdue: the median gap is 10
    # and the last purchase 10 days ago → 0; the check is flat → 0.
    deals = [won(1, 10)] + [won(i, d) for i, d in enumerate((100, 110, 120, 130), start=2)]
    got = state(deals)
    assert got.churn_reasons == ("1 purchase day in the last 90 days (usually 3)",)
    assert got.churn_score == pytest.approx(0.2 * (1 - 1 / 3), abs=1e-4)


@pytest.mark.parametrize("days_ago", [106, 322])
def test_a_long_gone_one_time_buyer_keeps_full_frequency_strength(days_ago: int) -> None:
    # The old signal compared two 90-day windows and went back to 0 once both were empty:
    # 0.6 at 106 days, 0.4 at 322.  Now: overdue (full at 3 × 30 days) + frequency (full).
    got = state([won(1, days_ago)])
    assert got.churn_reasons == (
        f"{days_ago} days since the only purchase day (expected within 30)",
        "no purchase in the last 90 days")
    assert got.churn_score == pytest.approx(0.6)


def test_a_slow_regular_buyer_has_no_frequency_signal() -> None:
    # Twice a year: the rate puts floor(1 × 90 / 182) = 0 purchase days in a 90-day window,
    # so an empty window is no sign of falling frequency (overdue alone will judge them).
    got = state([won(1, 282), won(2, 100)])
    assert not any("purchase day" in r or "no purchase" in r for r in got.churn_reasons)
    assert got.churn_score == 0.0


def test_falling_average_check() -> None:
    amounts = [2000.0, 2000.0, 2000.0, 1200.0, 1200.0, 1200.0]
    deals = [won(i, 60 - 10 * i, a) for i, a in enumerate(amounts, start=1)]
    got = state(deals)
    assert "average check fell 40% (1,200 vs 2,000)" in got.churn_reasons
    assert got.churn_score == pytest.approx(0.15 * 0.8)


@pytest.mark.parametrize(("nps", "negative"), [("6,0", True), ("6", True), (" 5,5 ", True),
                                              ("6,5", False), ("NaN", False), ("x", False)])
def test_numeric_feedback_accepts_a_decimal_comma(nps: str, negative: bool) -> None:
    got = state([won(1, 10, UF_CRM_NPS=nps)])
    assert (f"negative feedback: UF_CRM_NPS = {nps}" in got.churn_reasons) is negative


def test_negative_feedback_reads_the_latest_rated_purchase() -> None:
    unhappy = state([won(1, 20, UF_CRM_NPS="9"), won(2, 10, UF_CRM_NPS="5")])
    assert "negative feedback: UF_CRM_NPS = 5" in unhappy.churn_reasons
    recovered = state([won(1, 20, UF_CRM_NPS="3"), won(2, 10, UF_CRM_NPS="9")])
    assert not any("feedback" in r for r in recovered.churn_reasons)


def test_ignored_communications_and_at_most_three_reasons() -> None:
    config = RulesConfig(churn=ChurnConfig(ignored_field="UF_CRM_IGNORED"))
    amounts = [2000.0, 2000.0, 2000.0, 2000.0, 500.0, 500.0, 500.0]
    days = [400, 300, 200, 150, 140, 130, 120]
    deals = [won(i, d, a, UF_CRM_NPS="2") for i, (d, a) in enumerate(zip(days, amounts,
                                                                         strict=True))]
    contact = Contact(id=1, fields={"UF_CRM_IGNORED": "6"})
    got = state(deals, contacts=[contact], config=config)
    assert len(got.churn_reasons) == 3
    assert got.churn_reasons[0].endswith("day rhythm")
    assert "6 communications ignored" not in got.churn_reasons  # weakest weight, cut off
    assert got.churn_score > 0.7


@pytest.mark.parametrize(("value", "reason", "strength"), [
    ("2", "2 communications ignored", 2 / 3), ("1,5", "1.5 communications ignored", 0.5),
    ("Y", "communications ignored (UF_CRM_IGNORES = Y)", 1.0)])
def test_ignored_communications_reason_says_what_the_field_holds(
        value: str, reason: str, strength: float) -> None:
    config = RulesConfig(churn=ChurnConfig(ignored_field="UF_CRM_IGNORES"))
    contact = Contact(id=1, fields={"UF_CRM_IGNORES": value})
    got = state([won(1, 10)], contacts=[contact], config=config)
    assert got.churn_reasons == (reason,)
    assert got.churn_score == pytest.approx(0.1 * strength, abs=1e-4)


def test_prospects_have_no_risk() -> None:
    got = run([], [Contact(id=1)]).states[0]
    assert (got.churn_score, got.churn_reasons, got.p_alive) == (0.0, (), None)


def test_small_base_falls_back_to_signals_with_a_note() -> None:
    result = run([won(i, 10 * i, contact=i) for i in range(1, 13)],
                 [Contact(id=i) for i in range(1, 13)])
    assert any(n.startswith("BG/NBD not fitted: 12 customers < 30") for n in result.notes)
    assert {s.model_used for s in result.states} == {"signals"}


LAST = date(2024, 6, 1)  # the last purchase of the generated histories below


@settings(max_examples=80, deadline=None)
@given(gaps=st.lists(st.integers(0, 150), max_size=10),
       amounts=st.lists(st.sampled_from([0.0, 300.0, 1000.0, 5000.0]), min_size=11,
                        max_size=11),
       nps=st.sampled_from(["", "3", "9"]),
       silences=st.lists(st.integers(0, 700), min_size=2, max_size=6, unique=True))
def test_score_never_falls_as_silence_grows(gaps: list[int], amounts: list[float], nps: str,
                                             silences: list[int]) -> None:
    """The same history, looked at later and later: the churn score can only grow."""
    days = [LAST - timedelta(days=sum(gaps[k:])) for k in range(len(gaps))] + [LAST]
    deals = [Deal(id=n, contact_id=1, company_id=None, title=None, amount=amounts[n],
                  currency="RUB", status="won", created_at=_noon(day), closed_at=_noon(day),
                  fields={"UF_CRM_NPS": nps} if nps else {})
             for n, day in enumerate(days)]
    scores = [compute([Contact(id=1)], deals, [], RulesConfig(),
                      _noon(LAST + timedelta(days=s))).states[0].churn_score
              for s in sorted(silences)]
    assert scores == sorted(scores)


def _noon(day: date) -> datetime:
    return datetime.combine(day, time(12), MSK)
