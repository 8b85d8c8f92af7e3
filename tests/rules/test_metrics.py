"""The CRR worked example of docs/metrics.md, cohorts and the default period."""

from __future__ import annotations

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
