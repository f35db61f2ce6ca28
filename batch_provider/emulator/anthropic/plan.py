"""An Anthropic batch's plan: how many requests, which end ``errored`` and why, and where each
request starts in the stored input; built once from the input at create, then read by the state
machine (:mod:`.state`) and the results writer (:mod:`.outputs`)."""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from dataclasses import dataclass, field

from ..faults import BatchFaults


@dataclass
class Plan:
    n: int = 0
    fail: dict[int, tuple[str, str]] = field(default_factory=dict)
    """index → (error type, message) of requests that end ``errored``."""
    fail_sorted: list[int] = field(default_factory=list)
    offsets: array = field(default_factory=lambda: array("Q", [0]))
    faults: BatchFaults = field(default_factory=BatchFaults)
    injected: Counter[str] = field(default_factory=Counter)
    """Injected faults by kind (``item_<status>``, ``batch_<directive>``), for the stats."""

    def failed_before(self, k: int) -> int:
        return bisect.bisect_left(self.fail_sorted, k)
