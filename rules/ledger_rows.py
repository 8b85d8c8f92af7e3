"""The finished ledger as rows: each entry built from columns only when it is read.

``rules.loyalty`` decides every entry and sorts them; what it hands over is, per entry
in ledger order, a *source* (a vectorised earn, a vectorised expiry, or one of the few
entries built one by one — the "extras") and an *index* into that source.  Millions of
earns therefore never exist as objects unless a caller asks for them; a bulk writer
asks for :meth:`LedgerRows.columns`, which builds plain lists field by field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from functools import lru_cache
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.columns import BoolArray, IntArray
from rules.models import LedgerEntry

__all__ = [
    "EARN",
    "EARN_KEY",
    "EXPIRY",
    "EXPIRY_KEY",
    "EXTRA",
    "KINDS",
    "OTHER_KEY",
    "LedgerRows",
    "entry_fingerprint",
    "expiry_reason",
    "fingerprints",
    "key_identity",
    "text_hash",
]

EARN, EXPIRY, EXTRA = 0, 1, 2  # sources of a ledger entry
_FIELDS = tuple(f.name for f in fields(LedgerEntry))
_ENTRY_FIELDS = attrgetter(*_FIELDS)


def expiry_reason(days: int) -> str:
    """The reason text of an expiry entry."""
    return f"points expired after {days} days"


class _Dates(dict[int, date]):
    """Ordinal → date, built on first use: a few thousand days among millions of rows."""

    def __missing__(self, ordinal: int) -> date:
        day = self[ordinal] = date.fromordinal(ordinal)
        return day


@dataclass(frozen=True, slots=True)
class LedgerRows:
    """Everything needed to build ledger entry ``i`` (``source[i]``, ``index[i]``).

    ``cust``/``day``/``deal_id`` are the purchase columns (earns and their expiries
    index them); ``reasons[tier * 2 + birthday]`` is an earn's reason text.  An expiry
    takes the whole earn, except at the purchases ``lot_pos`` (ascending), whose lots
    lost only ``lot_lost`` to expiry (the rest was spent first).
    """

    source: npt.NDArray[np.int8]
    index: IntArray
    customer_ids: IntArray  # by customer row
    cust: IntArray
    day: IntArray
    deal_id: IntArray
    points: IntArray
    tier: npt.NDArray[np.integer[Any]]  # a narrow integer type: widen before arithmetic
    birthday: BoolArray
    tier_names: tuple[str, ...]
    reasons: tuple[str, ...]
    expiry_days: int
    extras: Sequence[LedgerEntry]
    lot_pos: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lot_lost: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.source)

    def row(self, i: int) -> LedgerEntry:
        """Entry ``i`` as a frozen dataclass."""
        kind, pos = int(self.source[i]), int(self.index[i])
        if kind == EXTRA:
            return self.extras[pos]
        deal = int(self.deal_id[pos])
        points = int(self.signed_points(np.array([pos]), np.array([kind == EARN]))[0])
        customer = int(self.customer_ids[self.cust[pos]])
        day = date.fromordinal(int(self.day[pos]))
        if kind == EARN:
            tier = int(self.tier[pos])
            return LedgerEntry(customer, "earn", deal, points, day, self.tier_names[tier],
                               self.reasons[tier * 2 + int(self.birthday[pos])],
                               f"earn:deal:{deal}")
        return LedgerEntry(customer, "expire", None, points,
                           day + timedelta(days=self.expiry_days), None, self._expired(),
                           f"expire:earn:deal:{deal}")

    def columns(self, lo: int, hi: int, missing: Any = None) -> dict[str, list[Any]]:
        """Entries lo:hi field by field — equal to ``[row(i) for i in range(lo, hi)]``,
        with ``missing`` wherever a field is None (see ``RowSequence.columns``)."""
        return self._columns_of(self.source[lo:hi], self.index[lo:hi], missing)

    def columns_at(self, entries: IntArray, missing: Any = None) -> dict[str, list[Any]]:
        """The entries at these positions, field by field (a changed few, say)."""
        return self._columns_of(self.source[entries], self.index[entries], missing)

    def numbers(self, entries: IntArray) -> dict[str, IntArray]:
        """Vector earns and expiries (only) at these positions, as numbers: what a writer
        that builds their texts itself needs.

        ``expiry`` is 0 for an earn and 1 for an expiry, ``points`` and ``day`` are the
        entry's own (an expiry's: minus what its lot lost, on the earn's day shifted by
        ``expiry_days``; see ``signed_points``), and ``reason`` indexes ``reasons``
        for an earn (its tier is ``tier_names[reason >> 1]``) and is -1 for an expiry
        (reason ``expiry_reason(expiry_days)``, no tier, no deal).
        """
        pos = self.index[entries]
        earn = self.source[entries] == EARN
        return {
            "customer_id": self.customer_ids[self.cust[pos]],
            "expiry": (~earn).astype(np.int64),
            "deal_id": self.deal_id[pos],
            "points": self.signed_points(pos, earn),
            "day": self.day[pos] + np.where(earn, 0, self.expiry_days),
            "reason": np.where(earn, self.tier[pos].astype(np.int64) * 2 + self.birthday[pos],
                               -1),
        }

    def signed_points(self, pos: IntArray, earn: BoolArray) -> IntArray:
        """Points of vector entries at purchases ``pos``: an earn's, or minus what its
        lot lost to expiry."""
        points = self.points[pos]
        if len(self.lot_pos) and len(pos):
            at = np.minimum(np.searchsorted(self.lot_pos, pos), len(self.lot_pos) - 1)
            partial = ~earn & (self.lot_pos[at] == pos)
            points = np.where(partial, self.lot_lost[at], points)
        return np.where(earn, points, -points)

    def _columns_of(self, src: npt.NDArray[np.int8], idx: IntArray, missing: Any
                    ) -> dict[str, list[Any]]:
        if len(src) and bool(np.all(src == EXTRA)):  # a writer asks for the extras alone
            return self._extra_columns(idx, missing)
        pos = np.where(src == EXTRA, 0, idx)  # extras index the extras, not the purchases
        earn = (src == EARN).tolist()
        deal = self._take(self.deal_id, pos).tolist()
        # extras' points are placeholders too, overwritten below
        points = (self.signed_points(pos, src == EARN) if len(self.points)
                  else np.zeros(len(pos), dtype=np.int64))
        shift = np.where(src == EXPIRY, self.expiry_days, 0)
        # extras get a placeholder day (1) until their own values overwrite the row
        day = np.where(src == EXTRA, 1, self._take(self.day, pos) + shift).tolist()
        reason = (self._take(self.tier, pos).astype(np.int64) * 2
                  + self._take(self.birthday, pos)).tolist()
        expired, names, reasons = self._expired(), self.tier_names, self.reasons
        out: dict[str, list[Any]] = {
            "customer_id": self.customer_ids[self._take(self.cust, pos)].tolist(),
            "kind": ["earn" if e else "expire" for e in earn],
            "deal_id": [d if e else missing for d, e in zip(deal, earn, strict=True)],
            "points": points.tolist(),
            "at": list(map(_Dates().__getitem__, day)),
            "tier_at_purchase": [names[r >> 1] if e else missing
                                 for r, e in zip(reason, earn, strict=True)],
            "reason": [reasons[r] if e else expired for r, e in zip(reason, earn, strict=True)],
            "entry_key": [f"earn:deal:{d}" if e else f"expire:earn:deal:{d}"
                          for d, e in zip(deal, earn, strict=True)],
        }
        self._overwrite_extras(out, src, idx, missing)
        return out

    def _extra_columns(self, idx: IntArray, missing: Any) -> dict[str, list[Any]]:
        """The extras ``idx`` field by field, each field read in C through map()."""
        picked = [self.extras[i] for i in idx.tolist()]
        out: dict[str, list[Any]] = {}
        for name in _FIELDS:
            values = list(map(attrgetter(name), picked))
            if missing is not None and None in values:
                values = [missing if v is None else v for v in values]
            out[name] = values
        return out

    def _overwrite_extras(self, out: dict[str, list[Any]], src: npt.NDArray[np.int8],
                          idx: IntArray, missing: Any) -> None:
        where = np.flatnonzero(src == EXTRA).tolist()
        if not where:
            return
        columns = [out[name] for name in _FIELDS]
        for i, extra in zip(where, idx[src == EXTRA].tolist(), strict=True):
            for column, value in zip(columns, _ENTRY_FIELDS(self.extras[extra]), strict=True):
                column[i] = missing if value is None else value

    def _take(self, values: npt.NDArray[Any], pos: IntArray) -> npt.NDArray[Any]:
        # with no purchases at all every row is an extra: nothing to index
        return values[pos] if len(values) else np.zeros(len(pos), dtype=values.dtype)

    def _expired(self) -> str:
        return expiry_reason(self.expiry_days)


# -- fingerprints: what a store compares to find the entries that changed ----------------

EARN_KEY, EXPIRY_KEY, OTHER_KEY = 0, 1, 2  # earn:deal:<n>, expire:earn:deal:<n>, any other
KINDS = ("earn", "bonus", "redeem", "expire", "reversal")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))


def _splitmix(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser: a stable, well-mixed 64-bit function of each value."""
    z = values + _GOLDEN
    z = (z ^ (z >> _SHIFTS[0])) * _MIX1
    z = (z ^ (z >> _SHIFTS[1])) * _MIX2
    return z ^ (z >> _SHIFTS[2])


