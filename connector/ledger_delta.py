"""Which ``points_ledger`` rows a recompute really changes.

A day's recompute re-derives millions of entries of which a few thousand differ from
what the mirror holds (new purchases, expiries that fell due, reversals).  Rewriting all
of them costs most of the store; comparing them costs two integer columns.  Every row
carries a ``fingerprint`` (``rules.ledger_rows.fingerprints``: a stable 64-bit hash of
its whole content), written with it; the new ledger's fingerprints are computed the same
way, and rows are matched on (customer, fingerprint):

* a new entry without a stored match is new or changed: it is *upserted* (its primary
  key may exist, with other content: ``INSERT OR REPLACE``);
* a stored row without a new match is stale: it is *deleted* first — its key either
  vanished or comes back with new content among the upserts.

Matching within one customer keeps an accidental 64-bit collision out of reach.  A row
stored without a fingerprint (an older version) matches nothing and is rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from rules.ledger_rows import EXTRA, LedgerRows, fingerprints

__all__ = ["LedgerDelta", "entry_customers", "ledger_delta", "stored_fingerprints"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LedgerDelta:
    """What to write: new entries to upsert, stored rows to delete."""

    upsert: IntArray  # positions in the new ledger
    stale: list[tuple[int, int]]  # (customer_id, fingerprint) of stored rows to delete
    stored: int  # rows held before
    fingerprints: IntArray  # of the whole new ledger, in ledger order


def stored_fingerprints(db: Database, kind: str) -> tuple[IntArray, IntArray]:
    """(customer ids, fingerprints) of the stored ``kind`` rows; NULL reads as 0."""
    cursor = db.execute("select customer_id, coalesce(fingerprint, 0) from points_ledger "
                        "where customer_kind = ?", [kind])
    rows = np.fromiter(cursor, dtype=[("customer", "i8"), ("fingerprint", "i8")])
    return rows["customer"].copy(), rows["fingerprint"].copy()


_CHUNK = 1 << 19  # new entries matched at once: the sorts stay small


def ledger_delta(view: LedgerRows, db: Database, kind: str,
                 stored: tuple[IntArray, IntArray] | None = None) -> LedgerDelta:
    """Compare the new ledger ``view`` with the stored rows of ``kind``.

    ``stored`` is (customer ids, fingerprints) of the stored rows when the caller has
    already read them; otherwise they are read from ``db``.  Both sides are in ascending
    customer order, so they are matched a block of customers at a time.
    """
    old_customer, old_fp = stored if stored is not None else stored_fingerprints(db, kind)
    if np.any(old_customer[1:] < old_customer[:-1]):  # not in key order: put it there
        order = np.argsort(old_customer, kind="stable")
        old_customer, old_fp = old_customer[order], old_fp[order]
    new_customer = entry_customers(view)
    new_fp = np.zeros(len(view), dtype=np.int64)
    new_hit = np.zeros(len(view), dtype=np.bool_)
    old_hit = np.zeros(len(old_fp), dtype=np.bool_)
    for lo, hi, o_lo, o_hi in _blocks(new_customer, old_customer):
        new_fp[lo:hi] = fingerprints(view, np.arange(lo, hi, dtype=np.int64))
        new_hit[lo:hi], old_hit[o_lo:o_hi] = _matched(
            new_customer[lo:hi], new_fp[lo:hi], old_customer[o_lo:o_hi], old_fp[o_lo:o_hi])
    stale = np.flatnonzero(~old_hit)
    return LedgerDelta(np.flatnonzero(~new_hit),
                       list(zip(old_customer[stale].tolist(), old_fp[stale].tolist(),
                                strict=True)),
                       len(old_fp), new_fp)


def _blocks(new_customer: IntArray, old_customer: IntArray
            ) -> list[tuple[int, int, int, int]]:
    """(new lo, hi, old lo, hi) slices that split both sides on the same customers."""
    if np.any(new_customer[1:] < new_customer[:-1]):  # never from the engine
        return [(0, len(new_customer), 0, len(old_customer))]
    blocks, lo, o_lo = [], 0, 0
    while lo < len(new_customer):
        last = new_customer[min(lo + _CHUNK, len(new_customer)) - 1]
        hi = int(np.searchsorted(new_customer, last, side="right"))
        o_hi = (int(np.searchsorted(old_customer, last, side="right"))
                if hi < len(new_customer) else len(old_customer))
        blocks.append((lo, hi, o_lo, o_hi))
        lo, o_lo = hi, o_hi
    if not blocks:
        blocks.append((0, 0, 0, len(old_customer)))
    return blocks


def entry_customers(view: LedgerRows) -> IntArray:
    """The customer id of every entry, in ledger order."""
    out = np.zeros(len(view), dtype=np.int64)
    # A slice at a time: over the whole ledger the index arrays of this one line would
    # hold ~180 MB at once, in a child forked when the store's memory peaks.
    for lo in range(0, len(view), _CHUNK):
        source, index = view.source[lo:lo + _CHUNK], view.index[lo:lo + _CHUNK]
        vector = source != EXTRA
        out[lo:lo + _CHUNK][vector] = view.customer_ids[view.cust[index[vector]]]
        extra = index[~vector].tolist()
        out[lo:lo + _CHUNK][~vector] = [view.extras[i].customer_id for i in extra]
    return out


def _matched(new_customer: IntArray, new_fp: IntArray, old_customer: IntArray,
             old_fp: IntArray) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Which new and which old rows have a partner (same customer and fingerprint).

    A fingerprint hashes the customer too, so it nearly always names one row; the customer
    is compared as well, and a stored row without a fingerprint (0) never pairs.  Should
    two stored rows ever share a fingerprint, one of them goes unpaired and is rewritten:
    a wasted write, never a wrong one.
    """
    new_hit = np.zeros(len(new_fp), dtype=np.bool_)
    old_hit = np.zeros(len(old_fp), dtype=np.bool_)
    if len(old_fp) and len(new_fp):
        # Both sides sorted first: a binary search per random query misses the cache at
        # every step (8.8 s for 6.5M rows here), a search of sorted queries is a merge.
        old_order = np.argsort(old_fp, kind="stable")  # radix sort for integers
        new_order = np.argsort(new_fp, kind="stable")
        pos = np.searchsorted(old_fp[old_order], new_fp[new_order])
        np.minimum(pos, len(old_fp) - 1, out=pos)
        candidate = old_order[pos]
        del old_order, pos
        hit = ((old_fp[candidate] == new_fp[new_order])
               & (old_customer[candidate] == new_customer[new_order]) & (new_fp[new_order] != 0))
        new_hit[new_order[hit]] = True
        old_hit[candidate[hit]] = True
    return new_hit, old_hit
