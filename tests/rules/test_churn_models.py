"""Wiring of BG/NBD / Gamma-Gamma into churn (with stand-ins for the fitted models)."""

from __future__ import annotations

import sys
import types
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from rules.config import RulesConfig
from rules.engine import compute
from rules.models import Contact, Deal, RulesResult

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)


class InsufficientDataError(ValueError):
    pass


class FakeBgNbd:
    def __init__(self, seen: dict[str, Any], p_alive: float) -> None:
        self.seen = seen
        self.alive = p_alive

    def p_alive(self, frequency: Any, recency: Any, age: Any) -> Any:
        return np.full(len(frequency), self.alive)

    def expected_purchases(self, t: float, frequency: Any, recency: Any, age: Any) -> Any:
        self.seen["horizon"] = t
        return np.full(len(frequency), 1.5)


def install(monkeypatch: pytest.MonkeyPatch, fail: bool = False, p_alive: float = 0.2,
            clv: float = 1000.0) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fit(frequency: Any, recency: Any, age: Any) -> FakeBgNbd:
        if fail:
            raise InsufficientDataError("too few repeat customers")
        seen["inputs"] = (frequency.tolist(), recency.tolist(), age.tolist())
        return FakeBgNbd(seen, p_alive)

    class FakeSpend:
        def clv(self, model: Any, frequency: Any, recency: Any, age: Any, monetary: Any,
                horizon: int, discount_rate: float) -> Any:
            seen["monetary"] = monetary.tolist()
            return np.full(len(frequency), clv)

    bgnbd = types.ModuleType("rules.bgnbd")
    bgnbd.fit = fit  # type: ignore[attr-defined]
    bgnbd.InsufficientDataError = InsufficientDataError  # type: ignore[attr-defined]
    gamma = types.ModuleType("rules.gammagamma")
    gamma.fit = lambda frequency, monetary: FakeSpend()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rules.bgnbd", bgnbd)
    monkeypatch.setitem(sys.modules, "rules.gammagamma", gamma)
    return seen


def purchase(deal_id: int, customer: int, days_ago: int, amount: float) -> Deal:
    moment = datetime.combine(AS_OF.date() - timedelta(days=days_ago), time(12), MSK)
    return Deal(id=deal_id, contact_id=customer, company_id=None, title=None, amount=amount,
                currency="RUB", status="won", created_at=moment, closed_at=moment)


def base_deals(amount: float = 1000.0) -> list[Deal]:
    # 40 buyers, each with purchases 40 and 10 days ago (the second worth twice the first)
    return [purchase(customer * 10 + k, customer, days, amount * (k + 1))
            for customer in range(1, 41) for k, days in enumerate((40, 10))]


def base() -> RulesResult:
    return compute([Contact(id=i) for i in range(1, 42)], base_deals(), [], RulesConfig(),
                   AS_OF)


def test_fitted_model_blends_into_the_churn_score(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = install(monkeypatch)
    result = base()
    state = result.states[0]
    assert seen["inputs"][0][0] == 1.0  # frequency = repeat purchase days
    assert (seen["inputs"][1][0], seen["inputs"][2][0]) == (30.0, 40.0)  # recency, T in days
    assert seen["monetary"][0] == 2000.0  # repeat purchases only
    assert seen["horizon"] == 90
    assert state.model_used == "bgnbd"
    assert (state.p_alive, state.expected_purchases, state.predicted_clv) == (0.2, 1.5, 1000.0)
    assert state.churn_score == pytest.approx(0.5 * 0.0 + 0.5 * 0.8)
    assert state.churn_reasons == ("model: 20% chance still active",)
    assert result.states[40].model_used == "signals"  # the prospect
    assert result.metrics.predicted_clv == 1000.0
    assert not any("BG/NBD" in n for n in result.notes)


def test_fit_failure_falls_back_to_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, fail=True)
    result = base()
    assert result.states[0].model_used == "signals"
    assert result.states[0].p_alive is None
    assert any("BG/NBD not fitted (too few repeat customers)" in n for n in result.notes)


def test_large_bases_are_fitted_on_a_stable_sample_but_predicted_for_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = install(monkeypatch)
    fitted: dict[str, int] = {}
    gamma = sys.modules["rules.gammagamma"]
    spend_fit = gamma.fit

    def counting_fit(frequency: Any, monetary: Any) -> Any:
        fitted["gamma"] = len(frequency)
        return spend_fit(frequency, monetary)

    gamma.fit = counting_fit  # type: ignore[attr-defined]
    deals = base_deals()
    config = RulesConfig.model_validate({"model": {"fit_sample": 25}})
    result = compute([Contact(id=i) for i in range(1, 42)], deals, [], config, AS_OF)
    assert len(seen["inputs"][0]) == 25 and fitted["gamma"] == 25
    assert all(s.p_alive == 0.2 for s in result.states[:40])  # predictions for every buyer
    first = seen["inputs"]
    compute([Contact(id=i) for i in range(1, 42)], deals, [], config, AS_OF)
    assert seen["inputs"] == first  # the same base gives the same sample


