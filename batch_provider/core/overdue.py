"""The fact "this attempt's wait was reported overdue", kept in the run folder beside the attempt.

A wait in the worker (the sensor's poke or reschedule mode, the retry task's wait for an attempt
with ``deferrable=False``) has no trigger state to remember that it already told: a reschedule
builds the task anew for every poke, and a worker may restart. The note here is what keeps an
overdue report to once per attempt there; the deferred waits write it too, and read it before
deferring, so a new try of the task does not report the same attempt again.

Invariants:
- One file per attempt (``attempt-N/overdue.json``), written atomically; writing it again
  replaces it with the same kind of facts.
- A missing or unreadable note means the attempt was not reported overdue yet.
- Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from batch_provider.core.rundir import RunDirectory, read_json, write_json_atomic


def overdue_path(run_dir: RunDirectory, attempt: int) -> Any:
    return run_dir.attempt_dir(attempt) / "overdue.json"


def note_overdue(run_dir: RunDirectory, attempt: int, event: Mapping[str, Any], *, task_id: str = "") -> None:
    """Note that attempt ``attempt``'s wait was reported overdue: when, by which task, and each
    late batch's expected end and status then."""
    late = event.get("overdue") or {}
    write_json_atomic(
        overdue_path(run_dir, attempt),
        {
            "attempt": attempt,
            "reported_at": datetime.now(UTC).isoformat(),
            "task_id": task_id,
            "overdue": {
                b: {"expected_by": info.get("expected_by"), "native_status": info.get("native_status")}
                for b, info in late.items()
            },
        },
    )


def overdue_noted(run_dir: RunDirectory, attempt: int) -> bool:
    """Whether attempt ``attempt``'s wait was already reported overdue."""
    path = overdue_path(run_dir, attempt)
    try:
        if not path.exists():
            return False
        return isinstance(read_json(path), dict)
    except (OSError, ValueError):
        return False
