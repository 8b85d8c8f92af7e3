"""The loyalty ledger, derived deterministically from purchase history (+ the previous ledger).

Rules (docs/rules.md has the full story):

* tier in force at a purchase = the tier for the number of *earlier* counted purchases
  (the Nth purchase earns at the tier of N − 1 purchases);
* earn = amount × cashback % of that tier × birthday multiplier, rounded half up to whole
  points, computed exactly in integers (kopecks × basis points);
* bonuses: once per record whose field matches; redemptions: a deal field, clamped to the
  balance available before that deal; expiry: FIFO lots, each expiring ``expiry_days``
  after it was credited;
* a previous earn/bonus/redeem entry that the current history no longer produces is
  carried over and reversed exactly once (``reversal:<key>``).

Earns are computed as numpy columns; only customers with redemptions or reversals go
through the sequential lot walk (``rules.lots``).  Point arithmetic lives in
``rules.points``; its public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.columns import PreviousLedger
from rules.config import BonusRule, LoyaltyConfig
from rules.fifo import walk_in_bulk
from rules.history import BoolArray, IntArray, PurchaseHistory
from rules.ledger_order import entry_order, rank_extras
from rules.ledger_rows import LedgerRows
from rules.lookup import index_in
from rules.lots import (
    PHASE_DEAL,
    PHASE_EXPIRE,
    PHASE_RECORD,
    PHASE_REVERSAL,
    SUB_BONUS,
    SUB_EARN,
    SUB_REDEEM,
    Event,
    Lots,
    carried_event,
    reversal_event,
)
from rules.models import LedgerEntry, RowSequence
from rules.points import (
    basis_points,
    birthday_mask,
    condition_matches,
    earn_points,
    tier_index,
)

__all__ = [
    "Ledger",
    "birthday_mask",
    "build_ledger",
    "condition_matches",
    "earn_points",
    "pair_positions",
    "tier_index",
]


@dataclass(frozen=True, slots=True)
class Ledger:
    """The ledger as a lazy sequence plus per-customer balance and tier."""

    entries: RowSequence[LedgerEntry]
    balance: IntArray
    tier: IntArray
    purchases_to_next: IntArray  # -1 at the top tier
    notes: tuple[str, ...]
    view: LedgerRows  # what ``entries`` are built from


@dataclass
class _Earns:
    """Vectorised earn columns, aligned with the history's purchase arrays."""

    points: IntArray
    tier: npt.NDArray[np.integer[Any]]  # narrow: see ``earns``
    birthday: BoolArray


