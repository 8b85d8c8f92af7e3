"""Smoke benchmark of rules.engine.compute on synthetic plain data.

Usage: python bench/rules_engine_smoke.py [customers] [deals_per_customer]
Defaults: 100 000 customers, 5 deals each (500 000 deals).  Prints build and compute times.
"""

from __future__ import annotations

import random
import resource
import sys
import time
from datetime import UTC, date, datetime, timedelta

from rules.config import BonusRule, LoyaltyConfig, RulesConfig
from rules.engine import compute
from rules.models import Contact, Deal

AS_OF = datetime(2025, 6, 15, 12, tzinfo=UTC)


def synthetic(customers: int, per_customer: int, seed: int = 7) -> tuple[list[Contact],
                                                                         list[Deal]]:
    """Contacts with phones/emails/birthdays and won/lost deals spread over three years."""
    rng = random.Random(seed)
    contacts = [
        Contact(id=i, name=f"c{i}", phones=(f"+7916{i:07d}",) if i % 3 else (),
                emails=(f"c{i}@example.ru",) if i % 2 else (),
                birthday=date(1980 + i % 30, 1 + i % 12, 1 + i % 28) if i % 4 else None)
        for i in range(1, customers + 1)
    ]
    moments = [AS_OF - timedelta(days=d, hours=h) for d in range(1100) for h in (3, 9, 15)]
    empty: dict[str, object] = {}
    review = {"UF_CRM_REVIEW": "Y", "UF_CRM_NPS": "9"}
    spend = {"UF_CRM_POINTS_SPENT": "50"}
    deals = []
    for n in range(customers * per_customer):
        moment = rng.choice(moments)
        roll = rng.random()
        fields = review if roll < 0.05 else spend if roll < 0.07 else empty
        deals.append(Deal(id=n + 1, contact_id=rng.randint(1, customers), company_id=None,
                          title=None, amount=float(rng.randint(100, 20000)), currency="RUB",
                          status="won" if roll < 0.85 else "lost", created_at=moment,
                          closed_at=moment, fields=fields))
    return contacts, deals


def main() -> None:
    customers = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    per_customer = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    t0 = time.perf_counter()
    contacts, deals = synthetic(customers, per_customer)
    t1 = time.perf_counter()
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = RulesConfig(loyalty=LoyaltyConfig(bonuses=(
        BonusRule(field="UF_CRM_REVIEW", entity="deal", equals="Y", points=200,
                  reason="review left"),)))
    result = compute(contacts, deals, [], config, AS_OF)
    t2 = time.perf_counter()
    sample = [result.states[i] for i in range(0, len(result.states), max(1, customers // 1000))]
    ledger_size = len(result.ledger)
    t3 = time.perf_counter()
    print(f"synthetic data: {customers:,} customers, {len(deals):,} deals in {t1 - t0:.1f} s")
    print(f"compute: {t2 - t1:.2f} s; {len(sample)} states read in {t3 - t2:.2f} s; "
          f"ledger entries {ledger_size:,}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss_data:,.0f} MB after building the data, {rss:,.0f} MB after compute")
    print(f"CRR {result.metrics.crr_percent}; notes: {list(result.notes)}")


if __name__ == "__main__":
    main()
