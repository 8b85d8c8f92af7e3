"""FIFO point lots of many customers at once: the common case of the ledger's walk.

A customer with redemptions but nothing carried over from a previous ledger (no
vanished entries, no reversals) has only credits — earns and bonuses, never negative —
and redemptions.  Every lot lives ``expiry_days``, so lots expire in the order they were
credited, and what redemptions and expiries have taken is always a *prefix* of the
customer's credits laid end to end.  The state of the walk is then one number, the
length ``F`` of that prefix:

* the expiry of lot i raises ``F`` to ``C_i``, the credits up to and including lot i;
* a redemption asking for r, with ``C_k`` credited before it and ``C_m`` expired by its
  day, takes ``min(r, C_k − max(F, C_m))`` and adds it to ``F``;
* lot i loses ``C_i − max(G, C_{i−1})`` to expiry (when positive), ``G`` being ``F``
  after the last redemption on a day before lot i's expiry day.

Only the redemptions form a chain, and customers have a handful each: the chain runs
over a customer's first redemption, then everyone's second, and so on, each step in
numpy.  ``rules.lots`` replays the same events one by one; both give the same entries
(tests/rules/test_fifo.py compares them on generated histories).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np
import numpy.typing as npt

from rules.history import PurchaseHistory
from rules.lots import PHASE_DEAL, SUB_EARN, SUB_REDEEM, Event, day_of
from rules.models import LedgerEntry

__all__ = ["BulkWalk", "FifoMoves", "FifoOutcome", "fifo_outcome", "tied_groups",
           "walk_in_bulk"]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class FifoMoves:
    """Credits and redemptions of some customers, sorted by customer, then event order.

    ``group`` numbers the customers 0, 1, … in order; ``points`` is a credit's points
    or a redemption's request; ``credit`` tells them apart.
    """

    group: IntArray
    day: IntArray
    points: IntArray
    credit: BoolArray


@dataclass(frozen=True)
class FifoOutcome:
    """What the walk decides, aligned with the moves: points a redemption took (0 for a
    credit), and points a lot lost to expiry by the as-of day (0 for a redemption)."""

    taken: IntArray
    expired: IntArray


def tied_groups(group: IntArray, keys: list[IntArray]) -> IntArray:
    """Groups with two moves equal in every key: their order needs a tie-break that
    these numbers do not hold (the entry key), so they are left to the one-by-one walk."""
    if len(group) < 2:
        return np.zeros(0, dtype=np.int64)
    same = group[1:] == group[:-1]
    for key in keys:
        same &= key[1:] == key[:-1]
    return np.unique(group[1:][same])


def fifo_outcome(moves: FifoMoves, expiry_days: int, as_of_day: int) -> FifoOutcome:
    """Redemptions taken and lots expired for every customer in ``moves`` at once."""
    credited = np.where(moves.credit, moves.points, 0)
    upto = _credited_upto(moves.group, credited)
    redeem = np.flatnonzero(~moves.credit)
    gone = _expired_before(moves, upto, redeem, expiry_days)
    taken, after = _redemption_chain(moves.group[redeem], moves.points[redeem],
                                     upto[redeem], gone)
    out_taken = np.zeros(len(credited), dtype=np.int64)
    out_taken[redeem] = taken
    lots = np.flatnonzero(moves.credit)
    expired = np.zeros(len(credited), dtype=np.int64)
    if expiry_days:
        expired[lots] = _lot_expiries(moves, upto, credited, lots, redeem, after,
                                      expiry_days, as_of_day)
    return FifoOutcome(out_taken, expired)


def _credited_upto(group: IntArray, credited: IntArray) -> IntArray:
    """Per move, the points its customer was credited up to and including it."""
    total = np.cumsum(credited)
    if len(group) == 0:
        return total
    starts = np.r_[True, group[1:] != group[:-1]]
    base = total[starts] - credited[starts]  # the running total before each customer
    upto: IntArray = total - base[np.cumsum(starts) - 1]
    return upto


def _span(moves: FifoMoves, expiry_days: int) -> int:
    """A stride that keeps (group, day) keys ordered when packed as group × span + day."""
    return int(moves.day.max(initial=0)) + expiry_days + 2


def _expired_before(moves: FifoMoves, upto: IntArray, redeem: IntArray,
                    expiry_days: int) -> IntArray:
    """Per redemption, ``C_m``: the credits of lots expiring on or before its day."""
    lots = np.flatnonzero(moves.credit)
    if not expiry_days or len(redeem) == 0 or len(lots) == 0:
        return np.zeros(len(redeem), dtype=np.int64)
    span = _span(moves, expiry_days)
    # a customer's lots are credited in day order, so their expiry days are sorted too
    lot_keys = moves.group[lots] * span + moves.day[lots] + expiry_days
    last = lots[np.maximum(np.searchsorted(
        lot_keys, moves.group[redeem] * span + moves.day[redeem], side="right") - 1, 0)]
    # no such lot of this customer: the search stopped on another's, or on none at all
    own = (moves.group[last] == moves.group[redeem])
    own &= moves.day[last] + expiry_days <= moves.day[redeem]
    return np.where(own, upto[last], 0)


def _redemption_chain(group: IntArray, asked: IntArray, credited: IntArray,
                      gone: IntArray) -> tuple[IntArray, IntArray]:
    """(points taken, ``F`` after) per redemption: every customer's first redemption,
    then every second one, and so on, each round in numpy."""
    n = len(group)
    taken = np.zeros(n, dtype=np.int64)
    after = np.zeros(n, dtype=np.int64)
    if n == 0:
        return taken, after
    starts = np.r_[True, group[1:] != group[:-1]]
    first_of = np.flatnonzero(starts)[np.cumsum(starts) - 1]
    rank = np.arange(n) - first_of
    by_rank = np.argsort(rank, kind="stable")
    edges = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
    prefix = np.zeros(int(group.max()) + 1, dtype=np.int64)  # F per customer
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        at = by_rank[lo:hi]
        who = group[at]
        before = np.maximum(prefix[who], gone[at])
        took = np.clip(credited[at] - before, 0, None)
        took = np.minimum(asked[at], took)
        taken[at] = took
        after[at] = prefix[who] = before + took
    return taken, after


def _lot_expiries(moves: FifoMoves, upto: IntArray, credited: IntArray, lots: IntArray,
                  redeem: IntArray, after: IntArray, expiry_days: int,
                  as_of_day: int) -> IntArray:
    """Per lot, what it lost to expiry by ``as_of_day``: ``C_i − max(G, C_{i−1})``."""
    expires = moves.day[lots] + expiry_days
    due = expires <= as_of_day
    span = _span(moves, expiry_days)
    group = moves.group[lots]
    # G: F after the customer's last redemption on a day before the lot's expiry day
    prior = np.zeros(len(lots), dtype=np.int64)
    if len(redeem):
        keys = moves.group[redeem] * span + moves.day[redeem]
        last = np.maximum(np.searchsorted(keys, group * span + expires, side="left") - 1, 0)
        own = (moves.group[redeem[last]] == group) & (moves.day[redeem[last]] < expires)
        prior = np.where(own, after[last], 0)
    upto_lot = upto[lots]
    lost = upto_lot - np.maximum(prior, upto_lot - credited[lots])
    return np.where(due, np.clip(lost, 0, None), 0)


@dataclass
class BulkWalk:
    """What the bulk walk decided: entries built one by one (redemptions, expiries of
    bonus lots), what each earn's lot lost to expiry, and who was left for the walk."""

    entries: list[LedgerEntry]
    rows: list[int]  # customer row of each entry
    left: list[int]  # rows with tied moves: for the one-by-one walk
    clamped: int
    # purchases (ascending) whose lots lost points to expiry, and how many: expiry
    # entries the ledger builds as columns, like those of customers never walked
    lot_pos: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lot_lost: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def walk_in_bulk(history: PurchaseHistory, earn_points: IntArray, rows: list[int],
                 events: dict[int, list[Event]], expiry_days: int) -> BulkWalk:
    """The walk's entries for ``rows`` (ascending): customers whose ``events`` are only
    bonuses and new redemptions (nothing carried over), beside their earns."""
    if not rows:
        return BulkWalk([], [], [], 0)
    moves, refs, group_rows = _moves(history, earn_points, rows, events)
    tied = tied_groups(moves.group, [moves.day, refs.phase, refs.deal, refs.sub])
    bad = np.unique(moves.group[moves.credit & (moves.points < 0)])
    skip = np.union1d(tied, bad)
    if len(skip):
        keep = ~np.isin(moves.group, skip)
        moves = FifoMoves(moves.group[keep], moves.day[keep], moves.points[keep],
                          moves.credit[keep])
        refs = refs.take(keep)
    outcome = fifo_outcome(moves, expiry_days, history.as_of_day)
    walk = BulkWalk([], [], [group_rows[g] for g in skip.tolist()], 0)
    _redemption_entries(walk, moves, refs, outcome, history, group_rows)
    _expiry_entries(walk, moves, refs, outcome, history, group_rows, expiry_days)
    return walk


