"""Queue delay: how long a batch waits after creation before the provider starts on it.

A batch's delay is ``per_batch[id]`` when set, else the next of ``next`` (delays handed to new
batches in the order they are first seen), else random within ``[seconds, max_seconds]`` (seeded
by the batch id, so every read agrees), else ``seconds``. Every provider adds it to the start of
its processing phase (OpenAI stays ``validating``, Anthropic ``in_progress`` with nothing done,
Gemini ``PENDING``, Bedrock ``Scheduled``), so a test can make one batch late.

Invariants:
- A batch's delay is pinned the first time it is read: changing the settings later only affects
  batches not seen yet, so no timeline moves backwards. ``per_batch`` set through the control API
  overrides a pin (to make a running batch late, or release a held one).
- Delays set per batch or taken from ``next`` are kept in ``<data dir>/queue_delay.json`` (written
  only when they change, never once per batch); a fixed or random delay is recomputed from the
  command-line settings after a restart.
- Times are emulated seconds, like every other duration of the emulator.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class QueueDelay:
    seconds: float = 0.0
    max_seconds: float | None = None
    """With ``max_seconds`` > ``seconds``, each batch waits a random time in between."""
    next: list[float] = field(default_factory=list)
    per_batch: dict[str, float] = field(default_factory=dict)
    explicit: set[str] = field(default_factory=set)
    """Batch ids whose delay was set per batch or taken from ``next`` (the ones saved)."""
    seed: int = 0
    path: Path | None = None

    @classmethod
    def load(cls, root: Path, seconds: float, max_seconds: float | None, seed: int) -> QueueDelay:
        delay = cls(seconds=seconds, max_seconds=max_seconds, seed=seed, path=root / "queue_delay.json")
        try:
            saved = json.loads(delay.path.read_text())
            delay.per_batch = {str(k): float(v) for k, v in saved.get("per_batch", {}).items()}
            delay.explicit = set(delay.per_batch)
            delay.next = [float(x) for x in saved.get("next", [])]
        except (OSError, ValueError, AttributeError):
            pass
        return delay

    def for_batch(self, batch_id: str) -> float:
        """The batch's delay in emulated seconds, pinned on first read."""
        pinned = self.per_batch.get(batch_id)
        if pinned is not None:
            return pinned
        if self.next:
            value = self.next.pop(0)
            self.per_batch[batch_id] = max(0.0, value)
            self.explicit.add(batch_id)
            self._save()  # a delay taken from ``next`` cannot be recomputed after a restart
            return self.per_batch[batch_id]
        if self.max_seconds is not None and self.max_seconds > self.seconds:
            value = random.Random(f"{self.seed}:{batch_id}").uniform(self.seconds, self.max_seconds)
        else:
            value = self.seconds
        self.per_batch[batch_id] = max(0.0, value)  # in memory: the settings give it again
        return self.per_batch[batch_id]

    def update(self, values: dict[str, Any]) -> None:
        """Apply ``{"seconds", "max_seconds", "next", "per_batch"}`` (each optional); a bad value
        raises ``ValueError`` before anything changes."""
        unknown = set(values) - {"seconds", "max_seconds", "next", "per_batch"}
        if unknown:
            raise ValueError(f"unknown queue delay setting(s): {', '.join(sorted(unknown))}")
        seconds = float(values.get("seconds", self.seconds))
        raw_max = values.get("max_seconds", self.max_seconds)
        max_seconds = None if raw_max is None else float(raw_max)
        upcoming = [float(x) for x in values.get("next", self.next)]
        per_batch = {str(k): float(v) for k, v in dict(values.get("per_batch", {})).items()}
        if min([seconds, *upcoming, *per_batch.values(), max_seconds or 0.0]) < 0:
            raise ValueError("queue delays must be >= 0 seconds")
        self.seconds, self.max_seconds, self.next = seconds, max_seconds, upcoming
        self.per_batch.update(per_batch)
        self.explicit.update(per_batch)
        self._save()

    def clear(self) -> None:
        self.per_batch.clear()
        self.explicit.clear()
        self.next.clear()
        self._save()

    def to_json(self) -> dict[str, Any]:
        """The settings and every delay pinned so far (``per_batch``)."""
        return {
            "seconds": self.seconds,
            "max_seconds": self.max_seconds,
            "next": list(self.next),
            "per_batch": dict(self.per_batch),
        }

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".json.tmp")
        saved = {b: self.per_batch[b] for b in self.explicit if b in self.per_batch}
        tmp.write_text(json.dumps({"per_batch": saved, "next": self.next}, separators=(",", ":")))
        os.replace(tmp, self.path)
