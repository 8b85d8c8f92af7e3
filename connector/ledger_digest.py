"""``points_ledger_digest``: the ledger's numbers in a few BLOBs, for the next recompute.

Every recompute needs two facts about the stored ledger: which earns it holds (customer,
deal, points: the engine reverses and re-prices from them) and every row's customer and
fingerprint (the store rewrites only what changed, ``connector.ledger_delta``).  Scanning
millions of rows for them cost ~10 s of Python per run; the digest holds the same
numbers as raw little-endian arrays, written in the same transaction as the rows they
describe, and is read back in well under a second without copying.

A digest whose row count disagrees with the table (rows changed by something other than
a recompute) is ignored: the recompute then scans the table instead.

Layout of one part (rows lo:hi of the ledger, in ledger order — ascending customer)::

    b"CRMLDG02", then five integer sections (connector.int_codec):
    customers[n_rows], fingerprints[n_rows],
    earn_customers[n_earns], earn_deals[n_earns], earn_points[n_earns]

The sections store each array at its narrowest width, customer ids as runs: about 80 MB
for 6.5 M rows where plain int64 took 200 MB, and the digest is rewritten every run.
A part of another version (``CRMLDG01``, plain int64) reads as no digest: the next
recompute scans the table once and writes this version.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from connector.int_codec import decode_ints, encode_ints
from rules.ledger_rows import EARN, EXTRA, LedgerRows, fingerprints

__all__ = ["DIGEST_INSERT", "PART_ROWS", "Digest", "digest_parts",
           "read_digest"]

DIGEST_INSERT = "insert into points_ledger_digest values (?, ?, ?, ?)"  # kind, part, n, blob

IntArray = npt.NDArray[np.int64]
MAGIC = b"CRMLDG02"
# Ledger rows per BLOB (about a MB each).  Parts are also what the staged store's two
# writers claim one at a time (connector.part_claims), so they are small: the two then
# finish within ~0.5 s of each other.  Any size reads back: parts are concatenated.
PART_ROWS = 1 << 16


@dataclass(frozen=True)
class Digest:
    """The stored ledger's numbers (see the module docstring)."""

    customers: IntArray
    fingerprints: IntArray
    earn_customers: IntArray
    earn_deals: IntArray
    earn_points: IntArray


def _pack(*arrays: IntArray) -> bytes:
    return MAGIC + b"".join(encode_ints(a) for a in arrays)


def _unpack(blob: bytes) -> tuple[IntArray, ...]:
    if blob[:8] != MAGIC:
        raise ValueError("not a ledger digest of this version")
    out, offset = [], len(MAGIC)
    for _ in range(5):
        array, offset = decode_ints(blob, offset)
        out.append(array)
    if offset != len(blob):
        raise ValueError("a ledger digest of the wrong length")
    rows, earns = len(out[0]), len(out[2])
    if [len(a) for a in out] != [rows, rows, earns, earns, earns]:
        raise ValueError("a ledger digest whose arrays disagree in length")
    return tuple(out)


def digest_parts(view: LedgerRows, lo: int = 0, hi: int | None = None,
                 prints: IntArray | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(part number, rows, BLOB) for ledger rows lo:hi, in parts of ``PART_ROWS``.

    ``lo`` must fall on a part boundary: part numbers are ``row // PART_ROWS``, so parts
    written by different processes for different ranges make up one digest.  ``prints``
    are the fingerprints of rows lo:hi when the caller has them already.
    """
    if lo % PART_ROWS:
        raise ValueError(f"a digest range starts on a part boundary, not at row {lo}")
    stop = len(view) if hi is None else hi
    for begin in range(lo, stop, PART_ROWS):
        end = min(begin + PART_ROWS, stop)
        known = None if prints is None else prints[begin - lo:end - lo]
        yield begin // PART_ROWS, end - begin, _pack(*_part_arrays(view, begin, end, known))


def _part_arrays(view: LedgerRows, lo: int, hi: int, prints: IntArray | None
                 ) -> tuple[IntArray, ...]:
    at = np.arange(lo, hi, dtype=np.int64)
    src, idx = view.source[at], view.index[at]
    customers = np.zeros(len(at), dtype=np.int64)
    vector = src != EXTRA
    customers[vector] = view.customer_ids[view.cust[idx[vector]]]
    extras = [view.extras[i] for i in idx[~vector].tolist()]
    customers[~vector] = [e.customer_id for e in extras]
    earn_pos = idx[src == EARN]
    extra_earns = [e for e in extras if e.kind == "earn" and e.deal_id is not None]
    # order inside a part does not matter to the readers: vector earns, then the rest
    earn_customers = np.concatenate((view.customer_ids[view.cust[earn_pos]],
                                     np.array([e.customer_id for e in extra_earns], np.int64)))
    earn_deals = np.concatenate((view.deal_id[earn_pos],
                                 np.array([e.deal_id for e in extra_earns], np.int64)))
    earn_points = np.concatenate((view.points[earn_pos],
                                  np.array([e.points for e in extra_earns], np.int64)))
    prints = fingerprints(view, at) if prints is None else prints
    return customers, prints, earn_customers, earn_deals, earn_points


def read_digest(db: Database, kind: str) -> Digest | None:
    """The stored digest of ``kind``'s ledger, or None when there is none that fits."""
    rows = db.execute("select part, entries, data from points_ledger_digest where "
                      "customer_kind = ? order by part", [kind]).fetchall()
    if not rows:
        return None
    try:
        parts = [_unpack(data) for _, _, data in rows]
    except ValueError:
        return None
    if [p for p, _, _ in rows] != list(range(len(rows))):
        return None  # a part is missing
    arrays = [np.concatenate([part[i] for part in parts]) for i in range(5)]
    held = db.execute("select count(*) from points_ledger where customer_kind = ?",
                      [kind]).fetchone()[0]
    if held != len(arrays[0]):
        return None
    return Digest(*arrays)
