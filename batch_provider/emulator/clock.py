"""Emulated clock.

``now()`` = ``base`` + ``offset`` + (real seconds since start) * ``time_factor``.

Invariants:
- Emulated time never goes backwards: ``advance`` only accepts non-negative steps, and a restarted
  emulator resumes from ``max(wall clock, last saved emulated time)``.
- Nothing runs in the background: every state is derived from ``now()`` when it is read.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    def __init__(self, time_factor: float = 1.0, start: float | None = None) -> None:
        if time_factor <= 0:
            raise ValueError("time_factor must be > 0")
        self.time_factor = time_factor
        self._base = time.time() if start is None else max(start, time.time())
        self._mono0 = time.monotonic()
        self.offset = 0.0

    def now(self) -> float:
        return self._base + self.offset + (time.monotonic() - self._mono0) * self.time_factor

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the emulated clock cannot go backwards")
        self.offset += seconds
        return self.now()


def rfc3339(t: float | None) -> str | None:
    """An emulated time as the services write it (``2026-01-02T03:04:05.000000Z``), None as None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
