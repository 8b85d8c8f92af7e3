"""Churn risk: explainable weighted signals, optionally blended with BG/NBD p(alive).

Each signal is a strength in [0, 1]; the signal score is ``Σ wᵢ·sᵢ / Σ wᵢ``, and with
all else equal it never falls as the days without a purchase grow.  When the BG/NBD model
can be fitted (and the fit is plausible, see ``fit_models``), the engine blends
``churn = (1 − k)·signals + k·(1 − p_alive)`` with ``k = model.churn_weight`` for repeat
buyers; one-time buyers, and everyone when there is no usable fit, keep the signal score
(``model_used = "signals"`` without a fit).  Reason texts are built only when a customer's
state is read (``rules.reasons``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rules.config import ChurnConfig, FieldCondition, ModelConfig
from rules.history import Aggregates, BoolArray, FloatArray, IntArray, PurchaseHistory
from rules.lookup import index_in
from rules.points import condition_matches, field_number

__all__ = [
    "ChurnSignals",
    "ModelFit",
    "churn_signals",
    "fit_models",
    "fit_sample",
]


@dataclass(frozen=True, slots=True)
class ChurnSignals:
    """Row-aligned signal strengths, the numbers behind them, and the blended score."""

    overdue: FloatArray
    since_last: IntArray
    rhythm: FloatArray
    own_rhythm: BoolArray
    frequency: FloatArray
    recent_visits: IntArray
    usual_visits: IntArray  # -1 for one-time buyers: no rate of their own
    window_span: IntArray
    check: FloatArray
    recent_avg: FloatArray
    previous_avg: FloatArray
    feedback: FloatArray
    feedback_text: dict[int, str]
    ignored: FloatArray
    ignored_text: dict[int, str]
    score: FloatArray


@dataclass(frozen=True, slots=True)
class ModelFit:
    """BG/NBD (+ Gamma-Gamma) outputs per customer row; NaN where not applicable."""

    used: bool
    p_alive: FloatArray
    expected_purchases: FloatArray
    clv: FloatArray
    notes: tuple[str, ...] = field(default=())


def _overdue(agg: Aggregates, as_of_day: int, cfg: ChurnConfig
             ) -> tuple[FloatArray, IntArray, FloatArray, BoolArray]:
    since_last = np.where(agg.count > 0, as_of_day - agg.last_day, 0)
    own = agg.visit_days >= 2
    rhythm = np.where(own, agg.median_gap, float(cfg.default_cadence_days))
    rhythm = np.maximum(np.nan_to_num(rhythm, nan=cfg.default_cadence_days), 1.0)
    ratio = since_last / rhythm
    strength = np.clip((ratio - 1.0) / (cfg.overdue_full_ratio - 1.0), 0.0, 1.0)
    return np.where(agg.count > 0, strength, 0.0), since_last, rhythm, own


def _frequency(history: PurchaseHistory, agg: Aggregates, cfg: ChurnConfig
               ) -> tuple[FloatArray, IntArray, IntArray, IntArray]:
    """Purchase days in the recent window against the customer's own long-run rate.

    The rate is (distinct purchase days − 1) / (last − first purchase day): it does not
    move while the customer is silent, and the window only loses purchases, so the signal
    can only grow with silence.  "Usual" is the whole number of purchase days that rate
    always puts in the window (a regular buyer not yet overdue never falls below it; a
    buyer slower than one purchase day per window has no usual count and no signal); the
    window is cut to the customer's tenure.  A one-time buyer has no rate: full strength
    once the window is empty.
    """
    n, window, as_of = len(history.customers), cfg.frequency_window_days, history.as_of_day
    cust, day = history.cust, history.day
    visit = np.ones(len(history), dtype=np.bool_)  # first deal of each (customer, day)
    visit[1:] = (cust[1:] != cust[:-1]) | (day[1:] != day[:-1])
    recent = np.bincount(cust[visit & (as_of - day < window)], minlength=n).astype(np.int64)
    span = np.minimum(window, as_of - agg.first_day + 1)
    repeat = agg.visit_days >= 2
    usual = np.where(repeat, (agg.visit_days - 1) * span
                     // np.maximum(agg.last_day - agg.first_day, 1), -1).astype(np.int64)
    shortfall = np.clip(1.0 - recent / np.maximum(usual, 1), 0.0, 1.0)
    one_time_gone = (agg.visit_days == 1) & (recent == 0)
    strength = np.where(usual > 0, shortfall, np.where(one_time_gone, 1.0, 0.0))
    return strength, recent, usual, span.astype(np.int64)


def _check(history: PurchaseHistory, agg: Aggregates, cfg: ChurnConfig
           ) -> tuple[FloatArray, FloatArray, FloatArray]:
    n, k = len(history.customers), cfg.check_recent_purchases
    rank = np.arange(len(history)) - history.starts[history.cust]
    is_recent = rank >= agg.count[history.cust] - k
    amount = history.amount_kop / 100.0
    recent_sum = np.bincount(history.cust[is_recent], weights=amount[is_recent], minlength=n)
    previous_sum = agg.revenue - recent_sum
    enough = agg.count > k
    recent_avg = np.where(enough, recent_sum / k, np.nan)
    previous_avg = np.where(enough, previous_sum / np.maximum(agg.count - k, 1), np.nan)
    drop = np.where(enough & (previous_avg > 0),
                    (previous_avg - recent_avg) / np.where(previous_avg > 0, previous_avg, 1),
                    0.0)
    return np.clip(drop / cfg.check_drop_full, 0.0, 1.0), recent_avg, previous_avg


def _latest_deal_values(history: PurchaseHistory, name: str) -> dict[int, Any]:
    """Per customer row, the field value on its latest counted purchase that has one."""
    values = history.deal_fields.get(name, {})
    if not values:
        return {}
    deal_ids = np.fromiter(values.keys(), dtype=np.int64, count=len(values))
    purchase = index_in(history.deal_id, deal_ids)
    purchase = purchase[purchase >= 0]
    latest = np.full(len(history.customers), -1, dtype=np.int64)
    np.maximum.at(latest, history.cust[purchase], purchase)
    rows = np.flatnonzero(latest >= 0)
    return {int(r): values[int(history.deal_id[latest[r]])] for r in rows}


def _field_values(history: PurchaseHistory, cond_field: str, entity: str) -> dict[int, Any]:
    if entity == "deal":
        return _latest_deal_values(history, cond_field)
    if entity != history.customers.kind:
        return {}
    return history.customers.fields.get(cond_field, {})


def _feedback(history: PurchaseHistory, conditions: tuple[FieldCondition, ...]
              ) -> tuple[FloatArray, dict[int, str]]:
    strength = np.zeros(len(history.customers))
    texts: dict[int, str] = {}
    for cond in conditions:
        for row, value in _field_values(history, cond.field, cond.entity).items():
            if condition_matches(cond, value) and row not in texts:
                strength[row] = 1.0
                texts[row] = f"negative feedback: {cond.field} = {value}"
    return strength, texts


def _ignored(history: PurchaseHistory, cfg: ChurnConfig) -> tuple[FloatArray, dict[int, str]]:
    strength = np.zeros(len(history.customers))
    texts: dict[int, str] = {}
    if not cfg.ignored_field:
        return strength, texts
    flag = FieldCondition(field=cfg.ignored_field)
    for row, value in _field_values(history, cfg.ignored_field, cfg.ignored_entity).items():
        count = field_number(value)
        if count is not None and count > 0:
            strength[row] = min(count / cfg.ignored_full, 1.0)
            texts[row] = f"{count:g} communications ignored"
        elif count is None and condition_matches(flag, value):
            # A flag says "ignores us", not how often: full strength, and say what it was.
            strength[row] = 1.0
            texts[row] = f"communications ignored ({cfg.ignored_field} = {value})"
    return strength, texts


def churn_signals(history: PurchaseHistory, agg: Aggregates, cfg: ChurnConfig) -> ChurnSignals:
    """All signals for every customer row (prospects score 0)."""
    overdue, since_last, rhythm, own = _overdue(agg, history.as_of_day, cfg)
    frequency, recent_visits, usual_visits, window_span = _frequency(history, agg, cfg)
    check, recent_avg, previous_avg = _check(history, agg, cfg)
    feedback, feedback_text = _feedback(history, cfg.negative_feedback)
    ignored, ignored_text = _ignored(history, cfg)
    weighted = (cfg.weight_overdue * overdue + cfg.weight_frequency * frequency
                + cfg.weight_check * check + cfg.weight_feedback * feedback
                + cfg.weight_ignored * ignored)
    score = np.where(agg.count > 0, weighted / cfg.total_weight(), 0.0)
    return ChurnSignals(overdue, since_last, rhythm, own, frequency, recent_visits,
                        usual_visits, window_span, check, recent_avg, previous_avg, feedback,
                        feedback_text, ignored, ignored_text, score)


def _not_fitted(n: int, note: str) -> ModelFit:
    nan = np.full(n, np.nan)
    return ModelFit(False, nan, nan.copy(), nan.copy(), (note,))


def _rfm_inputs(history: PurchaseHistory, agg: Aggregates, buyers: IntArray
                ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(frequency, recency, T, monetary) in days for the buyer rows, lifetimes-style."""
    frequency = (agg.visit_days[buyers] - 1).astype(np.float64)
    recency = (agg.last_day[buyers] - agg.first_day[buyers]).astype(np.float64)
    age = (history.as_of_day - agg.first_day[buyers]).astype(np.float64)
    first_day_kop = np.bincount(
        history.cust, weights=np.where(history.day == agg.first_day[history.cust],
                                       history.amount_kop, 0),
        minlength=len(history.customers))
    repeat_revenue = (agg.revenue * 100 - first_day_kop)[buyers] / 100.0
    monetary = np.where(frequency > 0, repeat_revenue / np.maximum(frequency, 1), 0.0)
    return frequency, recency, age, monetary