class _LedgerBuilder:
    """Holds the inputs of one ledger build; each method is one step of it."""

    def __init__(self, history: PurchaseHistory, cfg: LoyaltyConfig,
                 previous: PreviousLedger) -> None:
        self.h = history
        self.cfg = cfg
        self.previous = previous
        self.ids = history.customers.ids
        self.as_of = date.fromordinal(history.as_of_day)
        self.tier_names = tuple(t.name for t in cfg.tiers)
        self.extras: list[LedgerEntry] = []
        self.extra_rows: list[int] = []  # customer row per extra entry
        self.notes: list[str] = []
        self.prev_at: dict[str, date] = {}
        self.clamped = 0
        # earn lots of bulk-walked customers that lost points to expiry (rules.fifo)
        self.lot_pos = np.zeros(0, dtype=np.int64)
        self.lot_lost = np.zeros(0, dtype=np.int64)

    # -- earns ---------------------------------------------------------------------------
    def earns(self) -> _Earns:
        h, cfg = self.h, self.cfg
        rank = np.arange(len(h), dtype=np.int64) - h.starts[h.cust]
        # one tier code per purchase, held until the store ends: at int16 it takes a
        # quarter of int64's 40 MB at five million purchases (int32 past 32,767 tiers)
        narrow = np.int16 if len(cfg.tiers) <= np.iinfo(np.int16).max else np.int32
        tier: npt.NDArray[np.integer[Any]] = tier_index(cfg.tiers, rank).astype(narrow)
        bps = np.array([basis_points(t.cashback_percent) for t in cfg.tiers], dtype=np.int64)
        customers = h.customers
        birthday = birthday_mask(h.day, customers.birth_month[h.cust],
                                 customers.birth_day[h.cust], cfg.birthday_window_days,
                                 cfg.leap_day_birthday)
        multiplier = np.where(birthday, cfg.birthday_multiplier, 1).astype(np.int64)
        return _Earns(earn_points(h.amount_kop, bps[tier], multiplier), tier, birthday)

    def earn_reason(self, tier: int, birthday: bool) -> str:
        percent = self.cfg.tiers[tier].cashback_percent.normalize()
        text = f"{percent:f}% cashback ({self.tier_names[tier]})"
        return f"{text} ×{self.cfg.birthday_multiplier} birthday" if birthday else text

    # -- bonuses and redemptions ---------------------------------------------------------
    def purchase_positions(self, deal_ids: IntArray) -> IntArray:
        """Purchase index of each deal id, -1 when the deal is not a counted purchase."""
        return index_in(self.h.deal_id, deal_ids)

    def bonus_entries(self, rule: BonusRule, earns: _Earns) -> list[tuple[int, Event]]:
        if rule.entity == "deal":
            return self._deal_bonuses(rule, earns)
        if rule.entity != self.h.customers.kind:
            self.notes.append(f"bonus on {rule.entity} field {rule.field} ignored in "
                              f"{self.h.customers.kind} mode")
            return []
        out = []
        for row, value in sorted(self.h.customers.fields.get(rule.field, {}).items()):
            if condition_matches(rule, value):
                record = int(self.ids[row])
                key = f"bonus:{rule.field}:{rule.entity}:{record}"
                at = self.prev_at.get(key, self.as_of)  # first seen; stable afterwards
                entry = LedgerEntry(record, "bonus", None, rule.points, at, None,
                                    rule.reason, key)
                out.append((row, Event(at.toordinal(), PHASE_RECORD, -1, SUB_BONUS, key,
                                        rule.points, entry)))
        return out

    def _deal_bonuses(self, rule: BonusRule, earns: _Earns) -> list[tuple[int, Event]]:
        values = self.h.deal_fields.get(rule.field, {})
        matched = sorted(d for d, v in values.items() if condition_matches(rule, v))
        positions = self.purchase_positions(np.array(matched, dtype=np.int64))
        out = []
        for deal_id, pos in zip(matched, positions.tolist(), strict=True):
            if pos < 0:
                continue
            row, day = int(self.h.cust[pos]), int(self.h.day[pos])
            key = f"bonus:{rule.field}:deal:{deal_id}"
            entry = LedgerEntry(int(self.ids[row]), "bonus", deal_id, rule.points,
                                date.fromordinal(day),
                                self.tier_names[int(earns.tier[pos])], rule.reason, key)
            out.append((row, Event(day, PHASE_DEAL, deal_id, SUB_BONUS, key, rule.points,
                                    entry)))
        return out

    def redemption_requests(self) -> list[tuple[int, Event]]:
        name = self.cfg.redeem_field
        values = self.h.deal_fields.get(name, {}) if name else {}
        requests: list[tuple[int, int]] = []
        unreadable = 0
        for deal_id, value in values.items():
            try:
                points = int(Decimal(str(value).replace(",", ".").strip())
                             .to_integral_value(rounding=ROUND_HALF_UP))
            except (ArithmeticError, ValueError):
                unreadable += 1
                continue
            if points > 0:
                requests.append((deal_id, points))
        if unreadable:
            self.notes.append(f"{unreadable} unreadable {name} values ignored")
        requests.sort()
        positions = self.purchase_positions(np.array([d for d, _ in requests], dtype=np.int64))
        return [(int(self.h.cust[pos]),
                 Event(int(self.h.day[pos]), PHASE_DEAL, deal_id, SUB_REDEEM,
                        f"redeem:deal:{deal_id}", points, None))
                for (deal_id, points), pos in zip(requests, positions.tolist(), strict=True)
                if pos >= 0]

    # -- the previous ledger -------------------------------------------------------------
    def scan_previous(self) -> tuple[list[LedgerEntry], dict[tuple[int, str], LedgerEntry]]:
        """Split the previous non-earn entries into (bonuses+redeems, reversals by target)."""
        others: list[LedgerEntry] = []
        reversals: dict[tuple[int, str], LedgerEntry] = {}
        for entry in self.previous.others:
            kind = entry.kind
            if kind == "reversal":
                reversals[(entry.customer_id, entry.entry_key[len("reversal:"):])] = entry
            elif kind != "expire" and kind != "earn":  # expiries are always re-derived
                others.append(entry)
                if kind == "bonus":
                    self.prev_at[entry.entry_key] = entry.at
        return others, reversals

    def vanished_earns(self, earns: _Earns) -> list[LedgerEntry]:
        """Previous earns whose (customer, deal) is no longer a counted purchase.

        An earn whose purchase still counts is re-derived; when its points differ from
        what was credited before (the amount, the birthday or the tier in force at the
        purchase changed) the run says how many were re-priced, so it is never silent.
        """
        prev = self.previous
        if len(prev.earn_customer) == 0:
            return []
        prev_rows = self.h.customers.rows_of(prev.earn_customer)
        at = pair_positions(self.h.cust, self.h.deal_id, prev_rows, prev.earn_deal)
        still = (at >= 0) & (prev_rows >= 0)
        repriced = int(np.count_nonzero(earns.points[at[still]] != prev.earn_points[still]))
        if repriced:
            self.notes.append(f"{repriced} earns re-priced: their amount, the birthday or the "
                              f"tier in force at the purchase changed since the last run")
        return list(prev.earn_entries(np.flatnonzero(~still)))

    def carried_events(self, vanished: list[LedgerEntry],
                       reversals: dict[tuple[int, str], LedgerEntry]
                       ) -> list[tuple[int, Event]]:
        """Events for carried entries and their (old or new) reversals."""
        rows = self.h.customers.rows_of(np.array([e.customer_id for e in vanished],
                                                 dtype=np.int64)).tolist()
        events: list[tuple[int, Event]] = []
        unknown = new = 0
        for entry, row in zip(vanished, rows, strict=True):
            if row < 0:
                unknown += 1
                continue
            events.append((row, carried_event(entry)))
            old = reversals.pop((entry.customer_id, entry.entry_key), None)
            new += old is None
            events.append((row, reversal_event(entry, old, self.h.as_of_day)))
        if new:
            self.notes.append(f"{new} ledger entries reversed (their deal or field no "
                              f"longer counts)")
        if unknown:
            self.notes.append(f"{unknown} previous ledger entries of unknown or deleted "
                              f"customers dropped")
        if reversals:
            self.notes.append(f"{len(reversals)} reversals withdrawn: their entries count "
                              f"again")
        return events

    # -- the sequential walk (redemptions, reversals, expiry) ----------------------------
    def walk(self, row: int, events: list[Event]) -> list[LedgerEntry]:
        """Replay one customer's movements over FIFO lots; returns the derived entries."""
        events.sort(key=_EVENT_ORDER)
        state = Lots(int(self.ids[row]), self.cfg.expiry_days)
        pending = state.pending
        for ev in events:
            # a million events at the bench's scale: most have nothing due to expire, so
            # the queue's head is checked here rather than in a call per event
            if pending and pending[0][1][3] <= ev.day:
                state.expire_until(ev.day)
            if ev.phase == PHASE_REVERSAL:
                state.reverse(ev)
            elif ev.sub == SUB_REDEEM:
                state.redeem(ev)
            else:
                state.credit(ev.key, ev.points, ev.day)
        state.expire_until(self.h.as_of_day)
        self.clamped += state.clamped
        return state.out


