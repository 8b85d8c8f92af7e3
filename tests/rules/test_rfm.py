"""RFM quintile scores (ties at their mid-rank) and the R/F group map."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from rules.config import DEFAULT_RF_SEGMENTS, RulesConfig
from rules.engine import compute
from rules.models import Contact, Deal
from rules.rfm import quintile_scores

MSK = ZoneInfo("Europe/Moscow")
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=MSK)


def test_quintiles_of_distinct_values() -> None:
    assert quintile_scores(np.array([50, 10, 40, 20, 30])).tolist() == [5, 1, 4, 2, 3]


def test_ties_are_scored_at_their_mid_rank() -> None:
    # score = 1 + floor(5 × (below + equal / 2) / n).  Five 1s span ranks 0–4 of 10: mid
    # 2.5 / 10 → 2.  Then 2 → 5.5/10 → 3, 3 → 6.5/10 → 4, 4 → 7.5/10 → 4, 5 → 5, 6 → 5.
    values = np.array([1, 1, 1, 1, 1, 2, 3, 4, 5, 6])
    assert quintile_scores(values).tolist() == [2, 2, 2, 2, 2, 3, 4, 4, 5, 5]
    assert quintile_scores(np.array([7, 7, 7])).tolist() == [3, 3, 3]  # mid 1.5/3 → 3
    shuffled = np.array([6, 1, 4, 1, 2, 1, 5, 1, 3, 1])
    assert quintile_scores(shuffled).tolist() == [5, 2, 4, 2, 3, 2, 5, 2, 4, 2]
    # three distinct values: mid-ranks 0.5, 1.5, 2.5 of 3 → 1, 3, 5 (symmetric)
    assert quintile_scores(np.array([30, 10, 20])).tolist() == [5, 1, 3]
    # 70 equal then 30 equal: mids 35/100 → 2 and 85/100 → 5
    assert quintile_scores(np.array([1] * 70 + [2] * 30)).tolist() == [2] * 70 + [5] * 30


def test_scores_do_not_depend_on_input_order() -> None:
    rng = np.random.default_rng(11)
    values = rng.integers(0, 20, 1_000)
    order = rng.permutation(1_000)
    assert quintile_scores(values)[order].tolist() == quintile_scores(values[order]).tolist()


def test_customers_who_all_bought_yesterday_are_not_lost() -> None:
    # Everyone equally recent: R sits in the middle (3), not at the bottom (1, "lost").
    yesterday = datetime.combine(AS_OF.date() - timedelta(days=1), time(12), MSK)
    deals = [Deal(id=i, contact_id=i, company_id=None, title=None, amount=100.0,
                  currency="RUB", status="won", created_at=yesterday, closed_at=yesterday)
             for i in range(1, 101)]
    states = compute([Contact(id=i) for i in range(1, 101)], deals, [], RulesConfig(),
                     AS_OF).states
    assert {(s.lifecycle, s.rfm_r, s.rfm_f, s.rfm_m, s.rfm_group) for s in states} == {
        ("new", 3, 3, 3, "need attention")}


def test_default_map_covers_the_common_segments() -> None:
    assert DEFAULT_RF_SEGMENTS["55"] == "champions"
    assert DEFAULT_RF_SEGMENTS["11"] == "lost"
    assert DEFAULT_RF_SEGMENTS["51"] == "new customers"
    assert DEFAULT_RF_SEGMENTS["15"] == "can't lose them"
    assert len(set(DEFAULT_RF_SEGMENTS.values())) == 11


def test_engine_scores_recent_frequent_big_spenders_as_champions() -> None:
    deals = []
    for contact in range(1, 6):
        # contact 5: most recent, most purchases, most money; contact 1: the opposite
        for k in range(contact):
            day = AS_OF.date() - timedelta(days=100 - 15 * contact + k)
            moment = datetime.combine(day, time(12), MSK)
            deals.append(Deal(id=contact * 10 + k, contact_id=contact, company_id=None,
                              title=None, amount=100.0 * contact, currency="RUB",
                              status="won", created_at=moment, closed_at=moment))
    result = compute([Contact(id=i) for i in range(1, 7)], deals, [], RulesConfig(), AS_OF)
    states = {s.customer_id: s for s in result.states}
    assert (states[5].rfm_r, states[5].rfm_f, states[5].rfm_m) == (5, 5, 5)
    assert states[5].rfm_group == "champions"
    assert (states[1].rfm_r, states[1].rfm_f, states[1].rfm_m) == (1, 1, 1)
    assert states[1].rfm_group == "lost"
    assert states[6].rfm_group is None and states[6].rfm_r is None
    assert result.metrics.rfm_distribution["champions"] == 1