def fit_sample(ids: IntArray, limit: int) -> IntArray:
    """Positions of at most ``limit`` of ``ids`` (all when ``limit`` is 0 or not reached).

    Fitting four (or three) population parameters needs far fewer than a million
    customers, and the fit's cost grows with every one of them (BG/NBD ~0.4 s at 100,000
    buyers, bench/RESULTS.md).  The sample is chosen by a hash of the customer id, so the same base
    always gives the same fit and a customer stays in or out of it from run to run.
    """
    if not limit or len(ids) <= limit:
        return np.arange(len(ids), dtype=np.int64)
    hashed = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)
    return np.sort(np.argpartition(hashed, limit - 1)[:limit]).astype(np.int64)


_SIGNALS_ONLY = "churn risk uses rule signals only"
_Inputs = tuple[FloatArray, FloatArray, FloatArray, FloatArray]


def fit_models(history: PurchaseHistory, agg: Aggregates, cfg: ModelConfig) -> ModelFit:
    """Fit BG/NBD on (a sample of) all buyers and Gamma-Gamma on repeat buyers, or say why not.

    A fit is used only when it converged to plausible parameters (``rules.bgnbd.fit``
    refuses the others) and predicts a finite, in-range value for every buyer.
    """
    n = len(history.customers)
    buyers = np.flatnonzero(agg.count > 0)
    if not cfg.enabled:
        return _not_fitted(n, f"BG/NBD disabled; {_SIGNALS_ONLY}")
    if len(buyers) < cfg.min_customers:
        return _not_fitted(n, f"BG/NBD not fitted: {len(buyers)} customers < "
                              f"{cfg.min_customers}; {_SIGNALS_ONLY}")
    inputs = _rfm_inputs(history, agg, buyers)
    buyer_ids = history.customers.ids[buyers]
    fitted = _fit_bgnbd(inputs, fit_sample(buyer_ids, cfg.fit_sample), cfg)
    if isinstance(fitted, str):
        return _not_fitted(n, fitted)
    model, buyer_p_alive, buyer_expected = fitted
    p_alive, expected = np.full(n, np.nan), np.full(n, np.nan)
    p_alive[buyers], expected[buyers] = buyer_p_alive, buyer_expected
    clv, note = _fit_clv(model, cfg, n, buyers, buyer_ids, inputs)
    return ModelFit(True, p_alive, expected, clv, (note,) if note else ())


