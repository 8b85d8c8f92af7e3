"""Lifecycle (prospect/new/active/sleeping/lost), value (VIP/middle/base) and channels.

All functions take row-aligned numpy arrays and return small-integer codes; the names
live in the ``LIFECYCLES`` / ``VALUE_SEGMENTS`` tuples so a million rows cost bytes, not
strings.  "Days since" is ``as_of_day - purchase_day`` in whole calendar days.
"""

from __future__ import annotations

import math

import numpy as np

from rules.config import LifecycleConfig, ValueConfig
from rules.history import Aggregates, FloatArray, IntArray, PurchaseHistory
from rules.models import Channel, Lifecycle, ValueSegment

__all__ = [
    "ACTIVE",
    "BASE",
    "LIFECYCLES",
    "LOST",
    "MIDDLE",
    "NEW",
    "PROSPECT",
    "SLEEPING",
    "VALUE_SEGMENTS",
    "VIP",
    "channels_of",
    "lifecycle_codes",
    "lifecycle_thresholds",
    "value_codes",
    "window_revenue",
]

LIFECYCLES: tuple[Lifecycle, ...] = ("prospect", "new", "active", "sleeping", "lost")
PROSPECT, NEW, ACTIVE, SLEEPING, LOST = range(5)
VALUE_SEGMENTS: tuple[ValueSegment, ...] = ("vip", "middle", "base")
VIP, MIDDLE, BASE = range(3)


def lifecycle_thresholds(agg: Aggregates, cfg: LifecycleConfig) -> tuple[IntArray, IntArray]:
    """Per-customer (sleeping_after, lost_after) in days; cadence mode scales them."""
    n = len(agg.count)
    sleeping = np.full(n, cfg.sleeping_days, dtype=np.int64)
    lost = np.full(n, cfg.lost_days, dtype=np.int64)
    if not cfg.cadence:
        return sleeping, lost
    # Only a rhythm of enough distinct purchase days is worth trusting: three deals on two
    # consecutive days are one gap of a day, not a daily habit.
    own = (agg.visit_days >= cfg.cadence_min_purchases) & ~np.isnan(agg.median_gap)
    gap = agg.median_gap[own]
    # The floors keep a fast rhythm from turning a short pause (a week away, a holiday)
    # into "sleeping" or "lost": a daily buyer still has cadence_min_days (7) before
    # sleeping and cadence_min_lost_days (14) before lost.
    own_sleeping = np.maximum(np.ceil(cfg.sleeping_gaps * gap), cfg.cadence_min_days)
    own_lost = np.maximum(np.maximum(np.ceil(cfg.lost_gaps * gap), cfg.cadence_min_lost_days),
                          own_sleeping + 1)
    sleeping[own] = own_sleeping.astype(np.int64)
    lost[own] = own_lost.astype(np.int64)
    return sleeping, lost


def lifecycle_codes(agg: Aggregates, as_of_day: int, cfg: LifecycleConfig) -> IntArray:
    """Lifecycle code per customer.

    prospect: no purchase.  new: first purchase fewer than ``new_days`` days ago (takes
    precedence).  Otherwise by days since the last purchase: < sleeping → active,
    sleeping ≤ d < lost → sleeping, ≥ lost → lost.
    """
    sleeping_after, lost_after = lifecycle_thresholds(agg, cfg)
    since_last = as_of_day - agg.last_day
    codes = np.where(since_last >= lost_after, LOST,
                     np.where(since_last >= sleeping_after, SLEEPING, ACTIVE)).astype(np.int64)
    codes[(as_of_day - agg.first_day) < cfg.new_days] = NEW
    codes[agg.count == 0] = PROSPECT
    return codes


def window_revenue(history: PurchaseHistory, window_days: int) -> FloatArray:
    """Revenue per customer from purchases fewer than ``window_days`` days before as_of."""
    inside = (history.as_of_day - history.day) < window_days
    kop = np.bincount(history.cust[inside], weights=history.amount_kop[inside],
                      minlength=len(history.customers))
    return kop / 100.0


def _top_cutoff(sorted_desc: FloatArray, share: float) -> float:
    """Revenue of the last customer inside the top ``share`` (inf when nobody is inside)."""
    # The epsilon keeps 0.3 * 10 = 3.0000000000000004 from rounding up to 4 customers.
    k = math.ceil(share * len(sorted_desc) - 1e-9)
    return float(sorted_desc[k - 1]) if k > 0 else math.inf


def value_codes(history: PurchaseHistory, cfg: ValueConfig) -> IntArray:
    """VIP / middle / base by revenue over the trailing ``window_days``.

    ``top_share``: among customers with revenue > 0 in the window, ranked by revenue, the
    top ``vip_share`` are VIP and the next ``middle_share`` middle; customers tied with
    the last one inside a band join it.  ``thresholds``: revenue ≥ vip_min / middle_min.
    """
    revenue = window_revenue(history, cfg.window_days)
    buyers = revenue > 0
    if cfg.mode == "thresholds":
        vip_min, middle_min = cfg.vip_min, cfg.middle_min
    else:
        ranked = -np.sort(-revenue[buyers])
        vip_min = _top_cutoff(ranked, cfg.vip_share)
        middle_min = _top_cutoff(ranked, cfg.vip_share + cfg.middle_share)
    codes = np.full(len(revenue), BASE, dtype=np.int64)
    codes[buyers & (revenue >= middle_min)] = MIDDLE
    codes[buyers & (revenue >= vip_min)] = VIP
    return codes


def channels_of(has_phone: bool, has_email: bool) -> tuple[Channel, ...]:
    """The reachable channels, or ("none",)."""
    if has_phone and has_email:
        return ("phone", "email")
    if has_phone:
        return ("phone",)
    return ("email",) if has_email else ("none",)

