"""RFM: recency, frequency and monetary scores 1–5 by quintile, named by the R/F cell.

Values are ranked among the n buyers; a tie group spans the ranks [below, below + equal)
(``below`` buyers have a strictly worse value) and is scored at its middle, the mid-rank
percentile ``(below + equal / 2) / n``: score = ``1 + floor(5 × percentile)``.  Equal
values therefore share a score (no tie-breaking by id) that sits in the middle of the
range they span — 100 customers who all bought yesterday are R = 3, not R = 1 — and a
value better than 80 % of buyers (without ties) scores 5.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rules.config import RfmConfig
from rules.history import IntArray, PurchaseHistory

__all__ = ["RfmScores", "quintile_scores", "rfm_scores"]


@dataclass(frozen=True, slots=True)
class RfmScores:
    """Row-aligned scores (0 = not a buyer) and group codes into ``groups`` (-1 = none)."""

    r: IntArray
    f: IntArray
    m: IntArray
    group: IntArray
    groups: tuple[str, ...]


def quintile_scores(values: IntArray) -> IntArray:
    """Score 1–5 for each value: higher value → higher score, ties at their mid-rank."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # One sort; tie groups are runs of the sorted values.  below + upto = 2 × mid-rank,
    # so the score is exact in integers: 1 + floor(5 × (below + upto) / (2n)).
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    ends = np.append(starts[1:], n)
    twice_mid = np.repeat(starts + ends, ends - starts)
    scores = np.empty(n, dtype=np.int64)
    scores[order] = 1 + (5 * twice_mid) // (2 * n)
    return scores


def _group_lookup(segments: Mapping[str, str]) -> tuple[IntArray, tuple[str, ...]]:
    names = tuple(sorted(set(segments.values())))
    table = np.full((6, 6), -1, dtype=np.int64)
    for cell, name in segments.items():
        table[int(cell[0]), int(cell[1])] = names.index(name)
    return table, names


def rfm_scores(history: PurchaseHistory, cfg: RfmConfig) -> RfmScores:
    """RFM over all history (or the trailing ``window_days`` when > 0)."""
    n = len(history.customers)
    mask = np.ones(len(history), dtype=np.bool_)
    if cfg.window_days:
        mask = (history.as_of_day - history.day) < cfg.window_days
    cust = history.cust[mask]
    count = np.bincount(cust, minlength=n)
    revenue_kop = np.bincount(cust, weights=history.amount_kop[mask], minlength=n)
    last_day = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last_day, cust, history.day[mask])
    buyers = count > 0
    r, f, m = (np.zeros(n, dtype=np.int64) for _ in range(3))
    r[buyers] = quintile_scores(last_day[buyers])  # later last purchase = more recent
    f[buyers] = quintile_scores(count[buyers].astype(np.int64))
    m[buyers] = quintile_scores(np.rint(revenue_kop[buyers]).astype(np.int64))
    table, names = _group_lookup(cfg.segments)
    group = np.where(buyers, table[r, f], -1)
    return RfmScores(r=r, f=f, m=m, group=group, groups=names)