def _blake_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=1 << 16)  # tier names and most reasons repeat over millions of entries
def text_hash(text: str | None) -> int:
    """A stable 64-bit hash of a text (None has its own); never Python's salted hash()."""
    if text is None:
        return 0
    return _blake_hash(text)


def _combine(fields: Iterator[npt.NDArray[Any]], n: int) -> npt.NDArray[np.int64]:
    """Mix the fields, in order, into one 64-bit value per entry."""
    with np.errstate(over="ignore"):  # the arithmetic is meant to wrap around
        h = np.zeros(n, dtype=np.uint64)
        for values in fields:
            # one finaliser round per field: position-dependent, since h is mixed before
            # the next field joins (a field of 0 still changes h)
            h = _splitmix(h ^ np.asarray(values).astype(np.uint64))
    # as a signed SQLite INTEGER (same 64 bits)
    return h.view(np.int64)


def key_identity(entry_key: str, kind: str, deal_id: int | None) -> tuple[int, int]:
    """(key class, number): the deal of an earn or earn-expiry key, else the key's hash."""
    if kind == "earn" and deal_id is not None and entry_key == f"earn:deal:{deal_id}":
        return EARN_KEY, deal_id
    tail = entry_key.removeprefix("expire:earn:deal:")
    if tail != entry_key and tail.isdigit() and str(int(tail)) == tail:
        return EXPIRY_KEY, int(tail)
    # entry keys are unique: a cache would only miss (and evict the reasons it holds)
    return OTHER_KEY, _blake_hash(entry_key)


