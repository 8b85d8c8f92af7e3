"""A compact, exact byte encoding of int64 arrays: narrowest width, runs where they pay.

The ledger digest (:mod:`connector.ledger_digest`) stores millions of integers per run
and rewrites them in the same transaction as the rows they describe, so every byte
costs twice (journal and database).  Its arrays are highly regular — customer ids come
in runs (one per entry of a customer, in ledger order), deal ids and points fit in 32
or 16 bits — so each array is stored as whichever is smaller:

* *plain*: the values at the narrowest little-endian width that holds them all;
* *runs*: one value and one repeat count per run of equal neighbours, each at its own
  narrowest width.

Section layout: ``int64 length, uint8 codec (0 plain, 1 runs), uint8 value width,
uint8 count width, 5 zero bytes, int64 stored values``, then the values and (runs) the
counts.  Decoding gives back the int64 array exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["decode_ints", "encode_ints"]

IntArray = npt.NDArray[np.int64]
_WIDTHS: dict[int, np.dtype[Any]] = {w: np.dtype(f"<i{w}") for w in (1, 2, 4, 8)}
_HEADER = 24
PLAIN, RUNS = 0, 1


def _width(values: IntArray) -> int:
    """Bytes per value of the narrowest signed type holding every one of ``values``."""
    if len(values) == 0:
        return 1
    low, high = int(values.min()), int(values.max())
    for width in (1, 2, 4):
        bound = 1 << (8 * width - 1)
        if -bound <= low and high < bound:
            return width
    return 8


def encode_ints(values: npt.ArrayLike) -> bytes:
    """One section holding ``values`` (int64) in the smaller of the two codecs."""
    array = np.ascontiguousarray(values, dtype=np.int64)
    n = len(array)
    starts = np.flatnonzero(np.concatenate(([True], array[1:] != array[:-1]))) if n else \
        np.zeros(0, dtype=np.int64)
    run_values = array[starts]
    counts = np.diff(np.append(starts, n))
    plain_width, value_width, count_width = _width(array), _width(run_values), _width(counts)
    if len(starts) * (value_width + count_width) < n * plain_width:
        return (_header(n, RUNS, value_width, count_width, len(starts))
                + run_values.astype(_WIDTHS[value_width]).tobytes()
                + counts.astype(_WIDTHS[count_width]).tobytes())
    return _header(n, PLAIN, plain_width, 0, n) + array.astype(_WIDTHS[plain_width]).tobytes()


def _header(n: int, codec: int, value_width: int, count_width: int, stored: int) -> bytes:
    return (np.array([n], dtype="<i8").tobytes()
            + bytes((codec, value_width, count_width, 0, 0, 0, 0, 0))
            + np.array([stored], dtype="<i8").tobytes())


def decode_ints(blob: bytes, offset: int) -> tuple[IntArray, int]:
    """The array of the section at ``offset`` and the offset just past it.

    Raises ValueError on anything that is not a complete, well-formed section.
    """
    if offset + _HEADER > len(blob):
        raise ValueError("a truncated integer section")
    n = int(np.frombuffer(blob, dtype="<i8", count=1, offset=offset)[0])
    codec, value_width, count_width = blob[offset + 8], blob[offset + 9], blob[offset + 10]
    stored = int(np.frombuffer(blob, dtype="<i8", count=1, offset=offset + 16)[0])
    widths_ok = value_width in _WIDTHS and (count_width in _WIDTHS if codec == RUNS
                                            else count_width == 0)
    if codec not in (PLAIN, RUNS) or not widths_ok or n < 0 or stored < 0 or \
            (codec == PLAIN and stored != n):
        raise ValueError("a malformed integer section")
    start = offset + _HEADER
    end = start + stored * (value_width + count_width)
    if end > len(blob):
        raise ValueError("a truncated integer section")
    values = np.frombuffer(blob, dtype=_WIDTHS[value_width], count=stored, offset=start)
    if codec == PLAIN:
        return values.astype(np.int64), end
    counts = np.frombuffer(blob, dtype=_WIDTHS[count_width], count=stored,
                           offset=start + stored * value_width).astype(np.int64)
    if np.any(counts <= 0) or int(counts.sum()) != n:
        raise ValueError("a malformed integer section")
    return np.repeat(values.astype(np.int64), counts), end