def _fit_bgnbd(inputs: _Inputs, sample: IntArray, cfg: ModelConfig
               ) -> tuple[Any, FloatArray, FloatArray] | str:
    """(model, p_alive, expected purchases) for every buyer, or the note saying why not."""
    frequency, recency, age, _ = inputs
    try:
        bgnbd = importlib.import_module("rules.bgnbd")
    except ImportError:
        return f"BG/NBD unavailable; {_SIGNALS_ONLY}"
    try:
        model = bgnbd.fit(frequency[sample], recency[sample], age[sample])
    except (ValueError, ArithmeticError) as exc:
        return f"BG/NBD not fitted ({exc}); {_SIGNALS_ONLY}"
    with np.errstate(all="ignore"):  # judged below: a NaN here rejects the fit
        p_alive = np.asarray(model.p_alive(frequency, recency, age), dtype=np.float64)
        expected = np.asarray(model.expected_purchases(cfg.horizon_days, frequency, recency,
                                                       age), dtype=np.float64)
    bad = ~(np.isfinite(p_alive) & np.isfinite(expected) & (p_alive >= 0) & (p_alive <= 1)
            & (expected >= 0))
    if bad.any():
        return (f"BG/NBD fit rejected: non-finite or out-of-range predictions for "
                f"{int(bad.sum())} of {len(bad)} buyers; {_SIGNALS_ONLY}")
    return model, p_alive, expected


