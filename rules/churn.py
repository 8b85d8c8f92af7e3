"""Churn risk: explainable weighted signals, optionally blended with BG/NBD p(alive).

Each signal is a strength in [0, 1]; the signal score is ``Σ wᵢ·sᵢ / Σ wᵢ``.  When the
BG/NBD model can be fitted, ``churn = (1 − k)·signals + k·(1 − p_alive)`` with
``k = model.churn_weight``; otherwise the signal score alone (``model_used = "signals"``).
Reason texts are built only when a customer's state is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rules.config import ChurnConfig, FieldCondition, ModelConfig
from rules.history import Aggregates, BoolArray, FloatArray, IntArray, PurchaseHistory
from rules.points import condition_matches

__all__ = [
    "ChurnSignals",
    "ModelFit",
    "churn_reason_column",
    "churn_reasons",
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
    recent_count: IntArray
    previous_count: IntArray
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


def _frequency(history: PurchaseHistory, cfg: ChurnConfig
               ) -> tuple[FloatArray, IntArray, IntArray]:
    n, window = len(history.customers), cfg.frequency_window_days
    age = history.as_of_day - history.day
    recent = np.bincount(history.cust[age < window], minlength=n)
    previous = np.bincount(history.cust[(age >= window) & (age < 2 * window)], minlength=n)
    falling = (previous > 0) & (recent < previous)
    drop = np.where(falling, (previous - recent) / np.maximum(previous, 1), 0.0)
    return drop.astype(np.float64), recent.astype(np.int64), previous.astype(np.int64)


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
    order = np.argsort(history.deal_id, kind="stable")
    sorted_ids = history.deal_id[order]
    pos = np.minimum(np.searchsorted(sorted_ids, deal_ids), max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[pos] == deal_ids) if len(sorted_ids) else np.zeros(0, dtype=np.bool_)
    purchase = order[pos][found]
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
    for row, value in _field_values(history, cfg.ignored_field, cfg.ignored_entity).items():
        try:
            count = float(value)
        except (TypeError, ValueError):
            count = cfg.ignored_full if condition_matches(
                FieldCondition(field=cfg.ignored_field), value) else 0.0
        if count > 0:
            strength[row] = min(count / cfg.ignored_full, 1.0)
            texts[row] = f"{count:g} communications ignored"
    return strength, texts


def churn_signals(history: PurchaseHistory, agg: Aggregates, cfg: ChurnConfig) -> ChurnSignals:
    """All signals for every customer row (prospects score 0)."""
    overdue, since_last, rhythm, own = _overdue(agg, history.as_of_day, cfg)
    frequency, recent_count, previous_count = _frequency(history, cfg)
    check, recent_avg, previous_avg = _check(history, agg, cfg)
    feedback, feedback_text = _feedback(history, cfg.negative_feedback)
    ignored, ignored_text = _ignored(history, cfg)
    weighted = (cfg.weight_overdue * overdue + cfg.weight_frequency * frequency
                + cfg.weight_check * check + cfg.weight_feedback * feedback
                + cfg.weight_ignored * ignored)
    score = np.where(agg.count > 0, weighted / cfg.total_weight(), 0.0)
    return ChurnSignals(overdue, since_last, rhythm, own, frequency, recent_count,
                        previous_count, check, recent_avg, previous_avg, feedback,
                        feedback_text, ignored, ignored_text, score)


def _overdue_text(s: ChurnSignals, row: int, cfg: ChurnConfig) -> str:
    days, rhythm = int(s.since_last[row]), round(float(s.rhythm[row]))
    if s.own_rhythm[row]:
        return f"{days - rhythm} days overdue vs usual {rhythm}-day rhythm"
    return f"{days} days since the only purchase day (expected within {rhythm})"


def _frequency_text(s: ChurnSignals, row: int, cfg: ChurnConfig) -> str:
    window = cfg.frequency_window_days
    return (f"{s.recent_count[row]} purchases in last {window} days vs "
            f"{s.previous_count[row]} in the {window} before")


def _check_text(s: ChurnSignals, row: int, cfg: ChurnConfig) -> str:
    return (f"average check fell {1 - s.recent_avg[row] / s.previous_avg[row]:.0%} "
            f"({s.recent_avg[row]:,.0f} vs {s.previous_avg[row]:,.0f})")


def _feedback_text(s: ChurnSignals, row: int, cfg: ChurnConfig) -> str:
    return s.feedback_text.get(row, "negative feedback")


def _ignored_text(s: ChurnSignals, row: int, cfg: ChurnConfig) -> str:
    return s.ignored_text.get(row, "communications ignored")


# In signal order: equal contributions keep this order (both rankings below are stable).
_TEXTS: tuple[Callable[[ChurnSignals, int, ChurnConfig], str], ...] = (
    _overdue_text, _frequency_text, _check_text, _feedback_text, _ignored_text)


def _contributions(s: ChurnSignals, rows: slice | int, cfg: ChurnConfig) -> list[Any]:
    return [cfg.weight_overdue * s.overdue[rows], cfg.weight_frequency * s.frequency[rows],
            cfg.weight_check * s.check[rows], cfg.weight_feedback * s.feedback[rows],
            cfg.weight_ignored * s.ignored[rows]]


def _with_model(texts: list[str], p_alive: float | None, cfg: ChurnConfig) -> tuple[str, ...]:
    if p_alive is not None and p_alive < 0.5 and len(texts) < cfg.max_reasons:
        texts.append(f"model: {p_alive:.0%} chance still active")
    return tuple(texts)


def churn_reasons(signals: ChurnSignals, row: int, cfg: ChurnConfig,
                  p_alive: float | None = None) -> tuple[str, ...]:
    """Up to ``max_reasons`` short texts, strongest contribution first."""
    weights = _contributions(signals, row, cfg)
    ranked = sorted((i for i in range(len(_TEXTS)) if weights[i] > 0),
                    key=lambda i: -weights[i])
    texts = [_TEXTS[i](signals, row, cfg) for i in ranked[: cfg.max_reasons]]
    return _with_model(texts, p_alive, cfg)


def churn_reason_column(signals: ChurnSignals, lo: int, hi: int, cfg: ChurnConfig,
                        buyer: list[bool], p_alive: list[float | None]
                        ) -> list[tuple[str, ...]]:
    """``churn_reasons`` of rows lo:hi (``()`` for non-buyers), ranked with numpy."""
    weights = np.stack(_contributions(signals, slice(lo, hi), cfg), axis=1)
    order = np.argsort(-weights, axis=1, kind="stable")[:, : cfg.max_reasons]
    positive = np.take_along_axis(weights, order, axis=1) > 0
    out: list[tuple[str, ...]] = []
    for k, (picks, keep) in enumerate(zip(order.tolist(), positive.tolist(), strict=True)):
        if not buyer[k]:
            out.append(())
            continue
        texts = [_TEXTS[i](signals, lo + k, cfg) for i, ok in zip(picks, keep, strict=True)
                 if ok]
        out.append(_with_model(texts, p_alive[k], cfg))
    return out


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

    Fitting four (or two) population parameters needs far fewer than a million customers,
    and the fit's cost grows with every one of them (~55 s for BG/NBD at 800,000 buyers,
    ~8 s at 100,000).  The sample is chosen by a hash of the customer id, so the same base
    always gives the same fit and a customer stays in or out of it from run to run.
    """
    if not limit or len(ids) <= limit:
        return np.arange(len(ids), dtype=np.int64)
    hashed = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)
    return np.sort(np.argpartition(hashed, limit - 1)[:limit]).astype(np.int64)


