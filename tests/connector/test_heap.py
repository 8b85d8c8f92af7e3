"""connector.heap: freed heap memory handed back to the system (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from connector.heap import map_large_blocks, return_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")

# Many small blocks (served from the heap, not mapped), every tenth kept: the heap cannot
# shrink from the top, so only a trim returns the freed pages in between.
_FRAGMENTED = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from connector.heap import return_freed_memory

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

blocks = [bytearray(64 * 1024) for _ in range(6000)]
kept = blocks[::10]
del blocks
before = rss_mb()
return_freed_memory()
print(before - rss_mb())
"""


@glibc
def test_a_trim_returns_the_freed_pages_between_live_blocks() -> None:
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED.format(root=root)], check=True,
                         capture_output=True, text=True).stdout
    # ~375 MB were allocated and 90 % freed; the heap kept them until the trim
    assert float(out) > 200


@glibc
def test_both_settings_report_that_they_took_effect_on_glibc() -> None:
    assert return_freed_memory() is True
    assert map_large_blocks() is True


def test_without_glibc_both_are_harmless_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    import connector.heap as heap

    monkeypatch.setattr(heap, "_LIBC", None)
    assert heap.return_freed_memory() is False
    assert heap.map_large_blocks() is False
