"""When a batch is expected to end (``expected_within``, else history p95 × factor, else never)
and how ``on_overdue`` is called (a notifier renders ``batch_overdue``; a failing callback never
fails the wait)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

from airflow.sdk.bases.notifier import BaseNotifier

from batch_provider.core.handle import RunHandle
from batch_provider.core.history import record_completed
from batch_provider.core.models import BatchRef, Provider
from batch_provider.operators._overdue import call_on_overdue, expectation, overdue_text

T0 = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
EVENT = {
    "status": "overdue",
    "overdue": {"batch_1": {"native_status": "in_progress", "done": 3, "total": 10, "expected_by": "x"}},
    "progress": {
        "batches_total": 1, "batches_ended": 0, "items_done": 3, "items_total": 10, "eta_seconds": 700,
    },
}


def handle(folder) -> RunHandle:
    ref = BatchRef(
        provider=Provider.OPENAI, batch_id="batch_1", chunk_index=0, request_count=10, created_at=T0,
        model="gpt-4o-mini",
    )  # fmt: skip
    return RunHandle(run_path=f"file://{folder}", provider=Provider.OPENAI, batches=[ref])


def test_expected_within_else_history_p95_times_the_factor_else_nothing(tmp_path):
    folder = tmp_path / "nightly" / "run-9" / "tickets"
    folder.mkdir(parents=True)
    assert expectation(handle(folder), expected_within=None).expected_by == {}
    fixed = expectation(handle(folder), expected_within=timedelta(minutes=30))
    assert fixed.expected_by == {"batch_1": (T0 + timedelta(minutes=30)).isoformat()} and fixed.usual is None
    for i, seconds in enumerate([600, 700, 800]):
        past = tmp_path / "nightly" / f"run-{i}" / "tickets"
        done = mock.Mock(
            batch_id=f"b{i}", model="gpt-4o-mini", request_count=10, ending="completed", created_at=T0,
            started_at=None, ended_at=T0 + timedelta(seconds=seconds),
        )  # fmt: skip
        record_completed(past, "openai", [done])
    learned = expectation(handle(folder), expected_within=None, overdue_factor=2.0)
    assert learned.expected_by == {"batch_1": (T0 + timedelta(seconds=1600)).isoformat()}
    assert learned.usual == "usually done in 11m40s (p95 13m20s)"
    assert expectation(handle(folder), expected_within=60).expected_by["batch_1"] == (
        T0 + timedelta(seconds=60)
    ).isoformat()  # an explicit expectation wins over the history


class Recording(BaseNotifier):
    template_fields = ("text",)
    sent: list[str] = []

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def notify(self, context):
        Recording.sent.append(self.text)


def test_a_notifier_renders_the_overdue_details():
    task = mock.Mock()
    call_on_overdue(task, {"ti": mock.Mock()}, EVENT, Recording("late: {{ batch_overdue.message }}"))
    assert Recording.sent == ["late: " + overdue_text(EVENT)]
    assert "batch_1 (3/10 done" in Recording.sent[0] and "ETA 11m40s" in Recording.sent[0]


def test_a_failing_callback_is_logged_and_the_wait_goes_on():
    task = mock.Mock()

    def broken(context):
        raise RuntimeError("chat service down")

    call_on_overdue(task, {}, EVENT, broken)
    (call,) = task.log.warning.call_args_list
    assert "chat service down" in str(call.args[-1])
