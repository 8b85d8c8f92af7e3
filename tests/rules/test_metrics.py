"""The CRR worked example of docs/metrics.md, cohorts and the default period."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from rules.config import MetricsConfig, RulesConfig
from rules.engine import compute
from rules.metrics import default_period
from rules.models import CohortRow, Contact, Deal, Metrics

MSK = ZoneInfo("Europe/Moscow")

PURCHASES = {  # customer: [(day, amount)] — the worked example in docs/metrics.md
    1: [(date(2024, 6, 10), 1000.0), (date(2025, 2, 5), 3000.0)],   # A
    2: [(date(2024, 12, 20), 2000.0)],                              # B
    3: [(date(2024, 1, 15), 500.0)],                                # C
    4: [(date(2024, 2, 10), 1500.0)],                               # D
    5: [(date(2025, 2, 14), 1200.0)],                               # F
    6: [(date(2023, 11, 1), 800.0), (date(2025, 2, 20), 1800.0)],   # G
    7: [(date(2025, 3, 5), 700.0)],                                 # H
}


def deals_of(purchases: dict[int, list[tuple[date, float]]]) -> list[Deal]:
    out: list[Deal] = []
    for customer, items in purchases.items():
        for day, amount in items:
            moment = datetime.combine(day, time(12), MSK)
            out.append(Deal(id=len(out) + 1, contact_id=customer, company_id=None, title=None,
                            amount=amount, currency="RUB", status="won", created_at=moment,
                            closed_at=moment))
    return out


def metrics_for(purchases: dict[int, list[tuple[date, float]]], as_of: datetime,
                config: RulesConfig | None = None) -> Metrics:
    contacts = [Contact(id=i) for i in purchases]
    return compute(contacts, deals_of(purchases), [], config or RulesConfig(), as_of).metrics


def test_crr_worked_example() -> None:
    m = metrics_for(PURCHASES, datetime(2025, 3, 10, 12, tzinfo=MSK))
    assert (m.period_start, m.period_end) == (date(2025, 2, 1), date(2025, 3, 1))
    assert (m.customers_at_start, m.customers_at_end, m.new_customers) == (3, 4, 2)
    assert (m.first_time_customers, m.reactivated_customers, m.retained_customers) == (1, 1, 2)
    assert m.crr_percent == pytest.approx(200 / 3)
    assert m.churn_rate_percent == pytest.approx(100 / 3)
    assert (m.period_purchases, m.period_revenue) == (3, 6000.0)
    assert m.average_order_value == 2000.0
    assert m.purchase_frequency == 1.0
    assert m.repeat_purchase_percent == pytest.approx(100 / 3)
    assert m.historical_clv == pytest.approx(11800 / 6)
    assert m.lifecycle_distribution["prospect"] == 0
    assert sum(m.tier_distribution.values()) == 7


def test_cohort_matrix_on_a_tiny_example() -> None:
    purchases = {
        1: [(date(2025, 1, 5), 100.0), (date(2025, 2, 10), 100.0)],
        2: [(date(2025, 1, 20), 100.0)],
        3: [(date(2025, 2, 3), 100.0), (date(2025, 3, 1), 100.0)],
    }
    config = RulesConfig(metrics=MetricsConfig(cohort_months=2))
    m = metrics_for(purchases, datetime(2025, 3, 2, 12, tzinfo=MSK), config)
    assert m.cohorts == (CohortRow("2025-01", 2, (1.0, 0.5)), CohortRow("2025-02", 1, (1.0,)))


def test_default_period_is_the_last_full_months() -> None:
    assert default_period(date(2025, 1, 15), 1) == (date(2024, 12, 1), date(2025, 1, 1))
    assert default_period(date(2025, 3, 1), 3) == (date(2024, 12, 1), date(2025, 3, 1))


def test_empty_base_has_undefined_ratios() -> None:
    m = compute([Contact(id=1)], [], [], RulesConfig(), datetime(2025, 3, 1, tzinfo=MSK)).metrics
    assert m.crr_percent is None and m.average_order_value is None
    assert m.cohorts == () and m.points_liability == 0


def test_activity_window_boundaries_at_the_period_start() -> None:
    # Period February 2025 = [02-01, 03-01), active_days 30: active at start means a
    # purchase in [2025-01-02, 2025-02-01).
    purchases = {
        1: [(date(2025, 1, 2), 100.0)],    # exactly start − active_days: active at start
        2: [(date(2025, 1, 1), 100.0)],    # one day earlier: not active at start
        3: [(date(2025, 1, 31), 100.0)],   # the day before start: active at start
        4: [(date(2025, 2, 1), 100.0)],    # exactly on start: in the period, new (N)
    }
    config = RulesConfig(metrics=MetricsConfig(active_days=30))
    m = metrics_for(purchases, datetime(2025, 3, 10, 12, tzinfo=MSK), config)
    assert (m.period_start, m.period_end) == (date(2025, 2, 1), date(2025, 3, 1))
    # S = {1, 3}; at end (purchase in [01-30, 03-01)): {3, 4}; N = {4}; retained = {3}
    assert (m.customers_at_start, m.customers_at_end, m.new_customers) == (2, 2, 1)
    assert (m.first_time_customers, m.retained_customers) == (1, 1)
    assert (m.period_purchases, m.period_revenue) == (1, 100.0)
    assert m.crr_percent == pytest.approx(50.0)  # (2 − 1) / 2


def test_points_liability_counts_positive_balances_only() -> None:
    # Customer 1 earns 30 on deal 1, spends them on deal 2 (0 ₽), then deal 1 is lost: the
    # reversal takes back 30 already spent, balance −30 (a debt).  Customer 2 holds 60.
    # The shop owes 60, not 60 − 30.
    def won(deal_id: int, contact: int, day: date, amount: float, **fields: str) -> Deal:
        moment = datetime.combine(day, time(12), MSK)
        return Deal(id=deal_id, contact_id=contact, company_id=None, title=None,
                    amount=amount, currency="RUB", status="won", created_at=moment,
                    closed_at=moment, fields=fields)

    as_of = datetime(2025, 3, 10, 12, tzinfo=MSK)
    deals = [won(1, 1, date(2025, 2, 1), 1000.0),
             won(2, 1, date(2025, 2, 5), 0.0, UF_CRM_POINTS_SPENT="30"),
             won(3, 2, date(2025, 2, 7), 2000.0)]
    contacts = [Contact(id=1), Contact(id=2)]
    first = compute(contacts, deals, [], RulesConfig(), as_of)
    lost = [replace(deals[0], status="lost"), *deals[1:]]
    second = compute(contacts, lost, [], RulesConfig(), as_of, list(first.ledger))
    assert [s.points_balance for s in second.states] == [-30, 60]
    assert second.metrics.points_liability == 60
