"""The order of ledger entries: by customer row, day, phase, deal and sub-kind.

The ledger is assembled from numpy columns (earns, simple expiries) and a list of
"extras" (bonuses, redemptions, reversals, walked expiries); both must come out in one
deterministic order, the same whichever order they were produced in.  These helpers
sort them in numpy; Python only breaks ties that every number leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.lots import (
    PHASE_DEAL,
    PHASE_EXPIRE,
    PHASE_RECORD,
    PHASE_REVERSAL,
    SUB_BONUS,
    SUB_EARN,
    SUB_REDEEM,
)
from rules.models import LedgerEntry

__all__ = ["break_ties_by_entry_key", "entry_order", "extra_sort_key", "rank_extras"]


_EARN_EXPIRY = "expire:earn:deal:"


def extra_sort_key(entry: LedgerEntry) -> tuple[int, int, int]:
    """(phase, deal id or -1, sub) of an entry built outside the earn columns.

    An earn's expiry has no deal id, but sorts by its earn's deal, as the expiries
    built as columns do; other expiries (of bonuses) come first.
    """
    deal = entry.deal_id if entry.deal_id is not None else -1
    if entry.kind == "expire":
        tail = entry.entry_key[len(_EARN_EXPIRY):]
        if entry.entry_key.startswith(_EARN_EXPIRY) and tail.isdigit():
            deal = int(tail)
        return PHASE_EXPIRE, deal, 0
    if entry.kind == "reversal":
        return PHASE_REVERSAL, deal, 0
    sub = {"redeem": SUB_REDEEM, "earn": SUB_EARN}.get(entry.kind, SUB_BONUS)
    return (PHASE_DEAL if entry.deal_id is not None else PHASE_RECORD), deal, sub


def rank_extras(extras: list[LedgerEntry], rows: list[int]
                ) -> tuple[list[LedgerEntry], list[int], npt.NDArray[np.int64]]:
    """``extras`` (and their customer ``rows``) sorted by (row, day, phase, deal, sub,
    entry_key), with those numeric keys as a 5 × n array in the new order.

    Fully ordered (entry_key breaks ties) so the stable final sort never depends on the
    order in which the extras were produced. The numeric keys sort in numpy; only runs
    of equal numeric keys, rare, are ordered by entry_key in Python.
    """
    n = len(extras)
    keys = np.empty((5, n), dtype=np.int64)
    keys[0] = rows
    keys[1] = [e.at.toordinal() for e in extras]
    keys[2:] = np.array([extra_sort_key(e) for e in extras], dtype=np.int64).reshape(n, 3).T
    order = np.lexsort(keys[::-1])
    keys = keys[:, order]
    order_list = order.tolist()
    # Reordering inside a tie run leaves ``keys`` as it is: its columns there are equal.
    break_ties_by_entry_key(keys, order_list, extras)
    return [extras[i] for i in order_list], keys[0].tolist(), keys


def break_ties_by_entry_key(keys: npt.NDArray[np.int64], order: list[int],
                             extras: list[LedgerEntry]) -> None:
    """Within each run of equal numeric keys, reorder ``order`` by entry_key."""
    if keys.shape[1] < 2:
        return
    same = (keys[:, 1:] == keys[:, :-1]).all(axis=0)
    if not same.any():
        return
    edges = np.flatnonzero(np.diff(np.concatenate(([0], same.view(np.int8), [0]))))
    for start, stop in zip(edges[::2].tolist(), (edges[1::2] + 1).tolist(), strict=True):
        order[start:stop] = sorted(order[start:stop], key=lambda i: extras[i].entry_key)


Parts = list[npt.NDArray[Any]]


def entry_order(row: Parts, day: Parts, phase: Parts, deal: Parts, sub: Parts
                ) -> npt.NDArray[np.intp]:
    """Entries ordered by (row, day, phase, deal, sub), as a five-key lexsort would.

    Each key comes in parts (earns, expiries, extras), concatenated in the same order;
    the lists are emptied on the way so every part is freed once used — joining the
    five keys first would hold ~120 MB more at the compute's memory peak.  Packed into
    two int64 keys when the values fit (rows < 2**31, day ordinals < 2**22, phase and
    sub < 4, deal ids < 2**60): a two-key lexsort over millions of entries takes about
    three quarters of the time of the five-key one.
    """
    single = _one_key_widths(row, day, deal)
    if single is not None:
        return _one_key_order(row, day, phase, deal, sub, *single)
    fits = (_within(row, 0, 2**31) and _within(day, 0, 2**22)
            and _within(deal, -1, 2**60))
    if not fits:
        keys = [np.concatenate(k) for k in (sub, deal, phase, day, row)]
        for k in (sub, deal, phase, day, row):
            k.clear()
        return np.lexsort(keys)
    primary = _packed([row, day, phase], lambda r, d, p: (r.astype(np.int64) << 24)
                      | (d.astype(np.int64) << 2) | p)
    secondary = _packed([deal, sub], lambda d, s: ((d.astype(np.int64) + 1) << 2) | s)
    return np.lexsort((secondary, primary))


def _one_key_widths(row: Parts, day: Parts, deal: Parts) -> tuple[int, int, int] | None:
    """(lowest day, bits for the day offset, bits for deal + 1) when the five keys pack
    into one non-negative int64, else None."""
    def span(parts: Parts) -> tuple[int, int]:
        return (min(int(p.min()) for p in parts if len(p)),
                max(int(p.max()) for p in parts if len(p)))

    if not any(len(p) for p in row):
        return None
    (row_low, row_high), (first_day, last_day), (deal_low, deal_high) = (
        span(row), span(day), span(deal))
    if row_low < 0 or deal_low < -1:
        return None
    row_bits, day_bits = row_high.bit_length(), (last_day - first_day).bit_length()
    deal_bits = (deal_high + 1).bit_length()
    if row_bits + day_bits + deal_bits + 4 > 63:
        return None
    return first_day, day_bits, deal_bits


def _one_key_order(row: Parts, day: Parts, phase: Parts, deal: Parts, sub: Parts,
                   first_day: int, day_bits: int, deal_bits: int) -> npt.NDArray[np.intp]:
    """The lexsort order from one packed key: each part (earns, expiries, extras) is
    already in key order, so a stable sort only merges a few runs."""
    def pack(r: Any, d: Any, p: Any, e: Any, s: Any) -> npt.NDArray[np.int64]:
        key: npt.NDArray[np.int64] = r.astype(np.int64) << (day_bits + 2 + deal_bits + 2)
        key |= (d.astype(np.int64) - first_day) << (2 + deal_bits + 2)
        key |= p.astype(np.int64) << (deal_bits + 2)
        key |= (e.astype(np.int64) + 1) << 2
        key |= s.astype(np.int64)
        return key

    return np.argsort(_packed([row, day, phase, deal, sub], pack), kind="stable")


def _within(parts: Parts, low: int, high: int) -> bool:
    """Every value of every part in [low, high)."""
    return all(len(p) == 0 or (int(p.min()) >= low and int(p.max()) < high) for p in parts)


def _packed(keys: list[Parts], pack: Callable[..., npt.NDArray[np.int64]]
            ) -> npt.NDArray[np.int64]:
    """``pack`` of the keys' parts, part by part, freeing each part once packed."""
    out = []
    while keys[0]:
        out.append(pack(*(k.pop(0) for k in keys)))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
