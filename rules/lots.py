"""The sequential part of the ledger: one customer's FIFO point lots, event by event.

Most customers only earn, and their ledger is built as numpy columns.  A customer with a
redemption or a reversal needs order-dependent bookkeeping — which lots a redemption
consumes, what is left to expire, what a reversal can still claw back — so their events
are replayed here, one customer at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

from rules.models import LedgerEntry

__all__ = [
    "PHASE_DEAL",
    "PHASE_EXPIRE",
    "PHASE_RECORD",
    "PHASE_REVERSAL",
    "SUB_BONUS",
    "SUB_EARN",
    "SUB_REDEEM",
    "Event",
    "Lots",
    "carried_event",
    "day_of",
    "reversal_event",
]

# Sort phases inside one day: expiries first (a lot expiring today is gone today), then
# deal events in deal order (redeem before the same deal's earn: points earned on an order
# cannot pay for it), then record-level bonuses, then reversals.
PHASE_EXPIRE, PHASE_DEAL, PHASE_RECORD, PHASE_REVERSAL = range(4)
SUB_REDEEM, SUB_EARN, SUB_BONUS = range(3)


@lru_cache(maxsize=8192)
def day_of(ordinal: int) -> date:
    """``date.fromordinal``, shared: hundreds of thousands of entries fall on few days."""
    return date.fromordinal(ordinal)


@dataclass(slots=True)
class Event:
    """One ledger movement inside the sequential walk of a single customer."""

    day: int
    phase: int
    deal: int
    sub: int
    key: str
    points: int
    entry: LedgerEntry | None  # emitted as is (carried / already built), or None


def carried_event(entry: LedgerEntry) -> Event:
    """The walk event of a previous entry carried over verbatim."""
    deal = entry.deal_id if entry.deal_id is not None else -1
    sub = {"earn": SUB_EARN, "bonus": SUB_BONUS}.get(entry.kind, SUB_REDEEM)
    phase = PHASE_DEAL if entry.deal_id is not None else PHASE_RECORD
    return Event(entry.at.toordinal(), phase, deal, sub, entry.entry_key, entry.points, entry)


def reversal_event(target: LedgerEntry, old: LedgerEntry | None, as_of_day: int) -> Event:
    """The reversal of ``target``: the stored one (``old``) if any, else a new one at as_of."""
    deal = target.deal_id if target.deal_id is not None else -1
    key = "reversal:" + target.entry_key
    if old is not None:
        return Event(old.at.toordinal(), PHASE_REVERSAL, deal, 0, key, old.points, old)
    return Event(as_of_day, PHASE_REVERSAL, deal, 0, key, -target.points, None)


class Lots:
    """FIFO point lots of one customer; balance = sum(remaining) - debt at every step."""

    def __init__(self, customer_id: int, expiry_days: int) -> None:
        self.customer_id = customer_id
        self.expiry_days = expiry_days
        # key -> [remaining, original, expired, expires_on (-1 = never / done)]
        self.lots: dict[str, list[int]] = {}
        # Lots waiting to expire, oldest first.  Events are replayed in day order, so
        # expiry days only grow along this queue: expiring is a pop from the front
        # instead of a scan of every lot at every event.
        self.pending: deque[tuple[str, list[int]]] = deque()
        self.debt = 0
        self.clamped = 0
        self.out: list[LedgerEntry] = []
        self.expired = f"points expired after {expiry_days} days"

    def credit(self, key: str, points: int, day: int) -> None:
        paid = min(self.debt, points)  # a negative balance is settled first
        self.debt -= paid
        expires = day + self.expiry_days if self.expiry_days else -1
        lot = self.lots[key] = [points - paid, points, 0, expires]
        if expires >= 0:
            self.pending.append((key, lot))

    def available(self) -> int:
        return sum(lot[0] for lot in self.lots.values())

    def consume(self, points: int) -> int:
        """Take up to ``points`` oldest-first; returns what could not be covered."""
        for lot in self.lots.values():
            if points <= 0:
                break
            take = min(lot[0], points)
            lot[0] -= take
            points -= take
        return points

    def expire_until(self, day: int) -> None:
        pending = self.pending
        while pending and pending[0][1][3] <= day:
            key, lot = pending.popleft()
            if lot[3] >= 0 and self.lots.get(key) is lot:  # not closed by a reversal
                if lot[0] > 0:
                    self.out.append(LedgerEntry(
                        self.customer_id, "expire", None, -lot[0], day_of(lot[3]), None,
                        self.expired, "expire:" + key))
                    lot[2] += lot[0]
                    lot[0] = 0
                lot[3] = -1

    def redeem(self, ev: Event) -> None:
        if ev.entry is not None:  # carried verbatim: what was spent stays spent
            self.debt += self.consume(-ev.points)
            return
        spent = min(ev.points, self.available())
        self.clamped += spent < ev.points
        self.consume(spent)
        if spent > 0:
            reason = f"points spent on deal {ev.deal}"
            if spent < ev.points:
                reason += f" (requested {ev.points}, clamped to balance)"
            self.out.append(LedgerEntry(self.customer_id, "redeem", ev.deal, -spent,
                                        day_of(ev.day), None, reason, ev.key))

    def reverse(self, ev: Event) -> None:
        target = ev.key[len("reversal:"):]
        lot = self.lots.get(target)
        if lot is None:  # reversing a redemption refunds the points as a new lot
            points = ev.points
            if points > 0:
                self.credit(ev.key, points, ev.day)
            else:
                self.debt += self.consume(-points)
        else:
            # what already expired was never the customer's to keep, so is not clawed back
            points = ev.points if ev.entry is not None else -(lot[1] - lot[2])
            owed = -points
            take = min(lot[0], owed)
            lot[0] -= take
            lot[3] = -1
            self.debt += self.consume(owed - take)
        if ev.entry is None:
            deal = ev.deal if ev.deal >= 0 else None
            self.out.append(LedgerEntry(self.customer_id, "reversal", deal, points,
                                        day_of(ev.day), None,
                                        f"reversed: {target} no longer counts", ev.key))
