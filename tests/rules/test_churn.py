"""Churn signals with readable reasons, and the BG/NBD fallback."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

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
    assert got.churn_reasons == ("32 days overdue vs usual 14-day rhythm",)
    assert got.churn_score == pytest.approx(0.4)  # overdue fully on, weight 0.4 of 1.0
    assert got.model_used == "signals"


def test_single_purchase_is_judged_against_the_default_cadence() -> None:
    got = state([won(1, 45)])
    assert got.churn_reasons == ("45 days since the only purchase day (expected within 30)",)
    assert got.churn_score == pytest.approx(0.4 * 0.25)  # ratio 1.5 → (1.5-1)/(3-1)


def test_on_rhythm_customer_has_no_reasons() -> None:
    got = state([won(i, d) for i, d in enumerate((5, 19, 33), start=1)])
    assert got.churn_score == 0.0 and got.churn_reasons == ()


def test_falling_frequency() -> None:
    deals = [won(1, 10)] + [won(i, d) for i, d in enumerate((100, 110, 120, 130), start=2)]
    got = state(deals)
    assert "1 purchases in last 90 days vs 4 in the 90 before" in got.churn_reasons


def test_falling_average_check() -> None:
    amounts = [2000.0, 2000.0, 2000.0, 1200.0, 1200.0, 1200.0]
    deals = [won(i, 60 - 10 * i, a) for i, a in enumerate(amounts, start=1)]
    got = state(deals)
    assert "average check fell 40% (1,200 vs 2,000)" in got.churn_reasons
    assert got.churn_score == pytest.approx(0.15 * 0.8)


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


def test_prospects_have_no_risk() -> None:
    got = run([], [Contact(id=1)]).states[0]
    assert (got.churn_score, got.churn_reasons, got.p_alive) == (0.0, (), None)


def test_small_base_falls_back_to_signals_with_a_note() -> None:
    result = run([won(i, 10 * i, contact=i) for i in range(1, 13)],
                 [Contact(id=i) for i in range(1, 13)])
    assert any(n.startswith("BG/NBD not fitted: 12 customers < 30") for n in result.notes)
    assert {s.model_used for s in result.states} == {"signals"}
