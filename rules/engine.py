"""``compute``: CRM records in, retention decisions out — the one entry point of ``rules``.

The pipeline is columnar: one scan of the deals (``history``), then each rule turns numpy
arrays into numpy arrays.  States and ledger come back as lazy ``RowSequence`` views, so
the push stage can stream a million customers without materialising them all at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt

from rules.churn import ChurnSignals, ModelFit, churn_signals, fit_models
from rules.columns import (
    DealColumns,
    PreviousLedger,
    RecordColumns,
    company_columns,
    contact_columns,
    deal_columns,
)
from rules.config import RulesConfig
from rules.history import (
    Aggregates,
    FloatArray,
    IntArray,
    PurchaseHistory,
    aggregate,
    build_customers,
    build_history,
)
from rules.loyalty import Ledger, build_ledger
from rules.metrics import Snapshot, compute_metrics, default_period, with_snapshot
from rules.models import (
    Company,
    Contact,
    CustomerKind,
    CustomerState,
    Deal,
    LedgerEntry,
    Metrics,
    RowSequence,
    RulesResult,
)
from rules.reasons import churn_reason_column, churn_reasons
from rules.rfm import RfmScores, rfm_scores
from rules.segments import LIFECYCLES, VALUE_SEGMENTS, channels_of, lifecycle_codes, value_codes

__all__ = ["Pending", "RunBeside", "compute", "compute_columns", "in_a_thread"]

T = TypeVar("T", covariant=True)


@dataclass(frozen=True, slots=True)
class _Columns:
    """Every per-customer decision, row-aligned with ``history.customers``."""

    history: PurchaseHistory
    agg: Aggregates
    lifecycle: IntArray
    value: IntArray
    rfm: RfmScores
    ledger: Ledger
    signals: ChurnSignals
    model: ModelFit
    churn: FloatArray


def _blend(signals: ChurnSignals, model: ModelFit, agg: Aggregates,
           weight: float) -> FloatArray:
    # The model says how likely the customer is still around; the signals say why we
    # worry.  Blending keeps the score explainable while using the fitted base rate.
    # Only for repeat buyers: BG/NBD lets a customer drop out only right after a repeat
    # purchase, so P(alive | x = 0) = 1 by construction and would halve the risk of every
    # one-time buyer however long gone.  They keep the signal score.
    if not model.used:
        return signals.score
    repeat = agg.visit_days >= 2  # frequency x = distinct purchase days - 1 > 0
    model_risk = np.nan_to_num(1.0 - model.p_alive, nan=0.0)
    blended = np.clip((1.0 - weight) * signals.score + weight * model_risk, 0.0, 1.0)
    return np.where(repeat, blended, np.where(agg.count > 0, signals.score, 0.0))


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _date_or_none(day: int) -> date | None:
    return date.fromordinal(day) if day > 0 else None


def _state_maker(cols: _Columns, config: RulesConfig) -> Callable[[int], CustomerState]:
    customers, agg, rfm, ledger = cols.history.customers, cols.agg, cols.rfm, cols.ledger
    kind = cast(CustomerKind, customers.kind)
    tiers = config.loyalty.tiers

    def make_state(row: int) -> CustomerState:
        buyer = bool(agg.count[row] > 0)
        tier = int(ledger.tier[row])
        p_alive = _none_if_nan(float(cols.model.p_alive[row]))
        group = int(rfm.group[row])
        return CustomerState(
            customer_id=int(customers.ids[row]), customer_kind=kind,
            lifecycle=LIFECYCLES[int(cols.lifecycle[row])],
            value_segment=VALUE_SEGMENTS[int(cols.value[row])],
            rfm_r=int(rfm.r[row]) or None, rfm_f=int(rfm.f[row]) or None,
            rfm_m=int(rfm.m[row]) or None, rfm_group=rfm.groups[group] if group >= 0 else None,
            channels=channels_of(bool(customers.has_phone[row]), bool(customers.has_email[row])),
            purchases=int(agg.count[row]), revenue=float(agg.revenue[row]),
            first_purchase=_date_or_none(int(agg.first_day[row])),
            last_purchase=_date_or_none(int(agg.last_day[row])),
            median_gap_days=_none_if_nan(float(agg.median_gap[row])),
            tier=tiers[tier].name, perks=tiers[tier].perks,
            points_balance=int(ledger.balance[row]),
            purchases_to_next_tier=int(ledger.purchases_to_next[row])
            if ledger.purchases_to_next[row] >= 0 else None,
            churn_score=float(cols.churn[row]),
            churn_reasons=churn_reasons(cols.signals, row, config.churn, p_alive)
            if buyer else (),
            p_alive=p_alive,
            expected_purchases=_none_if_nan(float(cols.model.expected_purchases[row])),
            predicted_clv=_none_if_nan(float(cols.model.clv[row])),
            # which scored the churn risk: the model blends in for repeat buyers only
            model_used="bgnbd" if cols.model.used and agg.visit_days[row] >= 2 else "signals",
        )

    return make_state


def _absent_where(values: npt.NDArray[Any], absent: npt.NDArray[np.bool_],
                  missing: Any) -> list[Any]:
    return [missing if m else v for v, m in zip(values.tolist(), absent.tolist(), strict=True)]


def _nan_as(values: FloatArray, missing: Any) -> list[Any]:
    if missing != missing:  # NaN stands in for absent values: the floats go as they are
        return list(values.tolist())
    return [missing if v != v else v for v in values.tolist()]  # NaN is the only v != v


def _days(days: IntArray, missing: Any) -> list[Any]:
    memo: dict[int, Any] = {}

    def day_of(day: int) -> Any:
        found = memo[day] = _date_or_none(day) or missing
        return found

    return [memo[d] if d in memo else day_of(d) for d in days.tolist()]


def _state_columns(cols: _Columns, config: RulesConfig
                   ) -> Callable[[int, int, Any], dict[str, list[Any]]]:
    """``make_state`` for a range of rows, field by field, without building the states."""
    customers, agg, rfm, ledger = cols.history.customers, cols.agg, cols.rfm, cols.ledger
    tiers = config.loyalty.tiers
    channels = [channels_of(bool(code & 2), bool(code & 1)) for code in range(4)]

    def make_columns(lo: int, hi: int, missing: Any) -> dict[str, list[Any]]:
        rows = slice(lo, hi)
        buyer = agg.count[rows] > 0
        tier = ledger.tier[rows].tolist()
        to_next = ledger.purchases_to_next[rows]
        model = "bgnbd" if cols.model.used else "signals"
        reach = (customers.has_phone[rows].astype(np.int64) * 2
                 + customers.has_email[rows]).tolist()
        groups = [*rfm.groups, missing]  # code -1 picks the missing value at the end
        return {
            "customer_id": customers.ids[rows].tolist(),
            "customer_kind": [customers.kind] * (hi - lo),
            "lifecycle": [LIFECYCLES[c] for c in cols.lifecycle[rows].tolist()],
            "value_segment": [VALUE_SEGMENTS[c] for c in cols.value[rows].tolist()],
            "rfm_r": [v or missing for v in rfm.r[rows].tolist()],
            "rfm_f": [v or missing for v in rfm.f[rows].tolist()],
            "rfm_m": [v or missing for v in rfm.m[rows].tolist()],
            "rfm_group": [groups[g] for g in rfm.group[rows].tolist()],
            "channels": [channels[c] for c in reach],
            "purchases": agg.count[rows].tolist(),
            "revenue": agg.revenue[rows].tolist(),
            "first_purchase": _days(agg.first_day[rows], missing),
            "last_purchase": _days(agg.last_day[rows], missing),
            "median_gap_days": _nan_as(agg.median_gap[rows], missing),
            "tier": [tiers[t].name for t in tier],
            "perks": [tiers[t].perks for t in tier],
            "points_balance": ledger.balance[rows].tolist(),
            "purchases_to_next_tier": _absent_where(to_next, to_next < 0, missing),
            "churn_score": cols.churn[rows].tolist(),
            "churn_reasons": churn_reason_column(cols.signals, lo, hi, config.churn, buyer,
                                                 cols.model.p_alive[rows]),
            "p_alive": _nan_as(cols.model.p_alive[rows], missing),
            "expected_purchases": _nan_as(cols.model.expected_purchases[rows], missing),
            "predicted_clv": _nan_as(cols.model.clv[rows], missing),
            "model_used": [model if r >= 2 else "signals"
                           for r in agg.visit_days[rows].tolist()],
        }

    return make_columns


def _distribution(codes: IntArray, names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def _snapshot(cols: _Columns, config: RulesConfig) -> Snapshot:
    buyers = cols.agg.count > 0
    clv = cols.model.clv[buyers]
    predicted = float(np.nanmean(clv)) if len(clv) and not np.isnan(clv).all() else None
    return Snapshot(
        lifecycle=_distribution(cols.lifecycle, LIFECYCLES),
        value=_distribution(cols.value, VALUE_SEGMENTS),
        rfm=_distribution(cols.rfm.group, cols.rfm.groups),
        tier=_distribution(cols.ledger.tier, [t.name for t in config.loyalty.tiers]),
        # What the shop owes: a negative balance (points reversed after being spent) is
        # a customer's debt, not a credit that cancels another customer's points.
        points_liability=int(np.maximum(cols.ledger.balance, 0).sum()),
        predicted_clv=predicted,
    )


class Pending(Protocol[T]):
    """Work started elsewhere; ``result()`` waits for it (a ``Future`` is one)."""

    def result(self) -> T:
        """The work's value (its exception, re-raised)."""


