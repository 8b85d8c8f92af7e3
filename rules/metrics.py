"""Retention metrics for a period [start, end) — formulas and semantics in docs/metrics.md.

"Active at day t" means: at least one purchase on a day in [t − active_days, t).
S = active at start; E = active at end; N = customers who bought in the period without
being active at start (first-time buyers + win-backs).  With a period no longer than
``active_days``, E − N = customers active at both ends, so CRR stays in [0, 100].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date

import numpy as np

from rules.config import MetricsConfig
from rules.history import IntArray, PurchaseHistory
from rules.models import CohortRow, Metrics

__all__ = ["Snapshot", "cohort_matrix", "compute_metrics", "default_period", "month_index",
           "with_snapshot"]

_EPOCH = date(1970, 1, 1).toordinal()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """As-of facts the engine already computed (distributions, liability, model CLV)."""

    lifecycle: Mapping[str, int] = field(default_factory=dict)
    value: Mapping[str, int] = field(default_factory=dict)
    rfm: Mapping[str, int] = field(default_factory=dict)
    tier: Mapping[str, int] = field(default_factory=dict)
    points_liability: int = 0
    predicted_clv: float | None = None


def month_index(days: IntArray) -> IntArray:
    """Months since 1970-01 for each day ordinal."""
    as_dates = (days - _EPOCH).astype("datetime64[D]")
    return as_dates.astype("datetime64[M]").astype(np.int64)


def _add_months(day: date, months: int) -> date:
    total = day.year * 12 + day.month - 1 + months
    return date(total // 12, total % 12 + 1, 1)


def default_period(as_of_day: date, months: int) -> tuple[date, date]:
    """The last ``months`` full calendar months before ``as_of_day``: [start, end)."""
    end = as_of_day.replace(day=1)
    return _add_months(end, -months), end


def _last_before(history: PurchaseHistory, day: int) -> IntArray:
    """Per customer, the last purchase day strictly before ``day`` (-1 if none)."""
    last = np.full(len(history.customers), -1, dtype=np.int64)
    before = history.day < day
    np.maximum.at(last, history.cust[before], history.day[before])
    return last


def _pct(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def cohort_matrix(history: PurchaseHistory, end: date, months: int) -> tuple[CohortRow, ...]:
    """Cohorts (month of first purchase) of the last ``months`` months up to ``end``'s month.

    Cell k = share of the cohort with at least one purchase in month cohort + k; only
    purchases before ``end`` count, so the last month may be partial.
    """
    before = history.day < end.toordinal()
    cust, month = history.cust[before], month_index(history.day[before])
    if len(cust) == 0:
        return ()
    n = len(history.customers)
    first_month = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_month, cust, month)
    last_month = int(month_index(np.array([end.toordinal() - 1]))[0])
    oldest = last_month - months + 1
    in_range = first_month[cust] >= oldest
    span = last_month - oldest + 1
    cell = (first_month[cust] - oldest) * span + (month - first_month[cust])
    cells = span * span
    pairs = np.unique(cust[in_range] * cells + cell[in_range])  # one count per customer
    counts = np.bincount(pairs % cells, minlength=cells).reshape(span, span)
    return tuple(_cohort_row(oldest + c, counts[c], last_month - oldest - c + 1)
                 for c in range(span) if counts[c, 0] > 0)


def _cohort_row(month: int, counts: IntArray, length: int) -> CohortRow:
    size = int(counts[0])
    label = f"{1970 + month // 12:04d}-{month % 12 + 1:02d}"
    return CohortRow(label, size, tuple(float(counts[k]) / size for k in range(length)))


def compute_metrics(history: PurchaseHistory, period_start: date, period_end: date,
                    cfg: MetricsConfig, snapshot: Snapshot | None = None) -> Metrics:
    """CRR, churn, repeat rate, frequency, AOV, CLV and cohorts for [start, end)."""
    snap = snapshot or Snapshot()
    start, end = period_start.toordinal(), period_end.toordinal()
    active_start = _last_before(history, start) >= start - cfg.active_days
    last_end = _last_before(history, end)
    active_end = last_end >= end - cfg.active_days
    in_period = (history.day >= start) & (history.day < end)
    n = len(history.customers)
    bought = np.bincount(history.cust[in_period], minlength=n) > 0
    new = bought & ~active_start
    has = np.diff(history.starts) > 0
    first_day = np.full(n, -1, dtype=np.int64)
    first_day[has] = history.day[history.starts[:-1][has]]
    s, e, acquired = int(active_start.sum()), int(active_end.sum()), int(new.sum())
    retained = int((active_start & active_end).sum())
    counts_before_end = np.bincount(history.cust[history.day < end], minlength=n)
    customers_before_end = int((counts_before_end > 0).sum())
    period_purchases = int(in_period.sum())
    period_revenue = float(history.amount_kop[in_period].sum()) / 100.0
    revenue_before_end = float(history.amount_kop[history.day < end].sum()) / 100.0
    return Metrics(
        period_start=period_start, period_end=period_end,
        customers_at_start=s, customers_at_end=e, new_customers=acquired,
        first_time_customers=int((new & (first_day >= start)).sum()),
        reactivated_customers=int((new & (first_day < start)).sum()),
        retained_customers=retained,
        crr_percent=_pct(e - acquired, s),
        churn_rate_percent=_pct(s - retained, s),
        repeat_purchase_percent=_pct(int((counts_before_end >= 2).sum()), customers_before_end),
        purchase_frequency=_ratio(period_purchases, int(bought.sum())),
        average_order_value=_ratio(period_revenue, period_purchases),
        period_revenue=period_revenue, period_purchases=period_purchases,
        historical_clv=_ratio(revenue_before_end, customers_before_end),
        predicted_clv=snap.predicted_clv,
        cohorts=cohort_matrix(history, period_end, cfg.cohort_months),
        lifecycle_distribution=snap.lifecycle, value_distribution=snap.value,
        rfm_distribution=snap.rfm, tier_distribution=snap.tier,
        points_liability=snap.points_liability,
    )


def with_snapshot(metrics: Metrics, snapshot: Snapshot) -> Metrics:
    """``metrics`` with the snapshot's figures: what ``compute_metrics`` gives when
    passed ``snapshot``, for a caller that computed the period's figures first."""
    return replace(metrics, predicted_clv=snapshot.predicted_clv,
                   lifecycle_distribution=snapshot.lifecycle,
                   value_distribution=snapshot.value, rfm_distribution=snapshot.rfm,
                   tier_distribution=snapshot.tier,
                   points_liability=snapshot.points_liability)
