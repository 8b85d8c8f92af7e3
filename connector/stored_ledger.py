"""The ``points_ledger`` rows a recompute starts from, read back from the mirror.

Two things need them: the engine (``rules.columns.PreviousLedger``: which earns existed,
with what points, and the bonus / redemption / reversal entries in full) and the store
(which rows it can leave as they are: ``connector.ledger_delta``).  One scan serves both:
every stored row of the customer kind as numbers — customer, deal, points, fingerprint —
and only the non-earn entries as objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from connector.ledger_digest import Digest, read_digest
from connector.mirror import Mirror
from rules.columns import PreviousLedger
from rules.models import LedgerEntry, LedgerKind

__all__ = ["StoredLedger", "load_previous_columns", "load_previous_ledger", "read_stored"]

IntArray = npt.NDArray[np.int64]
_COLUMNS = "customer_id, kind, deal_id, points, at, tier_at_purchase, reason, entry_key"
_ROW = np.dtype([("customer", "i8"), ("earn", "?"), ("deal", "i8"), ("points", "i8"),
                 ("fingerprint", "i8")])


class _HasDb(Protocol):
    @property
    def db(self) -> Database:
        """The sqlite-utils database to read from."""


def _entry(r: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(r[0], cast(LedgerKind, r[1]), r[2], r[3], date.fromisoformat(r[4]),
                       r[5], r[6] or "", r[7])


class _StoredEarns:
    """Fetches stored earn entries by position, for the few the engine carries over."""

    def __init__(self, mirror: Mirror, kind: str, customers: IntArray, deals: IntArray
                 ) -> None:
        self.mirror = mirror
        self.kind = kind
        self.customers = customers
        self.deals = deals

    def __call__(self, positions: IntArray) -> list[LedgerEntry]:
        # The primary key (customer_kind, customer_id, entry_key) finds each one; earn
        # keys are "earn:deal:<id>" by construction in rules.loyalty.
        sql = (f"select {_COLUMNS} from points_ledger where customer_kind = ? and "
               "customer_id = ? and entry_key = ?")
        wanted = zip(self.customers[positions].tolist(), self.deals[positions].tolist(),
                     strict=True)
        return [_entry(self.mirror.db.execute(sql, [self.kind, c, f"earn:deal:{d}"])
                       .fetchone()) for c, d in wanted]


@dataclass(frozen=True)
class StoredLedger:
    """The stored ledger of one customer kind as plain data (picklable: a child reads it).

    ``customers`` / ``fingerprints`` cover every stored row in key order (ascending
    customer; NULL fingerprints read as 0); the ``earn_*`` arrays describe its earns.
    """

    customers: IntArray
    fingerprints: IntArray
    earn_customers: IntArray
    earn_deals: IntArray
    earn_points: IntArray
    others: list[LedgerEntry]  # bonus, redeem and reversal entries
    kind: str  # whose ledger: the customer kind it was read for

    def keys_only(self) -> StoredLedger:
        """The same ledger without its earns and entries (what the store still needs)."""
        none = np.zeros(0, dtype=np.int64)
        return StoredLedger(self.customers, self.fingerprints, none, none, none, [], self.kind)

    def previous(self, mirror: Mirror) -> PreviousLedger:
        """As the engine reads it; earns that vanished are fetched from ``mirror``."""
        return PreviousLedger(earn_customer=self.earn_customers, earn_deal=self.earn_deals,
                              earn_points=self.earn_points,
                              earn_entries=_StoredEarns(mirror, self.kind,
                                                        self.earn_customers, self.earn_deals),
                              others=self.others)


def _scan_numbers(db: Database, kind: str) -> Digest:
    """What the digest holds, read row by row (no digest, or one that does not fit)."""
    cursor = db.execute(
        "select customer_id, kind = 'earn', coalesce(deal_id, -1), points, "
        "coalesce(fingerprint, 0) from points_ledger where customer_kind = ?", [kind])
    rows = np.fromiter(cursor, dtype=_ROW)
    earn = rows["earn"]
    return Digest(rows["customer"].copy(), rows["fingerprint"].copy(),
                  rows["customer"][earn].copy(), rows["deal"][earn].copy(),
                  rows["points"][earn].copy())


def read_stored(mirror: _HasDb, kind: str) -> StoredLedger:
    """The stored ``kind`` ledger's numbers (from its digest if it fits) and the non-earn
    entries in full."""
    numbers = read_digest(mirror.db, kind) or _scan_numbers(mirror.db, kind)
    others = mirror.db.execute(
        f"select {_COLUMNS} from points_ledger where customer_kind = ? "
        "and kind in ('bonus', 'redeem', 'reversal')", [kind]).fetchall()
    return StoredLedger(numbers.customers, numbers.fingerprints, numbers.earn_customers,
                        numbers.earn_deals, numbers.earn_points, [_entry(r) for r in others],
                        kind)


def load_previous_columns(mirror: Mirror, kind: str) -> PreviousLedger:
    """The stored ledger of ``kind`` customers, earns as columns (fetched in full on demand)."""
    return read_stored(mirror, kind).previous(mirror)


def load_previous_ledger(mirror: Mirror, kind: str) -> list[LedgerEntry]:
    """The stored ledger of ``kind`` customers, by customer and date, as entries."""
    sql = (f"select {_COLUMNS} from points_ledger where customer_kind = ? "
           "order by customer_id, at, entry_key")
    return [_entry(r) for r in mirror.db.execute(sql, [kind]).fetchall()]
