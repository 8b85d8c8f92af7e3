"""Two processes sharing out a run of parts as they go: one takes from the front, the
other from the back, until they meet.

A fixed split of the ledger between the staged store's two writers was right only at
the host speed it was tuned on: on this project's VMs either side ran up to 5 s longer
than the other.  Claimed one part at a time, the two finish within about a part of
each other whatever the speed.  The counters live in an anonymous shared mapping and
are guarded by a lock; both are made before the fork, so parent and child share them.
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from connector.errors import MirrorError

__all__ = ["PartClaims"]

_ENDS = struct.Struct("qq")  # the next part from the front, one past the last from the back
# Held for two struct operations at a time: waiting longer means the other process died
# inside them, and its lock will never be released.
_LOCK_TIMEOUT = 30.0


class PartClaims:
    """Parts ``0 … count - 1``: ``front()`` claims the lowest unclaimed part, ``back()``
    the highest; both return None once every part is claimed."""

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"a negative number of parts: {count}")
        self._lock = multiprocessing.Lock()
        self._ends = mmap.mmap(-1, _ENDS.size)  # anonymous and shared: it survives a fork
        _ENDS.pack_into(self._ends, 0, 0, count)

    def front(self) -> int | None:
        """Claim the lowest unclaimed part."""
        with self._locked():
            low, high = _ENDS.unpack_from(self._ends, 0)
            if low >= high:
                return None
            _ENDS.pack_into(self._ends, 0, low + 1, high)
            return int(low)

    def back(self) -> int | None:
        """Claim the highest unclaimed part."""
        with self._locked():
            low, high = _ENDS.unpack_from(self._ends, 0)
            if low >= high:
                return None
            _ENDS.pack_into(self._ends, 0, low, high - 1)
            return int(high - 1)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=_LOCK_TIMEOUT):
            raise MirrorError("the ledger writers' part claims stayed locked: the other "
                              "writer died while claiming")
        try:
            yield
        finally:
            self._lock.release()

    def close(self) -> None:
        """Release the shared mapping (in the process that made it)."""
        self._ends.close()
