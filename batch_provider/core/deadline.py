"""What happened when a wait's deadline passed, kept in the run folder beside the attempt.

Our own deadline is an ending like a provider-side expiry, not a crash: the batches are
cancelled (when asked), the wait goes on until the provider reports them ended, and collect
then takes what was answered. The record written here is the fact ("attempt N's wait passed its
deadline at T, these batches were cancelled"); what to do about the rows cut off (resubmit them,
or put them in the dead letter and end the run) is the retry step's policy (:data:`ON_TIMEOUT`).

Invariants:
- One file per attempt (``attempt-N/deadline.json``), written atomically; writing it again
  (a retried task) replaces it with the same facts.
- A missing or unreadable record means the attempt's wait ended before its deadline.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from batch_provider.core.rundir import RunDirectory, read_json, write_json_atomic

OnTimeout = Literal["partial", "fail", "retry"]
ON_TIMEOUT: tuple[str, ...] = ("partial", "fail", "retry")
"""What the retry step does with the rows a passed deadline cut off:

- ``partial`` (default): the deadline ends the run. Answered rows are in the results; the rows
  cut off go to the dead letter with the reason; the run succeeds with a warning.
- ``fail``: the same files, then the final task fails, so the run is red.
- ``retry``: the rows cut off are resubmitted like after a provider-side expiry (up to
  ``max_attempts``), each attempt with its own timeout.
"""

DEFAULT_ON_TIMEOUT: OnTimeout = "partial"


def check_on_timeout(value: str) -> str:
    if value not in ON_TIMEOUT:
        raise ValueError(f"on_timeout={value!r}: use one of {', '.join(map(repr, ON_TIMEOUT))}")
    return value


class DeadlineRecord(BaseModel):
    attempt: int
    deadline: str | None = None
    """The deadline that passed (ISO-8601)."""
    recorded_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    cancelled: dict[str, str] = Field(default_factory=dict)
    """batch id → what the cancel request answered (native status or error)."""
    still_running: list[str] = Field(default_factory=list)
    """Batches that had not ended when the grace period after the deadline ran out."""

    def reason(self) -> str:
        return f"the wait for attempt {self.attempt} passed its deadline {self.deadline or '?'}"


def deadline_path(run_dir: RunDirectory, attempt: int) -> Any:
    return run_dir.attempt_dir(attempt) / "deadline.json"


def record_deadline(run_dir: RunDirectory, record: DeadlineRecord) -> None:
    write_json_atomic(deadline_path(run_dir, record.attempt), record.model_dump(mode="json"))


def load_deadline(run_dir: RunDirectory, attempt: int) -> DeadlineRecord | None:
    path = deadline_path(run_dir, attempt)
    try:
        if not path.exists():
            return None
        return DeadlineRecord.model_validate(read_json(path))
    except (OSError, ValueError, ValidationError):
        return None


def record_from_event(attempt: int, event: dict[str, Any]) -> DeadlineRecord:
    """The record of a trigger event with status ``deadline`` or ``timeout``."""
    return DeadlineRecord(
        attempt=attempt,
        deadline=event.get("deadline"),
        cancelled=dict(event.get("cancelled") or {}),
        still_running=list(event.get("pending") or []),
    )
