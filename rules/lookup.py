"""Two numpy idioms the rules use on millions of rows: find ids, and sort by several keys.

Both have a general form (binary search, ``np.lexsort``) and a fast form for the data a
CRM really has — ids that are small, mostly dense integers, and keys whose ranges fit
together in one int64.  Each function picks the fast form only where it gives exactly
the general form's answer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["index_in", "sort_order"]

IntArray = npt.NDArray[np.int64]

# A lookup table is used when the ids span at most this many slots per id (plus a
# constant): portals number records from 1 upwards, with gaps from deletions.
_TABLE_SLOTS_PER_ID = 4
_TABLE_SLACK = 1_000_000


def index_in(values: IntArray, queries: IntArray, *, ascending: bool = False) -> IntArray:
    """Position of each query in ``values`` (distinct ids), or -1 where it is absent.

    ``ascending=True`` says ``values`` are sorted already, which saves a sort when the
    ids are sparse.  For dense ids this is a table lookup, O(n): a binary search per
    query misses the cache at every step (about 1.3 s for five million deals' owners
    among a million contacts, against 0.3 s for the table).
    """
    if len(values) == 0 or len(queries) == 0:
        return np.full(len(queries), -1, dtype=np.int64)
    low, high = ((int(values[0]), int(values[-1])) if ascending
                 else (int(values.min()), int(values.max())))
    if high - low <= _TABLE_SLOTS_PER_ID * len(values) + _TABLE_SLACK:
        return _table_lookup(values, queries, low, high)
    order = None if ascending else np.argsort(values, kind="stable")
    ranked = values if order is None else values[order]
    pos = np.minimum(np.searchsorted(ranked, queries), len(ranked) - 1)
    found = pos if order is None else order[pos]
    return np.where(ranked[pos] == queries, found, -1).astype(np.int64)


def _table_lookup(values: IntArray, queries: IntArray, low: int, high: int) -> IntArray:
    dtype = np.int32 if len(values) < 2**31 else np.int64  # half the table's memory
    table = np.full(high - low + 1, -1, dtype=dtype)
    table[values - low] = np.arange(len(values), dtype=dtype)
    inside = (queries >= low) & (queries <= high)
    out = np.full(len(queries), -1, dtype=np.int64)
    out[inside] = table[queries[inside] - low]
    return out


def sort_order(*keys: npt.NDArray[np.integer]) -> npt.NDArray[np.intp]:
    """``np.lexsort(keys)`` (the last key sorts first; stable) for integer keys.

    When every key's range fits, they are packed into one int64 and sorted once: for
    five million purchases by (customer, day, deal) that takes under half the time of
    the three-key lexsort.  The order is identical, ties included (both are stable).
    """
    if not keys or len(keys[0]) == 0:
        return np.lexsort(keys) if keys else np.zeros(0, dtype=np.intp)
    lows = [int(k.min()) for k in keys]
    widths = [(int(k.max()) - low).bit_length() for k, low in zip(keys, lows, strict=True)]
    if sum(widths) > 63:
        return np.lexsort(keys)
    packed = np.zeros(len(keys[0]), dtype=np.int64)
    shift = 0
    for key, low, width in zip(keys, lows, widths, strict=True):
        packed |= (key.astype(np.int64) - low) << shift
        shift += width
    return np.argsort(packed, kind="stable")
