"""The finished ledger as rows: each entry built from columns only when it is read.

``rules.loyalty`` decides every entry and sorts them; what it hands over is, per entry
in ledger order, a *source* (a vectorised earn, a vectorised expiry, or one of the few
entries built one by one — the "extras") and an *index* into that source.  Millions of
earns therefore never exist as objects unless a caller asks for them; a bulk writer
asks for :meth:`LedgerRows.columns`, which builds plain lists field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, timedelta
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.columns import BoolArray, IntArray
from rules.models import LedgerEntry

__all__ = ["EARN", "EXPIRY", "EXTRA", "LedgerRows"]

EARN, EXPIRY, EXTRA = 0, 1, 2  # sources of a ledger entry
_FIELDS = tuple(f.name for f in fields(LedgerEntry))
_ENTRY_FIELDS = attrgetter(*_FIELDS)


class _Dates(dict[int, date]):
    """Ordinal → date, built on first use: a few thousand days among millions of rows."""

    def __missing__(self, ordinal: int) -> date:
        day = self[ordinal] = date.fromordinal(ordinal)
        return day


@dataclass(frozen=True, slots=True)
class LedgerRows:
    """Everything needed to build ledger entry ``i`` (``source[i]``, ``index[i]``).

    ``cust``/``day``/``deal_id`` are the purchase columns (earns and their expiries
    index them); ``reasons[tier * 2 + birthday]`` is an earn's reason text.
    """

    source: npt.NDArray[np.int8]
    index: IntArray
    customer_ids: IntArray  # by customer row
    cust: IntArray
    day: IntArray
    deal_id: IntArray
    points: IntArray
    tier: IntArray
    birthday: BoolArray
    tier_names: tuple[str, ...]
    reasons: tuple[str, ...]
    expiry_days: int
    extras: Sequence[LedgerEntry]

    def __len__(self) -> int:
        return len(self.source)

    def row(self, i: int) -> LedgerEntry:
        """Entry ``i`` as a frozen dataclass."""
        kind, pos = int(self.source[i]), int(self.index[i])
        if kind == EXTRA:
            return self.extras[pos]
        deal, points = int(self.deal_id[pos]), int(self.points[pos])
        customer = int(self.customer_ids[self.cust[pos]])
        day = date.fromordinal(int(self.day[pos]))
        if kind == EARN:
            tier = int(self.tier[pos])
            return LedgerEntry(customer, "earn", deal, points, day, self.tier_names[tier],
                               self.reasons[tier * 2 + int(self.birthday[pos])],
                               f"earn:deal:{deal}")
        return LedgerEntry(customer, "expire", None, -points,
                           day + timedelta(days=self.expiry_days), None, self._expired(),
                           f"expire:earn:deal:{deal}")

    def columns(self, lo: int, hi: int) -> dict[str, list[Any]]:
        """Entries lo:hi field by field — equal to ``[row(i) for i in range(lo, hi)]``."""
        src, idx = self.source[lo:hi], self.index[lo:hi]
        pos = np.where(src == EXTRA, 0, idx)  # extras index the extras, not the purchases
        earn = (src == EARN).tolist()
        deal, points = self._take(self.deal_id, pos).tolist(), self._take(self.points, pos)
        shift = np.where(src == EXPIRY, self.expiry_days, 0)
        # extras get a placeholder day (1) until their own values overwrite the row
        day = np.where(src == EXTRA, 1, self._take(self.day, pos) + shift).tolist()
        reason = (self._take(self.tier, pos) * 2 + self._take(self.birthday, pos)).tolist()
        expired, names, reasons = self._expired(), self.tier_names, self.reasons
        out: dict[str, list[Any]] = {
            "customer_id": self.customer_ids[self._take(self.cust, pos)].tolist(),
            "kind": ["earn" if e else "expire" for e in earn],
            "deal_id": [d if e else None for d, e in zip(deal, earn, strict=True)],
            "points": np.where(src == EARN, points, -points).tolist(),
            "at": list(map(_Dates().__getitem__, day)),
            "tier_at_purchase": [names[r >> 1] if e else None
                                 for r, e in zip(reason, earn, strict=True)],
            "reason": [reasons[r] if e else expired for r, e in zip(reason, earn, strict=True)],
            "entry_key": [f"earn:deal:{d}" if e else f"expire:earn:deal:{d}"
                          for d, e in zip(deal, earn, strict=True)],
        }
        self._overwrite_extras(out, src, idx)
        return out

    def _overwrite_extras(self, out: dict[str, list[Any]], src: npt.NDArray[np.int8],
                          idx: IntArray) -> None:
        where = np.flatnonzero(src == EXTRA).tolist()
        if not where:
            return
        columns = [out[name] for name in _FIELDS]
        for i, extra in zip(where, idx[src == EXTRA].tolist(), strict=True):
            for column, value in zip(columns, _ENTRY_FIELDS(self.extras[extra]), strict=True):
                column[i] = value

    def _take(self, values: npt.NDArray[Any], pos: IntArray) -> npt.NDArray[Any]:
        # with no purchases at all every row is an extra: nothing to index
        return values[pos] if len(values) else np.zeros(len(pos), dtype=values.dtype)

    def _expired(self) -> str:
        return f"points expired after {self.expiry_days} days"