W = TypeVar("W")


class RunBeside(Protocol):
    """Starts work beside the ledger build: a thread by default; a caller that can fork
    passes a process, so the work does not share the ledger's interpreter lock."""

    def __call__(self, work: Callable[[], W]) -> Pending[W]:
        """Start ``work``; its ``Pending`` gives the value."""


def in_a_thread(work: Callable[[], W]) -> Pending[W]:
    """``RunBeside`` with a thread: the default, and the fallback where fork is missing."""
    # The pool lives only as long as the work: shut down without waiting, the future
    # itself is waited on by the caller.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(work)
    finally:
        pool.shutdown(wait=False)


@dataclass(frozen=True, slots=True)
class _BesideLedger:
    """Every decision that does not need the ledger, computed while it is built."""

    model: ModelFit
    signals: ChurnSignals
    lifecycle: IntArray
    value: IntArray
    rfm: RfmScores
    metrics: Metrics  # the period's figures; the snapshot's are added afterwards


def _beside_ledger(history: PurchaseHistory, agg: Aggregates, config: RulesConfig,
                   period: tuple[date, date]) -> _BesideLedger:
    """The model fit, churn signals, segments, RFM and period metrics: numpy and scipy
    work, pure functions of the history, so running them elsewhere changes no result."""
    return _BesideLedger(
        model=fit_models(history, agg, config.model),
        signals=churn_signals(history, agg, config.churn),
        lifecycle=lifecycle_codes(agg, history.as_of_day, config.lifecycle),
        value=value_codes(history, config.value),
        rfm=rfm_scores(history, config.rfm),
        metrics=compute_metrics(history, *period, config.metrics),
    )


