"""Which deals count: statuses, deletion, currency, customers, channels, company mode."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
import pytest

from rules.config import CustomerConfig, PurchasesConfig, RulesConfig
from rules.engine import compute
from rules.history import is_plausible_email, is_plausible_phone
from rules.models import Company, Contact, Deal

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)
WHEN = datetime.combine(AS_OF.date() - timedelta(days=5), time(12), MSK)


def deal(deal_id: int, contact: int | None = 1, company: int | None = None,
         amount: float | None = 1000.0, currency: str | None = "RUB", status: str = "won",
         closed: datetime | None = WHEN) -> Deal:
    return Deal(id=deal_id, contact_id=contact, company_id=company, title=None, amount=amount,
                currency=currency, status=status,  # type: ignore[arg-type]
                created_at=WHEN - timedelta(days=1), closed_at=closed)


def test_only_won_live_deals_in_portal_currency_count() -> None:
    deals = [deal(1), deal(2, status="lost"), deal(3, status="open"), deal(4, currency="USD"),
             deal(5, contact=None), deal(6, contact=99),
             Deal(id=7, contact_id=1, company_id=None, title=None, amount=5.0, currency="RUB",
                  status="won", created_at=WHEN, closed_at=WHEN, deleted_at=WHEN)]
    result = compute([Contact(id=1)], deals, [], RulesConfig(), AS_OF)
    assert result.states[0].purchases == 1
    assert result.states[0].revenue == 1000.0
    assert "1 deals in USD excluded (no rate to RUB configured)" in result.notes
    assert "1 counted-status deals without a contact ignored" in result.notes
    assert "1 purchases of unknown or deleted contacts ignored" in result.notes
    assert "1 deleted deals never count" in result.notes


def test_fixed_rates_convert_other_currencies() -> None:
    config = RulesConfig(purchases=PurchasesConfig(rates={"USD": 90.0}))
    result = compute([Contact(id=1)], [deal(1, amount=10.0, currency="USD")], [], config, AS_OF)
    assert result.states[0].revenue == 900.0
    assert result.ledger[0].points == 27


def test_missing_closed_at_falls_back_to_created_at_and_missing_amount_is_zero() -> None:
    result = compute([Contact(id=1)], [deal(1, closed=None, amount=None)], [], RulesConfig(),
                     AS_OF)
    state = result.states[0]
    assert state.first_purchase == (WHEN - timedelta(days=1)).date()
    assert state.revenue == 0.0


def test_deals_after_as_of_are_ignored() -> None:
    future = deal(1, closed=AS_OF + timedelta(hours=1))
    result = compute([Contact(id=1)], [future], [], RulesConfig(), AS_OF)
    assert result.states[0].lifecycle == "prospect"


def test_company_mode_counts_deals_by_company_and_reaches_it_through_contacts() -> None:
    config = RulesConfig(customer=CustomerConfig(kind="company"))
    contacts = [Contact(id=1, phones=("+7 916 123-45-67",))]
    deals = [deal(1, contact=1, company=10), deal(2, contact=None, company=10),
             deal(3, contact=1, company=None)]
    result = compute(contacts, deals, [Company(id=10), Company(id=11)], config, AS_OF)
    states = {s.customer_id: s for s in result.states}
    assert states[10].customer_kind == "company"
    assert states[10].purchases == 2
    assert states[10].channels == ("phone",)
    assert states[11].lifecycle == "prospect" and states[11].channels == ("none",)
    assert "1 counted-status deals without a company ignored" in result.notes


@pytest.mark.parametrize("number", ["+7 (916) 123-45-67", "8 916 1234567", "+79161234567",
                                    "+44 20 7946 0958", "12", "not a phone", "8 916 12"])
def test_phone_fast_path_agrees_with_phonenumbers(number: str) -> None:
    try:
        expected = phonenumbers.is_possible_number(phonenumbers.parse(number, "RU"))
    except phonenumbers.NumberParseException:
        expected = False
    assert is_plausible_phone(number, "RU") == expected


def test_channels() -> None:
    assert is_plausible_email("anna@example.ru")
    assert not is_plausible_email("anna@example")
    assert not is_plausible_email("anna example.ru")
    contacts = [Contact(id=1, phones=("+7 916 123-45-67",), emails=("a@b.ru",)),
                Contact(id=2, emails=("a@b.ru",)), Contact(id=3, phones=("12",))]
    result = compute(contacts, [], [], RulesConfig(), AS_OF)
    assert [s.channels for s in result.states] == [("phone", "email"), ("email",), ("none",)]


def test_company_mode_without_any_live_contact() -> None:
    # Nothing to reach the company through: no crash, just no channel.
    config = RulesConfig(customer=CustomerConfig(kind="company"))
    deals = [deal(1, contact=None, company=10)]
    result = compute([], deals, [Company(id=10)], config, AS_OF)
    assert [(s.customer_id, s.purchases, s.channels) for s in result.states] == [
        (10, 1, ("none",))]
    deleted = [Contact(id=1, phones=("+7 916 123-45-67",), deleted_at=WHEN)]
    result = compute(deleted, [deal(1, contact=1, company=10)], [Company(id=10)], config, AS_OF)
    assert result.states[0].channels == ("none",)


@pytest.mark.filterwarnings("error")  # no "invalid value encountered in cast"
def test_non_finite_and_implausible_amounts_are_excluded_and_counted() -> None:
    deals = [deal(1, amount=float("nan")), deal(2, amount=float("inf")),
             deal(3, amount=float("-inf")), deal(4, amount=1e15), deal(5, amount=-1e13),
             deal(6, amount=1e12), deal(7, amount=100.0)]
    result = compute([Contact(id=1)], deals, [], RulesConfig(), AS_OF)
    state = result.states[0]
    assert (state.purchases, state.revenue) == (2, 1e12 + 100.0)
    assert "3 deals with a non-finite amount (NaN or infinity) ignored" in result.notes
    assert "2 deals with an implausible amount (beyond ±1e+12) ignored" in result.notes
    # the bound itself counts, and earns exactly: 1e12 ₽ × 3 % = 3e10 points, 100 ₽ → 3
    assert [(e.deal_id, e.points) for e in result.ledger] == [(6, 30_000_000_000), (7, 3)]


def test_a_converted_amount_beyond_the_bound_is_excluded() -> None:
    config = RulesConfig(purchases=PurchasesConfig(rates={"USD": 100.0}))
    result = compute([Contact(id=1)], [deal(1, amount=2e10, currency="USD")], [], config,
                     AS_OF)
    assert result.states[0].purchases == 0
    assert "1 deals with an implausible amount (beyond ±1e+12) ignored" in result.notes


def test_currency_codes_are_compared_case_insensitively() -> None:
    config = RulesConfig(purchases=PurchasesConfig(currency="rub", rates={"usd": 90.0}))
    deals = [deal(1, currency="rub"), deal(2, currency=" RUB "), deal(3, currency="Usd",
                                                                      amount=10.0)]
    result = compute([Contact(id=1)], deals, [], config, AS_OF)
    assert result.states[0].revenue == 1000.0 + 1000.0 + 900.0
    assert result.notes[0] == "1 deals converted from USD at fixed rate 90"


def test_min_amount_is_inclusive_and_in_the_portal_currency() -> None:
    config = RulesConfig(purchases=PurchasesConfig(min_amount=50.0, rates={"USD": 90.0}))
    deals = [deal(1, amount=50.0), deal(2, amount=49.99), deal(3, amount=None),
             deal(4, amount=1.0, currency="USD")]  # 1 USD = 90 ₽ ≥ 50
    result = compute([Contact(id=1)], deals, [], config, AS_OF)
    assert (result.states[0].purchases, result.states[0].revenue) == (2, 140.0)
    assert "2 deals below min_amount 50 ignored" in result.notes


def test_categories_filter_keeps_only_the_configured_funnels() -> None:
    config = RulesConfig(purchases=PurchasesConfig(categories=("0", "7")))
    deals = [replace(deal(1), category_id="0"), replace(deal(2), category_id="7"),
             replace(deal(3), category_id="2"), replace(deal(4), category_id=None)]
    result = compute([Contact(id=1)], deals, [], config, AS_OF)
    assert result.states[0].purchases == 2
    assert "2 deals outside the configured categories ignored" in result.notes


def test_unknown_companies_are_named_in_plural() -> None:
    config = RulesConfig(customer=CustomerConfig(kind="company"))
    result = compute([], [deal(1, contact=None, company=99)], [], config, AS_OF)
    assert "1 purchases of unknown or deleted companies ignored" in result.notes