def fit_models(history: PurchaseHistory, agg: Aggregates, cfg: ModelConfig) -> ModelFit:
    """Fit BG/NBD on all buyers and Gamma-Gamma on repeat buyers, or explain why not."""
    n = len(history.customers)
    buyers = np.flatnonzero(agg.count > 0)
    if not cfg.enabled:
        return _not_fitted(n, "BG/NBD disabled; churn risk uses rule signals only")
    if len(buyers) < cfg.min_customers:
        return _not_fitted(n, f"BG/NBD not fitted: {len(buyers)} customers < "
                              f"{cfg.min_customers}; churn risk uses rule signals only")
    try:
        bgnbd = importlib.import_module("rules.bgnbd")
    except ImportError:
        return _not_fitted(n, "BG/NBD unavailable; churn risk uses rule signals only")
    frequency, recency, age, monetary = _rfm_inputs(history, agg, buyers)
    buyer_ids = history.customers.ids[buyers]
    sample = fit_sample(buyer_ids, cfg.fit_sample)
    try:
        model = bgnbd.fit(frequency[sample], recency[sample], age[sample])
    except (ValueError, ArithmeticError) as exc:
        return _not_fitted(n, f"BG/NBD not fitted ({exc}); churn risk uses rule signals only")
    p_alive = np.full(n, np.nan)
    expected = np.full(n, np.nan)
    p_alive[buyers] = model.p_alive(frequency, recency, age)
    expected[buyers] = model.expected_purchases(cfg.horizon_days, frequency, recency, age)
    clv, note = _fit_clv(model, cfg, n, buyers, buyer_ids, (frequency, recency, age, monetary))
    return ModelFit(True, p_alive, expected, clv, (note,) if note else ())


def _fit_clv(model: Any, cfg: ModelConfig, n: int, buyers: IntArray, buyer_ids: IntArray,
             inputs: tuple[FloatArray, FloatArray, FloatArray, FloatArray]
             ) -> tuple[FloatArray, str | None]:
    frequency, recency, age, monetary = inputs
    clv = np.full(n, np.nan)
    repeat = frequency > 0
    fitted = np.flatnonzero(repeat)[fit_sample(buyer_ids[repeat], cfg.fit_sample)]
    if int(repeat.sum()) < cfg.min_repeat_customers:
        return clv, (f"Gamma-Gamma not fitted: {int(repeat.sum())} repeat customers < "
                     f"{cfg.min_repeat_customers}; no predicted CLV")
    try:
        gammagamma = importlib.import_module("rules.gammagamma")
        spend = gammagamma.fit(frequency[fitted], monetary[fitted])
        clv[buyers] = spend.clv(model, frequency, recency, age, monetary,
                                cfg.clv_horizon_days, cfg.discount_rate)
    except (ImportError, ValueError, ArithmeticError) as exc:
        return np.full(n, np.nan), f"Gamma-Gamma not fitted ({exc}); no predicted CLV"
    return clv, None