_EVENT_ORDER = attrgetter("day", "phase", "deal", "sub", "key")  # in C, unlike a lambda


def pair_positions(rows: IntArray, deals: IntArray, want_rows: IntArray,
                   want_deals: IntArray) -> IntArray:
    """Index of each wanted (row, deal) pair among the unique pairs (rows, deals), else -1."""
    if len(rows) == 0:
        return np.full(len(want_rows), -1, dtype=np.int64)
    keys, wanted = _pair_codes(rows, deals, want_rows, want_deals)
    # sort + searchsorted: np.isin would sort (or hash) both sides and lose the index
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    pos = np.minimum(np.searchsorted(ranked, wanted), len(ranked) - 1)
    return np.where(ranked[pos] == wanted, order[pos], -1).astype(np.int64)


def _pair_codes(rows: IntArray, deals: IntArray, want_rows: IntArray, want_deals: IntArray
                ) -> tuple[IntArray, IntArray]:
    """One int64 per (row, deal) pair, equal exactly when both parts are equal."""
    all_deals = np.concatenate((deals, want_deals))
    low = int(all_deals.min())
    span = int(all_deals.max()) - low + 1
    height = int(max(rows.max(initial=-1), want_rows.max(initial=-1))) + 2  # rows >= -1
    if span * height < 2**62:  # packing is exact: no two pairs share a code
        return (rows + 1) * span + (deals - low), (want_rows + 1) * span + (want_deals - low)
    # Ids too far apart to pack (never seen in a CRM, but never wrong either).
    pairs = np.stack((np.concatenate((rows, want_rows)), all_deals), axis=1)
    codes = np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return codes[: len(rows)], codes[len(rows):]


