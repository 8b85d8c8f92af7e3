"""Point arithmetic of the loyalty programme: tiers, birthdays, earn rounding, field rules.

Pure numpy functions over purchase columns; ``rules.loyalty`` assembles the ledger from
them.  Everything is exact integer arithmetic (kopecks × basis points) so a recomputation
can never drift by a point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import numpy as np

from rules.columns import BoolArray, IntArray
from rules.config import FieldCondition, TierConfig

__all__ = [
    "basis_points",
    "birthday_mask",
    "condition_matches",
    "earn_points",
    "field_number",
    "tier_index",
]

EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def tier_index(tiers: Sequence[TierConfig], purchases: IntArray) -> IntArray:
    """Index of the tier reached with ``purchases`` counted purchases."""
    thresholds = np.array([t.min_purchases for t in tiers], dtype=np.int64)
    return (np.searchsorted(thresholds, purchases, side="right") - 1).astype(np.int64)


def _birthday_ordinal(years: IntArray, month: IntArray, dom: IntArray, leap_rule: str) -> IntArray:
    leap = (years % 4 == 0) & ((years % 100 != 0) | (years % 400 == 0))
    moved = (month == 2) & (dom == 29) & ~leap
    to_march = leap_rule == "mar1"
    month = np.where(moved & to_march, 3, month)
    dom = np.where(moved, 1 if to_march else 28, dom)
    months = (years - 1970) * 12 + month - 1
    first = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    return first + dom - 1 + EPOCH_ORDINAL


def birthday_mask(day: IntArray, month: IntArray, dom: IntArray, window: int,
                  leap_rule: str = "feb28") -> BoolArray:
    """True where ``day`` is within ``window`` days of the birthday (month/dom; 0 = unknown).

    29 February is celebrated on 28 February (or 1 March) in non-leap years.
    """
    has = month > 0
    safe_month = np.where(has, month, 1)
    safe_dom = np.where(has, dom, 1)
    years = _years_of(day)
    shifts = (-1, 0, 1) if window else (0,)
    birthday_of = _birthday_lookup(years, safe_month, safe_dom, leap_rule)
    hit = np.zeros(len(day), dtype=np.bool_)
    for shift in shifts:
        hit |= np.abs(day - birthday_of(shift)) <= window
    return hit & has


def _years_of(day: IntArray) -> IntArray:
    """Calendar year of each day ordinal (a table over the days' span when it is short)."""
    if len(day) == 0:
        return np.zeros(0, dtype=np.int64)
    low, high = int(day.min()), int(day.max())
    if high - low > len(day) + 1_000_000:  # sparse: converting each day costs less
        return _years_direct(day)
    return _years_direct(np.arange(low, high + 1, dtype=np.int64))[day - low]


def _years_direct(day: IntArray) -> IntArray:
    years = (day - EPOCH_ORDINAL).astype("datetime64[D]").astype("datetime64[Y]")
    return years.astype(np.int64) + 1970


_SLOTS = 12 * 31  # (month, day of month) pairs per year in the birthday table


def _birthday_lookup(years: IntArray, month: IntArray, dom: IntArray, leap_rule: str
                     ) -> Callable[[int], IntArray]:
    """``shift -> _birthday_ordinal(years + shift, month, dom, leap_rule)``, by table.

    Five million purchases fall in a handful of years, and there are 372 (month, day)
    slots: the table of every (year, slot) is tiny, and one gather per shift replaces
    three date conversions over every purchase.
    """
    valid = len(years) > 0 and int(month.min()) >= 1 and int(month.max()) <= 12 and \
        int(dom.min()) >= 1 and int(dom.max()) <= 31
    if not valid:  # never from parsed birthdays; the direct form handles anything
        return lambda shift: _birthday_ordinal(years + shift, month, dom, leap_rule)
    first = int(years.min()) - 1
    grid = np.arange((int(years.max()) + 2 - first) * _SLOTS, dtype=np.int64)
    table = _birthday_ordinal(first + grid // _SLOTS, grid % _SLOTS // 31 + 1,
                              grid % 31 + 1, leap_rule)
    base = (years - first) * _SLOTS + (month - 1) * 31 + (dom - 1)
    return lambda shift: table[base + shift * _SLOTS]


_POINT = 1_000_000  # kopecks × basis points per point: 1 point = 100 kopecks × 10,000 bp


def earn_points(amount_kop: IntArray, basis_points: IntArray, multiplier: IntArray) -> IntArray:
    """Points = amount × cashback × multiplier, rounded half up, exact in integers.

    1 point = 1 rouble = 100 kopecks and 1 % = 100 basis points, hence the 1_000_000.
    """
    # Split the amount into whole points' worth and the rest, so the products stay small:
    # a 1e12-rouble deal at 100 % × a large birthday multiplier would overflow int64 if
    # multiplied out in one go.  (h·P + l)·k + P/2 over P = h·k + (l·k + P/2) // P, exactly.
    rate = basis_points * multiplier
    whole, rest = np.divmod(amount_kop, _POINT)
    points: IntArray = whole * rate + (rest * rate + _POINT // 2) // _POINT
    return points


def basis_points(percent: Decimal) -> int:
    """A percentage as whole basis points (3 % → 300)."""
    return int((percent * 100).to_integral_value())


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().upper() not in ("", "0", "N", "NO", "FALSE", "НЕТ")
    return bool(value)


def field_number(value: Any) -> float | None:
    """A CRM field as a finite number ("6", "6,0" with a decimal comma, 6.0), else None."""
    if isinstance(value, bool):  # a flag, not a quantity
        return None
    text = value.replace(",", ".").strip() if isinstance(value, str) else value
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def condition_matches(cond: FieldCondition, value: Any) -> bool:
    """Does a field ``value`` satisfy ``cond`` (equals / numeric max_value / truthy)?"""
    if cond.equals is not None:
        return str(value).strip() == cond.equals
    if cond.max_value is not None:
        number = field_number(value)
        return number is not None and number <= cond.max_value
    return _truthy(value)