@dataclass(frozen=True)
class _Refs:
    """What the entries need of each move besides the numbers the walk uses."""

    phase: IntArray
    deal: IntArray
    sub: IntArray
    event: IntArray  # index into ``events`` of a bonus or a redemption; -1: an earn
    purchase: IntArray  # an earn's position in the purchase arrays; -1: an event
    events: list[Event]

    def take(self, keep: BoolArray) -> _Refs:
        return _Refs(self.phase[keep], self.deal[keep], self.sub[keep], self.event[keep],
                     self.purchase[keep], self.events)


def _event_column(events: list[Event], name: str) -> IntArray:
    return np.fromiter(map(attrgetter(name), events), dtype=np.int64, count=len(events))


def _moves(history: PurchaseHistory, earn_points: IntArray, rows: list[int],
           events: dict[int, list[Event]]) -> tuple[FifoMoves, _Refs, list[int]]:
    """Every earn and event of ``rows`` as moves in walk order; group g is rows[g]."""
    picked = np.array(rows, dtype=np.int64)
    counts = history.starts[picked + 1] - history.starts[picked]
    ends = np.cumsum(counts)
    pos = np.repeat(history.starts[picked] - ends + counts, counts)
    pos += np.arange(len(pos), dtype=np.int64)
    listed = [ev for row in rows for ev in events[row]]
    own = np.array([len(events[row]) for row in rows], dtype=np.int64)
    groups = np.arange(len(rows), dtype=np.int64)
    n_earns = len(pos)
    group = np.concatenate((np.repeat(groups, counts), np.repeat(groups, own)))
    day = np.concatenate((history.day[pos], _event_column(listed, "day")))
    phase = np.concatenate((np.full(n_earns, PHASE_DEAL), _event_column(listed, "phase")))
    deal = np.concatenate((history.deal_id[pos], _event_column(listed, "deal")))
    sub = np.concatenate((np.full(n_earns, SUB_EARN), _event_column(listed, "sub")))
    points = np.concatenate((earn_points[pos], _event_column(listed, "points")))
    event = np.concatenate((np.full(n_earns, -1), np.arange(len(listed))))
    purchase = np.concatenate((pos, np.full(len(listed), -1)))
    order = np.lexsort((sub, deal, phase, day, group))
    moves = FifoMoves(group[order], day[order], points[order], sub[order] != SUB_REDEEM)
    refs = _Refs(phase[order], deal[order], sub[order], event[order], purchase[order], listed)
    return moves, refs, rows


