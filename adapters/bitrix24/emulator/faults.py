"""Seeded fault injection: the failures a real portal and its proxies produce.

Faults are drawn per HTTP request *before* it is processed, so an injected failure
never changes the portal's state. Latency jitter comes from its own generator, so
turning it on does not change which requests fail for a seed.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

__all__ = ["FAULT_KINDS", "FaultConfig", "FaultInjector"]

FAULT_KINDS = ("503", "429", "500", "html", "drop", "timeout")


@dataclass(frozen=True)
class FaultConfig:
    """Inject one of ``kinds`` with probability ``rate`` per request (deterministic by seed).

    ``jitter_s``: extra latency per answered request, uniform in ``[0, jitter_s)``
    seconds (before ``time_scale``), on top of ``EmulatorLimits.latency_s``.
    """

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {FAULT_KINDS}")
        if self.jitter_s < 0:
            raise ValueError(f"jitter_s must be >= 0, not {self.jitter_s}")


class FaultInjector:
    """Draws faults from a seeded generator (thread-safe)."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._latency_rng = random.Random(f"latency-{config.seed}")
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        """The fault for the next request, or None."""
        if self.config.rate <= 0:
            return None
        with self._lock:
            if self._rng.random() >= self.config.rate:
                return None
            return self._rng.choice(self.config.kinds)

    def jitter(self) -> float:
        """Extra latency for the next answer, in unscaled seconds (0 when off)."""
        if self.config.jitter_s <= 0:
            return 0.0
        with self._lock:
            return self._latency_rng.random() * self.config.jitter_s
