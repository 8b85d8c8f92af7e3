"""A strict emulator of the Bitrix24 REST API, shipped with the package.

It behaves as ``docs`` and the facts sheet say the cloud does — envelopes, string-typed
numbers, PHP parameter parsing and JSON quirks, select/filter/order, 50-row pages,
``start=-1``, ``batch`` with ``$result`` references, the leaky bucket (503), the
per-method time budget (429) with published server costs, faults — over seeded
customers whose buying is realistic. Tests use it in-process, ``retention demo`` uses
it, and benchmarks point other clients at it over loopback. Where the facts sheet
leaves a behaviour open, :class:`Strictness` holds the (strict by default) choice.
"""

from adapters.bitrix24.emulator.app import BitrixEmulator, EmulatorStats, Reply
from adapters.bitrix24.emulator.faults import FaultConfig
from adapters.bitrix24.emulator.generator import DataConfig
from adapters.bitrix24.emulator.limits import EmulatorLimits
from adapters.bitrix24.emulator.server import LoopbackServer, run_forever, serve
from adapters.bitrix24.emulator.store import Portal
from adapters.bitrix24.emulator.strictness import Strictness

__all__ = [
    "BitrixEmulator",
    "DataConfig",
    "EmulatorLimits",
    "EmulatorStats",
    "FaultConfig",
    "LoopbackServer",
    "Portal",
    "Reply",
    "Strictness",
    "run_forever",
    "serve",
]
