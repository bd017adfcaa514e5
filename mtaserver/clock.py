"""Time as an injected dependency, so tests can control it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock unix time in seconds (what is stored and shown)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (for rates and timeouts)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