def test_fit_sample_is_a_stable_subset_chosen_by_id() -> None:
    from rules.churn import fit_sample

    ids = np.arange(1000, 2000, dtype=np.int64)
    picked = fit_sample(ids, 100)
    assert len(picked) == 100 and len(set(picked.tolist())) == 100
    assert picked.tolist() == sorted(picked.tolist())
    # chosen by id, not by position: the same customers whatever the row order
    reversed_ids = ids[::-1].copy()
    assert sorted(reversed_ids[fit_sample(reversed_ids, 100)].tolist()) == sorted(
        ids[picked].tolist())
    assert fit_sample(ids, 0).tolist() == list(range(1000))
    assert fit_sample(ids[:10], 100).tolist() == list(range(10))


def test_bulk_columns_of_states_match_the_rows_with_a_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch)
    states = base().states
    columns = states.columns(0, len(states))  # type: ignore[attr-defined]
    assert columns["churn_reasons"] == [s.churn_reasons for s in states]
    assert columns["model_used"] == [s.model_used for s in states]
    assert columns["p_alive"] == [s.p_alive for s in states]
    assert ("model: 20% chance still active",) in columns["churn_reasons"]


def test_one_time_buyers_keep_the_signal_score(monkeypatch: pytest.MonkeyPatch) -> None:
    # BG/NBD gives P(alive | x = 0) = 1 by construction; blending it in would halve the
    # risk of a buyer gone for 322 days.  Customer 41 bought once, 322 days ago: overdue
    # (full) 0.4 + frequency (window empty) 0.2 = 0.6, whatever the model says.
    install(monkeypatch, p_alive=1.0)
    deals = [*base_deals(), purchase(999, 41, 322, 1000.0)]
    result = compute([Contact(id=i) for i in range(1, 42)], deals, [], RulesConfig(), AS_OF)
    gone = result.states[40]
    # the model's own figure is kept, but it did not score this customer's risk
    assert (gone.purchases, gone.p_alive, gone.model_used) == (1, 1.0, "signals")
    assert gone.churn_score == pytest.approx(0.6)
    repeat = result.states[0]  # signals 0, blended: 0.5 × 0 + 0.5 × (1 − 1.0)
    assert (repeat.churn_score, repeat.model_used) == (0.0, "bgnbd")


def test_a_degenerate_bgnbd_fit_falls_back_to_signals_with_a_note() -> None:
    # 100 buyers who all bought yesterday, 30 of them also 40 days before: the real fit
    # runs off to r ≈ 1e7, b ≈ 5e-4 (repeat buyers "dead", E[Y] NaN) and is refused.
    deals = [purchase(c, c, 1, 1000.0) for c in range(1, 101)]
    deals += [purchase(1000 + c, c, 40, 1000.0) for c in range(71, 101)]
    result = compute([Contact(id=c) for c in range(1, 101)], deals, [], RulesConfig(), AS_OF)
    assert {s.model_used for s in result.states} == {"signals"}
    assert {s.p_alive for s in result.states} == {None}
    assert {s.predicted_clv for s in result.states} == {None}
    assert any(n.startswith("BG/NBD not fitted (degenerate fit:")
               and n.endswith("churn risk uses rule signals only") for n in result.notes)


def test_non_finite_predictions_reject_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, p_alive=float("nan"))
    result = base()
    assert result.states[0].model_used == "signals" and result.states[0].p_alive is None
    assert ("BG/NBD fit rejected: non-finite or out-of-range predictions for 40 of 40 "
            "buyers; churn risk uses rule signals only") in result.notes


def test_negative_clv_rejects_the_spend_model(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, clv=-5.0)
    result = base()
    assert result.states[0].model_used == "bgnbd" and result.states[0].predicted_clv is None
    assert ("Gamma-Gamma fit rejected: non-finite or negative CLV for 40 of 40 buyers; "
            "no predicted CLV") in result.notes


def test_repeat_buyers_who_spent_nothing_are_named_in_the_note(
        monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch)
    monkeypatch.delitem(sys.modules, "rules.gammagamma")  # the real spend model
    result = compute([Contact(id=i) for i in range(1, 42)], base_deals(amount=0.0), [],
                     RulesConfig(), AS_OF)
    assert ("Gamma-Gamma not fitted: 0 repeat customers with a positive repeat spend < 20 "
            "(40 of 40 spent nothing on their repeat purchases); no predicted CLV"
            ) in result.notes
