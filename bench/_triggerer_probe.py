"""An event-loop lag probe that runs inside the triggerer, deferred alongside the measured triggers.

It sleeps ``period`` seconds in a loop and records how late each sleep wakes up; once a second it
appends ``<unix time> <lag ms>`` lines to ``path``. It never fires: the benchmark stops the
triggerer when it is done. A frozen loop shows up as one huge overshoot (and as no lines at all
while it stays frozen).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class LagProbeTrigger(BaseTrigger):
    def __init__(self, path: str, period: float = 0.02):
        super().__init__()
        self.path = path
        self.period = float(period)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"path": self.path, "period": self.period},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        lines: list[str] = []
        last_flush = time.monotonic()
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.period)
            lag_ms = max(0.0, (time.perf_counter() - started - self.period) * 1000)
            lines.append(f"{time.time():.3f} {lag_ms:.2f}\n")
            if time.monotonic() - last_flush >= 1.0:
                with open(self.path, "a") as out:
                    out.writelines(lines)
                lines.clear()
                last_flush = time.monotonic()
        yield TriggerEvent({})  # pragma: no cover - never reached; makes run() an async generator