@dataclass
class _Assembly:
    """Sort keys and sources of every ledger entry before the final single sort."""

    row: list[IntArray]
    day: list[IntArray]
    phase: list[npt.NDArray[np.int8]]
    deal: list[IntArray]
    sub: list[npt.NDArray[np.int8]]
    source: list[npt.NDArray[np.int8]]  # 0 = vector earn, 1 = vector expiry, 2 = extra
    index: list[IntArray]
    points: list[IntArray]

    def add(self, row: IntArray, day: IntArray, phase: int, deal: IntArray, sub: int,
            source: int, index: IntArray, points: IntArray) -> None:
        n = len(row)
        self.row.append(row)
        self.day.append(day)
        # int8 flags: at 5M entries each int64 column would cost 40 MB
        self.phase.append(np.full(n, phase, dtype=np.int8))
        self.deal.append(deal)
        self.sub.append(np.full(n, sub, dtype=np.int8))
        self.source.append(np.full(n, source, dtype=np.int8))
        self.index.append(index)
        self.points.append(points)


def build_ledger(history: PurchaseHistory, cfg: LoyaltyConfig,
                 previous: Sequence[LedgerEntry] | PreviousLedger = ()) -> Ledger:
    """The full ledger as of ``history.as_of_day``, with per-customer balance and tier."""
    b = _LedgerBuilder(history, cfg, PreviousLedger.of(previous))
    earns = b.earns()
    prev_others, prev_reversals = b.scan_previous()
    events: list[tuple[int, Event]] = []
    for rule in cfg.bonuses:
        events.extend(b.bonus_entries(rule, earns))
    redeems = b.redemption_requests()
    derived = {(int(b.ids[row]), ev.key) for row, ev in [*events, *redeems]}
    vanished = b.vanished_earns(earns) + [
        e for e in prev_others if (e.customer_id, e.entry_key) not in derived]
    carried = b.carried_events(vanished, prev_reversals)
    walk_rows = {row for row, _ in redeems} | {row for row, _ in carried}
    per_row: dict[int, list[Event]] = {row: [] for row in walk_rows}
    for row, ev in [*events, *redeems, *carried]:
        if ev.entry is not None:
            b.extras.append(ev.entry)
            b.extra_rows.append(row)
        if row in per_row:
            per_row[row].append(ev)
    rows = _walk_most_in_bulk(b, earns, per_row, {row for row, _ in carried})
    # Each customer's earn events are built just before their walk and dropped after:
    # the walked customers are the heaviest buyers.
    for row, own_earns in zip(rows, _walk_earns(history, earns, rows), strict=True):
        for entry in b.walk(row, per_row.pop(row) + own_earns):
            b.extras.append(entry)
            b.extra_rows.append(row)
    _expire_simple_bonuses(b, events, walk_rows)
    if b.clamped:
        b.notes.append(f"{b.clamped} redemptions clamped to the available balance")
    return _assemble(b, earns, walk_rows)


def _walk_most_in_bulk(b: _LedgerBuilder, earns: _Earns, per_row: dict[int, list[Event]],
                       carried_rows: set[int]) -> list[int]:
    """Walk the customers with nothing carried over in bulk (``rules.fifo``: a million
    lots at benchmark scale, ~5 s one by one); the rows left for the one-by-one walk."""
    simple = sorted(row for row in per_row if row not in carried_rows)
    bulk = walk_in_bulk(b.h, earns.points, simple, per_row, b.cfg.expiry_days)
    b.extras.extend(bulk.entries)
    b.extra_rows.extend(bulk.rows)
    b.clamped += bulk.clamped
    b.lot_pos, b.lot_lost = bulk.lot_pos, bulk.lot_lost
    left = set(bulk.left)
    for row in simple:
        if row not in left:
            del per_row[row]
    return sorted(per_row)


def _walk_earns(history: PurchaseHistory, earns: _Earns, rows: list[int]
                ) -> Iterator[list[Event]]:
    """The earn events of each of ``rows`` (ascending), one customer at a time."""
    # Gather the walked customers' purchases with numpy once; per customer, one tolist()
    # per column: indexing numpy scalars one by one costs more than the events.
    picked = np.array(rows, dtype=np.int64)
    counts = history.starts[picked + 1] - history.starts[picked]
    ends = np.cumsum(counts)
    pos = np.repeat(history.starts[picked] - ends + counts, counts)
    pos += np.arange(len(pos), dtype=np.int64)
    day, deal, points = history.day[pos], history.deal_id[pos], earns.points[pos]
    del pos
    for start, stop in zip((ends - counts).tolist(), ends.tolist(), strict=True):
        yield [Event(d, PHASE_DEAL, i, SUB_EARN, f"earn:deal:{i}", p, None)
               for d, i, p in zip(day[start:stop].tolist(), deal[start:stop].tolist(),
                                  points[start:stop].tolist(), strict=True)]