def _few_spenders(repeat: int, spending: int, cfg: ModelConfig) -> str | None:
    """The note when too few repeat customers carry spend information, else None."""
    floor = cfg.min_repeat_customers
    if repeat < floor:
        return f"Gamma-Gamma not fitted: {repeat} repeat customers < {floor}; no predicted CLV"
    if spending < floor:
        return (f"Gamma-Gamma not fitted: {spending} repeat customers with a positive "
                f"repeat spend < {floor} ({repeat - spending} of {repeat} spent nothing on "
                f"their repeat purchases); no predicted CLV")
    return None


def _fit_clv(model: Any, cfg: ModelConfig, n: int, buyers: IntArray, buyer_ids: IntArray,
             inputs: _Inputs) -> tuple[FloatArray, str | None]:
    frequency, recency, age, monetary = inputs
    clv = np.full(n, np.nan)
    # Only a positive mean spend carries information (the likelihood has ln m̄).
    spending = (frequency > 0) & (monetary > 0)
    note = _few_spenders(int((frequency > 0).sum()), int(spending.sum()), cfg)
    if note:
        return clv, note
    fitted = np.flatnonzero(spending)[fit_sample(buyer_ids[spending], cfg.fit_sample)]
    try:
        gammagamma = importlib.import_module("rules.gammagamma")
        spend = gammagamma.fit(frequency[fitted], monetary[fitted])
        with np.errstate(all="ignore"):  # judged below
            values = np.asarray(spend.clv(model, frequency, recency, age, monetary,
                                          cfg.clv_horizon_days, cfg.discount_rate),
                                dtype=np.float64)
    except (ImportError, ValueError, ArithmeticError) as exc:
        return clv, f"Gamma-Gamma not fitted ({exc}); no predicted CLV"
    bad = ~(np.isfinite(values) & (values >= 0))
    if bad.any():
        return clv, (f"Gamma-Gamma fit rejected: non-finite or negative CLV for "
                     f"{int(bad.sum())} of {len(bad)} buyers; no predicted CLV")
    clv[buyers] = values
    return clv, None
