"""When a run's sync fallback starts: ``sync_fallback_at`` as a time of day or a duration.

- A duration (``timedelta``, seconds as a number, or ``"90m"``-style text is not accepted: use a
  ``timedelta``) counts from the submit (the run's first batch creation).
- A time of day (``"07:00"``, ``"06:30:15"`` or a ``datetime.time``) is read in the DAG's
  timezone: the first such moment after the submit (a run submitted at 07:30 with
  ``"07:00"`` falls back at 07:00 the next day).

Invariant: the fallback moment is a deadline for the first wait like ``timeout``; the wait ends
at whichever comes first.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, tzinfo

SyncFallbackAt = str | time | timedelta | float | int


def check_sync_fallback_at(value: SyncFallbackAt | None) -> SyncFallbackAt | None:
    """``value`` unchanged when it is usable; ``ValueError`` naming the accepted forms otherwise."""
    if value is None or isinstance(value, (time, timedelta)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"sync_fallback_at={value!r}: a duration must be positive")
        return value
    if isinstance(value, str):
        _time_of_day(value)
        return value
    raise ValueError(
        f"sync_fallback_at={value!r}: give a time of day ('07:00', datetime.time) or a duration "
        "after submit (timedelta or seconds)"
    )


def _time_of_day(text: str) -> time:
    try:
        return time.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"sync_fallback_at={text!r}: a time of day is written HH:MM or HH:MM:SS (e.g. '07:00')"
        ) from None


def fallback_moment(value: SyncFallbackAt, submitted: datetime, tz: tzinfo | None = None) -> datetime:
    """The aware UTC moment the fallback starts for a run submitted at ``submitted``."""
    if submitted.tzinfo is None:
        submitted = submitted.replace(tzinfo=UTC)
    if isinstance(value, timedelta):
        return (submitted + value).astimezone(UTC)
    if isinstance(value, (int, float)):
        return (submitted + timedelta(seconds=float(value))).astimezone(UTC)
    at = value if isinstance(value, time) else _time_of_day(value)
    local = submitted.astimezone(tz or UTC)
    candidate = local.replace(hour=at.hour, minute=at.minute, second=at.second, microsecond=0)
    if candidate <= local:
        candidate = (local + timedelta(days=1)).replace(
            hour=at.hour, minute=at.minute, second=at.second, microsecond=0
        )
    return candidate.astimezone(UTC)


def wait_seconds(
    timeout_seconds: float | None,
    value: SyncFallbackAt | None,
    submitted: datetime,
    tz: tzinfo | None,
    now: datetime | None = None,
) -> tuple[float | None, bool]:
    """(seconds the wait may last from ``now``, whether the fallback moment is what ends it)."""
    if value is None:
        return timeout_seconds, False
    now = now or datetime.now(UTC)
    left = max(0.0, (fallback_moment(value, submitted, tz) - now).total_seconds())
    if timeout_seconds is None or left < timeout_seconds:
        return left, True
    return timeout_seconds, False