def _expire_simple_bonuses(b: _LedgerBuilder, events: list[tuple[int, Event]],
                           walk_rows: set[int]) -> None:
    days = b.cfg.expiry_days
    if not days:
        return
    for row, ev in events:
        if row not in walk_rows and ev.day + days <= b.h.as_of_day:
            b.extras.append(LedgerEntry(int(b.ids[row]), "expire", None, -ev.points,
                                        date.fromordinal(ev.day + days), None,
                                        f"points expired after {days} days",
                                        "expire:" + ev.key))
            b.extra_rows.append(row)


def _assemble(b: _LedgerBuilder, earns: _Earns, walk_rows: set[int]) -> Ledger:
    h, cfg = b.h, b.cfg
    asm = _Assembly([], [], [], [], [], [], [], [])
    positions = np.arange(len(h), dtype=np.int64)
    asm.add(h.cust, h.day, PHASE_DEAL, h.deal_id, SUB_EARN, 0, positions, earns.points)
    if cfg.expiry_days:
        simple = ~np.isin(h.cust, np.fromiter(walk_rows, dtype=np.int64))
        due = simple & (earns.points > 0) & (h.day + cfg.expiry_days <= h.as_of_day)
        asm.add(h.cust[due], h.day[due] + cfg.expiry_days, PHASE_EXPIRE, h.deal_id[due], 0,
                1, positions[due], -earns.points[due])
        lots = b.lot_pos
        asm.add(h.cust[lots], h.day[lots] + cfg.expiry_days, PHASE_EXPIRE, h.deal_id[lots], 0,
                1, lots, -b.lot_lost)
    b.extras, b.extra_rows, extras = rank_extras(b.extras, b.extra_rows)
    asm.add(extras[0], extras[1], 0, extras[3], 0, 2,
            np.arange(len(b.extras), dtype=np.int64),
            np.array([e.points for e in b.extras], dtype=np.int64))
    asm.phase[-1] = extras[2].astype(np.int8)
    asm.sub[-1] = extras[4].astype(np.int8)
    return _finish(b, earns, asm)


def _joined(parts: list[Any], dtype: type[np.generic] | None = None) -> npt.NDArray[Any]:
    """Concatenate ``parts`` and empty the list, so each part can be freed right away."""
    joined = np.concatenate(parts).astype(dtype or parts[0].dtype, copy=False)
    parts.clear()
    return joined


def _finish(b: _LedgerBuilder, earns: _Earns, asm: _Assembly) -> Ledger:
    h = b.h
    n = len(h.customers)
    # Millions of entries: the balance is summed part by part and the sort keys are
    # packed part by part, each part freed once used, which keeps this sort (the memory
    # peak of compute) small.  Sums of whole points are exact in float64 below 2**53.
    balance = np.zeros(n, dtype=np.float64)
    for rows, points in zip(asm.row, asm.points, strict=True):
        balance += np.bincount(rows, weights=points, minlength=n)
    balance = np.rint(balance)
    asm.points.clear()
    order = entry_order(asm.row, asm.day, asm.phase, asm.deal, asm.sub)
    source = _joined(asm.source)[order]
    index = _joined(asm.index)[order]
    del order
    count = np.diff(h.starts)
    tier = tier_index(b.cfg.tiers, count)
    thresholds = np.array([t.min_purchases for t in b.cfg.tiers] + [-1], dtype=np.int64)
    nxt = thresholds[tier + 1]
    to_next = np.where(nxt >= 0, nxt - count, -1)
    view = LedgerRows(
        source=source, index=index, customer_ids=b.ids, cust=h.cust, day=h.day,
        deal_id=h.deal_id, points=earns.points, tier=earns.tier, birthday=earns.birthday,
        tier_names=b.tier_names,
        reasons=tuple(b.earn_reason(t, bd) for t in range(len(b.cfg.tiers))
                      for bd in (False, True)),
        expiry_days=b.cfg.expiry_days, extras=b.extras, lot_pos=b.lot_pos,
        lot_lost=b.lot_lost)
    return Ledger(RowSequence(len(view), view.row, view.columns), balance.astype(np.int64),
                  tier, to_next.astype(np.int64), tuple(b.notes), view)
