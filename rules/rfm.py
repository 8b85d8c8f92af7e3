"""RFM: recency, frequency and monetary scores 1–5 by quintile, named by the R/F cell.

A score is ``1 + floor(5 × below / n)`` where ``below`` is how many buyers have a strictly
worse value and ``n`` the number of buyers.  Equal values therefore always share a score
(no arbitrary tie-breaking by id), and a value better than 80 % of buyers scores 5.
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
    """Score 1–5 for each value: higher value → higher score, ties share the score."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    below = np.searchsorted(np.sort(values), values, side="left")
    return (1 + (5 * below) // n).astype(np.int64)


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
