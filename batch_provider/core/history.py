"""Completion-time history: how long batches of one (DAG, task group, provider, model) take.

Each batch's timeline (created, started where the provider says, ended) gives its queue time
(created → started), processing time (started → ended) and completion time (created → ended).
Completed batches are kept, one small JSON file per key, beside the run folders:
``<run_path>/_history/<dag_id>/<group>/<provider>--<model>.json``. The history answers "how long
does a batch of about N requests usually take": p50 and p95 of the completion times of batches of
a similar request count (within a factor :data:`SIMILAR_SIZE` of N), or of every batch kept when
fewer than :data:`MIN_SIMILAR` are that close.

Invariants:
- Only batches that ended ``completed`` are recorded: an expired or cancelled batch says nothing
  about how long a batch takes. An entry is recorded once per batch id (collecting again is a no-op).
- A file holds at most :data:`MAX_ENTRIES` entries (the newest), so it stays a few tens of KB.
- Files are written whole (:func:`write_json_atomic`). Two runs recording at the same moment may
  lose one entry (last writer wins): the history only sharpens estimates, it is never a record.
- Nothing here imports Airflow, and a history that cannot be read is an empty one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from batch_provider.core.rundir import read_json, safe_segment, write_json_atomic
from batch_provider.core.sweeps import duration_text

log = logging.getLogger(__name__)

HISTORY_FOLDER = "_history"
MAX_ENTRIES = 200
SIMILAR_SIZE = 4.0
"""Batches whose request count is within this factor of the one asked about count as similar."""
MIN_SIMILAR = 3


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


@dataclass(frozen=True)
class Timeline:
    """A batch's times as its provider reports them; ``started_at`` only where the provider says
    (OpenAI's ``in_progress_at``), so queue and processing time are None elsewhere."""

    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None

    @property
    def queue_seconds(self) -> float | None:
        return seconds_between(self.created_at, self.started_at)

    @property
    def processing_seconds(self) -> float | None:
        return seconds_between(self.started_at, self.ended_at)

    @property
    def completion_seconds(self) -> float | None:
        return seconds_between(self.created_at, self.ended_at)


class HistoryEntry(BaseModel):
    batch_id: str
    requests: int
    seconds: float
    """Completion time: created → ended."""
    queue_seconds: float | None = None
    ended_at: datetime | None = None


class Estimate(BaseModel):
    """Usual completion time of a batch of ``requests`` requests, from ``samples`` past batches."""

    requests: int
    p50_seconds: float
    p95_seconds: float
    samples: int

    def phrase(self) -> str:
        return f"usually done in {duration_text(self.p50_seconds)} (p95 {duration_text(self.p95_seconds)})"


class CompletionHistory(BaseModel):
    entries: list[HistoryEntry] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Any) -> CompletionHistory:
        try:
            if not path.exists():
                return cls()
            return cls.model_validate(read_json(path))
        except Exception as exc:  # a broken history is an empty one, never a failed task
            log.warning("Ignoring the completion-time history at %s: %s", path, exc)
            return cls()

    def save(self, path: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.model_dump(mode="json"))

    def add(self, entries: Iterable[HistoryEntry]) -> int:
        """Add the entries not already kept (by batch id), keep the newest ``MAX_ENTRIES``;
        returns how many were new."""
        known = {e.batch_id for e in self.entries}
        new = [e for e in entries if e.batch_id not in known]
        self.entries = (self.entries + new)[-MAX_ENTRIES:]
        return len(new)

    def estimate(self, requests: int) -> Estimate | None:
        """p50/p95 of completion time for a batch of ``requests`` requests; None without history."""
        if not self.entries:
            return None
        size = max(requests, 1)
        low, high = size / SIMILAR_SIZE, size * SIMILAR_SIZE
        similar = [e for e in self.entries if low <= max(e.requests, 1) <= high]
        chosen = similar if len(similar) >= MIN_SIMILAR else self.entries
        times = sorted(e.seconds for e in chosen)
        return Estimate(
            requests=requests,
            p50_seconds=percentile(times, 50),
            p95_seconds=percentile(times, 95),
            samples=len(times),
        )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class HistoryKey:
    dag_id: str
    group: str
    provider: str
    model: str

    def path(self, run_path_root: Any) -> Any:
        name = f"{safe_segment(self.provider)}--{safe_segment(self.model)}.json"
        return run_path_root / HISTORY_FOLDER / safe_segment(self.dag_id) / safe_segment(self.group) / name


def key_of_run_folder(run_root: Any, provider: str, model: str | None) -> tuple[Any, HistoryKey]:
    """The ``run_path`` root and history key of a run folder ``<run_path>/<dag_id>/<run_id>/<group>``
    (a mapped group's ``.map-N`` suffix dropped: every map index shares one history)."""
    group = str(run_root.name)
    if ".map-" in group:
        group = group.rsplit(".map-", 1)[0]
    dag_folder = run_root.parent.parent
    key = HistoryKey(dag_id=str(dag_folder.name), group=group, provider=provider, model=model or "default")
    return dag_folder.parent, key


def record_completed(run_root: Any, provider: str, batches: Iterable[Any]) -> int:
    """Record the completed ones of ``batches`` (objects with ``batch_id``, ``model``,
    ``request_count``, ``ending``, ``created_at``, ``started_at``, ``ended_at``) in their keys'
    histories. Returns how many entries were new; a storage error is logged, never raised."""
    by_model: dict[str | None, list[HistoryEntry]] = {}
    for b in batches:
        timeline = Timeline(b.created_at, getattr(b, "started_at", None), b.ended_at)
        seconds = timeline.completion_seconds
        if b.ending != "completed" or seconds is None:
            continue
        by_model.setdefault(b.model, []).append(
            HistoryEntry(
                batch_id=b.batch_id,
                requests=b.request_count,
                seconds=seconds,
                queue_seconds=timeline.queue_seconds,
                ended_at=b.ended_at,
            )
        )
    added = 0
    for model, entries in by_model.items():
        root, key = key_of_run_folder(run_root, provider, model)
        path = key.path(root)
        try:
            history = CompletionHistory.load(path)
            new = history.add(entries)
            if new:
                history.save(path)
            added += new
        except Exception as exc:
            log.warning("Could not update the completion-time history at %s: %s", path, exc)
    return added


def estimate_for(run_root: Any, provider: str, model: str | None, requests: int) -> Estimate | None:
    """The usual completion time of a batch of ``requests`` requests in this run folder's key."""
    root, key = key_of_run_folder(run_root, provider, model)
    return CompletionHistory.load(key.path(root)).estimate(requests)