def _columns(history: PurchaseHistory, config: RulesConfig, previous_ledger: PreviousLedger,
             period: tuple[date, date], beside: RunBeside = in_a_thread
             ) -> tuple[_Columns, Metrics]:
    """Every per-customer decision, and the period's metrics without the snapshot."""
    agg = aggregate(history)
    # The ledger's lot walk is plain Python; the rest is numpy/scipy work.  On a second
    # core they overlap: at a million customers the rest takes ~5 s, the ledger ~9 s.
    pending = beside(partial(_beside_ledger, history, agg, config, period))
    ledger = build_ledger(history, config.loyalty, previous_ledger)
    rest = pending.result()
    return _Columns(
        history=history, agg=agg, lifecycle=rest.lifecycle, value=rest.value, rfm=rest.rfm,
        ledger=ledger, signals=rest.signals, model=rest.model,
        # four decimals are all a manager reads; rounded once here, not per row
        churn=np.round(_blend(rest.signals, rest.model, agg, config.model.churn_weight), 4),
    ), rest.metrics


def compute(contacts: Sequence[Contact], deals: Sequence[Deal], companies: Sequence[Company],
            config: RulesConfig, as_of: datetime,
            previous_ledger: Sequence[LedgerEntry] = (),
            period: tuple[date, date] | None = None) -> RulesResult:
    """Compute every customer's state, the loyalty ledger and the retention metrics.

    ``as_of`` must be timezone-aware; deals closed after it are ignored.  ``period``
    defaults to the last ``metrics.period_months`` full calendar months before ``as_of``.
    The records are turned into columns first; see :func:`compute_columns`.
    """
    return compute_columns(contact_columns(contacts, config), deal_columns(deals, config),
                           company_columns(companies, config), config, as_of,
                           previous_ledger, period)


def compute_columns(contacts: RecordColumns, deals: DealColumns, companies: RecordColumns,
                    config: RulesConfig, as_of: datetime,
                    previous_ledger: Sequence[LedgerEntry] | PreviousLedger = (),
                    period: tuple[date, date] | None = None,
                    beside: RunBeside = in_a_thread) -> RulesResult:
    """:func:`compute` on columnar inputs (``rules.columns``): no record objects needed.

    This is the entry point for readers that can produce columns themselves (the mirror
    reads SQLite straight into numpy), which keeps millions of deals cheap in memory.
    ``beside`` starts the model fit, churn signals, segments and metrics while the ledger
    is built (see ``RunBeside``).
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    customers = build_customers(contacts, companies, deals, config)
    history = build_history(customers, deals, config, as_of)
    # The raw columns are not needed any more; when the caller passed them without
    # keeping a reference (rules_io does), this frees them before the ledger's peak.
    del contacts, deals, companies
    period = period or default_period(date.fromordinal(history.as_of_day),
                                      config.metrics.period_months)
    cols, metrics = _columns(history, config, PreviousLedger.of(previous_ledger), period,
                             beside)
    metrics = with_snapshot(metrics, _snapshot(cols, config))
    notes = (*history.notes, *cols.ledger.notes, *cols.model.notes)
    states = RowSequence(len(customers), _state_maker(cols, config),
                         _state_columns(cols, config))
    return RulesResult(states=states, ledger=cols.ledger.entries, metrics=metrics, notes=notes,
                       ledger_view=cols.ledger.view)
