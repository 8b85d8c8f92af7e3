"""Giving freed heap memory back to the system, at the recompute's phase boundaries.

A recompute frees hundreds of MB at a time — the deal scan's row tuples, the raw columns
once the purchase history is built — but glibc keeps freed blocks below the top of its
heap mapped, so the process's resident memory does not shrink.  Worse, a child forked
then shares those dead pages with the parent, and each page the parent reuses afterwards
is copied: the dead memory is counted twice.  ``malloc_trim`` hands the pages of free
blocks back (at a million customers ~300 MB, in ~10 ms).

Trimming reaches only whole free pages, and between two forks the rules' numpy work
frees and reallocates large arrays by the hundred: ``map_large_blocks`` serves blocks
of 4 MiB or more from mappings of their own, unmapped when freed (glibc otherwise raises
that threshold to the largest block freed, so that such arrays come from its heap and
linger there).  At a million customers that lowered the recompute's peak by ~250 MB
for ~0.5 s more (bench/RESULTS.md).  It is a process-wide setting, and it stays: for
a process that recomputes on a schedule that is the point.
"""

from __future__ import annotations

import ctypes

__all__ = ["map_large_blocks", "return_freed_memory"]


def _load_libc() -> ctypes.CDLL | None:
    # The process's own symbols: CPython is linked against the C library, and this needs
    # no search for its file (ctypes.util.find_library runs ldconfig in a subprocess).
    try:
        libc = ctypes.CDLL(None)
        trim, options = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: musl, macOS, Windows
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    options.argtypes, options.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


_LIBC = _load_libc()


def return_freed_memory() -> bool:
    """Return the pages of freed heap blocks to the system; False where the C library
    offers no way (then nothing happens)."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def map_large_blocks(threshold: int = 4 << 20) -> bool:
    """From now on, serve blocks of ``threshold`` bytes or more from their own mappings,
    so each is returned to the system the moment it is freed; False where the C library
    offers no way."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, threshold))