_CHUNK = 1 << 18  # entries hashed at once: bounded memory for millions of entries


def fingerprints(view: LedgerRows, entries: IntArray | None = None) -> npt.NDArray[np.int64]:
    """A stable 64-bit hash of each entry's content (all entries, or these positions).

    Two entries get the same fingerprint exactly when all their fields are equal (up to
    64-bit hash collisions; a store compares fingerprints within one customer, where a
    collision is out of reach).  The function must never change silently: fingerprints
    stored by one version are compared with the next one's.
    """
    at = np.arange(len(view), dtype=np.int64) if entries is None else entries
    out = np.zeros(len(at), dtype=np.int64)
    for lo in range(0, len(at), _CHUNK):
        out[lo:lo + _CHUNK] = _fingerprint_chunk(view, at[lo:lo + _CHUNK])
    return out


def _fingerprint_chunk(view: LedgerRows, at: IntArray) -> npt.NDArray[np.int64]:
    out = np.zeros(len(at), dtype=np.int64)
    vector = np.flatnonzero(view.source[at] != EXTRA)
    if len(vector):
        out[vector] = _combine(_vector_fields(view, at[vector]), len(vector))
    extra = np.flatnonzero(view.source[at] == EXTRA)
    if len(extra):
        rows = np.array([_entry_fields(view.extras[i]) for i in view.index[at[extra]].tolist()],
                        dtype=np.uint64)
        out[extra] = _combine(iter(rows.T), len(extra))
    return out


def _vector_fields(view: LedgerRows, entries: IntArray) -> Iterator[npt.NDArray[Any]]:
    """The fields of vector earns and expiries, one at a time, in ``_entry_fields`` order."""
    pos = view.index[entries]
    earn = view.source[entries] == EARN
    tier = view.tier[pos].astype(np.int64)  # stored narrow; tier * 2 must not wrap
    tiers = np.array([text_hash(t) for t in view.tier_names], dtype=np.uint64)
    reasons = np.array([text_hash(r) for r in view.reasons], dtype=np.uint64)
    deal, day = view.deal_id[pos], view.day[pos]
    # negative numbers wrap to their two's complement in uint64: still exact
    yield view.customer_ids[view.cust[pos]]
    yield np.where(earn, EARN_KEY, EXPIRY_KEY)
    yield deal
    yield np.where(earn, KINDS.index("earn"), KINDS.index("expire"))
    yield np.where(earn, deal, -1)
    yield view.signed_points(pos, earn)
    yield np.where(earn, day, day + view.expiry_days)
    yield np.where(earn, tiers[tier], np.uint64(0))
    yield np.where(earn, reasons[tier * 2 + view.birthday[pos]],
                   np.uint64(text_hash(expiry_reason(view.expiry_days))))


_KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def _entry_fields(entry: LedgerEntry) -> tuple[int, ...]:
    # Written out flat: it runs once per bonus, redemption and reversal (over a million
    # at a million customers); only the signed fields need the two's-complement mask.
    key_class, key = key_identity(entry.entry_key, entry.kind, entry.deal_id)
    deal = entry.deal_id
    return (entry.customer_id & _U64, key_class, key & _U64, _KIND_INDEX[entry.kind],
            _U64 if deal is None else deal & _U64, entry.points & _U64,
            entry.at.toordinal(), text_hash(entry.tier_at_purchase), text_hash(entry.reason))


def entry_fingerprint(entry: LedgerEntry) -> int:
    """``fingerprints`` of one entry (for entries not built by the engine)."""
    fields = (np.array([v], dtype=np.uint64) for v in _entry_fields(entry))
    return int(_combine(fields, 1)[0])