def _redemption_entries(walk: BulkWalk, moves: FifoMoves, refs: _Refs,
                        outcome: FifoOutcome, history: PurchaseHistory,
                        group_rows: list[int]) -> None:
    """The redeem entries, worded as ``rules.lots`` words them."""
    at = np.flatnonzero(~moves.credit)
    asked, took = moves.points[at], outcome.taken[at]
    walk.clamped += int(np.count_nonzero(took < asked))
    ids = history.customers.ids
    for i, ask, got, group in zip(refs.event[at].tolist(), asked.tolist(), took.tolist(),
                                  moves.group[at].tolist(), strict=True):
        if got <= 0:
            continue
        ev, row = refs.events[i], group_rows[group]
        reason = f"points spent on deal {ev.deal}"
        if got < ask:
            reason += f" (requested {ask}, clamped to balance)"
        walk.entries.append(LedgerEntry(int(ids[row]), "redeem", ev.deal, -got,
                                        day_of(ev.day), None, reason, ev.key))
        walk.rows.append(row)


def _expiry_entries(walk: BulkWalk, moves: FifoMoves, refs: _Refs, outcome: FifoOutcome,
                    history: PurchaseHistory, group_rows: list[int],
                    expiry_days: int) -> None:
    """Lots that still held points on their expiry day: earns' as columns, bonuses' as
    expire entries worded as ``rules.lots`` words them."""
    lost = outcome.expired > 0
    earned = lost & (refs.purchase >= 0)
    order = np.argsort(refs.purchase[earned], kind="stable")
    walk.lot_pos = refs.purchase[earned][order]
    walk.lot_lost = outcome.expired[earned][order]
    at = np.flatnonzero(lost & (refs.purchase < 0))
    reason = f"points expired after {expiry_days} days"
    rows = [group_rows[g] for g in moves.group[at].tolist()]
    ids = history.customers.ids[np.array(rows, dtype=np.int64)].tolist()
    for customer, points, day, i in zip(
            ids, outcome.expired[at].tolist(), (moves.day[at] + expiry_days).tolist(),
            refs.event[at].tolist(), strict=True):
        walk.entries.append(LedgerEntry(customer, "expire", None, -points, day_of(day), None,
                                        reason, "expire:" + refs.events[i].key))
    walk.rows.extend(rows)
