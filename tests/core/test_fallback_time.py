"""When a sync fallback starts: a time of day in the DAG's timezone (the first one after the
submit) or a duration after submit; and the first wait ends at whichever of it and the timeout
comes first."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from batch_provider.core.fallback_time import check_sync_fallback_at, fallback_moment, wait_seconds

SUBMIT = datetime(2026, 12, 3, 6, 30, tzinfo=UTC)


def test_time_of_day_is_the_next_one_after_submit_in_the_dag_timezone() -> None:
    assert fallback_moment("07:00", SUBMIT) == datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
    assert fallback_moment("06:00", SUBMIT) == datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    # 06:30 UTC is 07:30 in Paris: the next 07:00 there is tomorrow, 06:00 UTC
    assert fallback_moment(time(7, 0), SUBMIT, ZoneInfo("Europe/Paris")) == datetime(
        2026, 12, 4, 6, 0, tzinfo=UTC
    )
    assert fallback_moment("07:45:30", SUBMIT, ZoneInfo("Europe/Paris")) == datetime(
        2026, 12, 3, 6, 45, 30, tzinfo=UTC
    )


def test_duration_counts_from_submit() -> None:
    assert fallback_moment(timedelta(hours=2), SUBMIT) == datetime(2026, 12, 3, 8, 30, tzinfo=UTC)
    assert fallback_moment(90, SUBMIT) == datetime(2026, 12, 3, 6, 31, 30, tzinfo=UTC)


def test_the_wait_ends_at_the_earlier_of_fallback_and_timeout() -> None:
    now = SUBMIT + timedelta(minutes=10)
    assert wait_seconds(3600.0, "07:00", SUBMIT, None, now=now) == (1200.0, True)
    assert wait_seconds(600.0, "07:00", SUBMIT, None, now=now) == (600.0, False)
    assert wait_seconds(600.0, None, SUBMIT, None, now=now) == (600.0, False)
    assert wait_seconds(600.0, timedelta(minutes=5), SUBMIT, None, now=now) == (0.0, True)  # already due


@pytest.mark.parametrize("bad", ["7 o'clock", "25:00", -5, 0, True, [1]])
def test_bad_values_are_refused_with_the_accepted_forms(bad: object) -> None:
    with pytest.raises(ValueError, match="sync_fallback_at"):
        check_sync_fallback_at(bad)  # type: ignore[arg-type]
