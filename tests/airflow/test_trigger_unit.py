"""BatchWaitTrigger without HTTP: serialisation, events, on_kill."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.module_loading import import_string
from airflow.triggers.base import TriggerEvent
from airflow_fakes import ScriptedBackend
from airflow_setup import API_KEY, conn_json

from batch_provider.triggers.batch import BatchWaitTrigger


@pytest.fixture
def scripted(monkeypatch):
    """Backends built by hooks are ScriptedBackends; ``options`` tunes their script."""
    options: dict = {}
    ScriptedBackend.instances.clear()

    def create(provider, **kwargs):
        return ScriptedBackend(**kwargs, **options)

    monkeypatch.setattr("batch_provider.hooks.batch.create_backend", create)
    monkeypatch.setenv("AIRFLOW_CONN_LLM_OPENAI_DEFAULT", conn_json("llm_openai", "http://127.0.0.1:9/v1"))
    return options


def make(**overrides) -> BatchWaitTrigger:
    kwargs = {
        "conn_id": "llm_openai_default",
        "provider": "openai",
        "batch_ids": ["b1", "b2"],
        "deadline": None,
        "poll_interval_min": 0.01,
        "poll_interval_max": 0.02,
    }
    kwargs.update(overrides)
    return BatchWaitTrigger(**kwargs)


def test_serialize_round_trip_holds_no_key_nor_payload():
    trigger = make(deadline=datetime(2030, 1, 1, tzinfo=UTC).isoformat(), cancel_on_kill=True)
    path, kwargs = trigger.serialize()
    assert path == "batch_provider.triggers.batch.BatchWaitTrigger"
    assert import_string(path)(**kwargs).serialize() == (path, kwargs)
    assert set(kwargs) == {
        "conn_id",
        "provider",
        "batch_ids",
        "deadline",
        "poll_interval_min",
        "poll_interval_max",
        "cancel_on_kill",
        "cancel_at_deadline",
        "grace_seconds",
        "expected_by",
        "overdue_notified",
        "usual",
    }
    assert API_KEY not in repr(kwargs)


async def test_one_event_with_every_final_state(scripted):
    gen = make().run()
    event = await anext(gen)
    assert isinstance(event, TriggerEvent)
    assert event.payload["status"] == "success"
    assert set(event.payload["states"]) == {"b1", "b2"}
    assert {s["ending"] for s in event.payload["states"].values()} == {"completed"}
    with pytest.raises(StopAsyncIteration):
        await anext(gen)
    assert len(ScriptedBackend.instances) == 1 and ScriptedBackend.instances[0].closed
    assert ScriptedBackend.instances[0].api_key == API_KEY


async def test_still_running_until_the_batches_end(scripted):
    scripted["polls_to_end"] = 10_000
    task = asyncio.create_task(anext(make().run()))
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()


async def test_timeout_event(scripted):
    scripted["polls_to_end"] = 10_000
    deadline = (datetime.now(UTC) + timedelta(seconds=0.2)).isoformat()
    event = await anext(make(deadline=deadline).run())
    assert event.payload["status"] == "timeout"
    assert event.payload["pending"] == ["b1", "b2"]
    assert "deadline" in event.payload["message"]
    assert ScriptedBackend.instances[0].cancelled == []  # not asked to cancel


async def test_deadline_cancels_then_waits_for_the_ending(scripted):
    """Past the deadline the trigger cancels, keeps polling, and reports the batches' endings."""
    scripted["polls_to_end"] = 10_000
    deadline = (datetime.now(UTC) + timedelta(seconds=0.2)).isoformat()
    event = await anext(make(deadline=deadline, cancel_at_deadline=True, grace_seconds=5).run())
    assert event.payload["status"] == "deadline", event.payload
    assert event.payload["deadline"] == deadline
    assert set(event.payload["cancelled"]) == {"b1", "b2"}
    assert {s["ending"] for s in event.payload["states"].values()} == {"cancelled"}
    assert ScriptedBackend.instances[0].cancelled == ["b1", "b2"]


async def test_deadline_with_a_batch_that_already_ended(scripted):
    """A batch ended before the deadline is neither cancelled nor lost from the event."""
    scripted["polls_to_end"] = 10_000
    scripted["flaky"] = []
    trigger = make(
        batch_ids=["b1"],
        deadline=(datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
        cancel_at_deadline=True,
        grace_seconds=0,
    )
    event = await anext(trigger.run())
    # the deadline had passed before the first poll: the batch is cancelled, then seen ended
    assert event.payload["status"] == "deadline", event.payload
    assert event.payload["states"]["b1"]["ending"] == "cancelled"


async def test_error_event_on_missing_key(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_EMPTY", conn_json("llm_openai", "", password=""))
    event = await anext(make(conn_id="empty").run())
    assert event.payload["status"] == "error"
    assert "'empty' has no API key" in event.payload["message"]


async def test_on_kill_cancels_only_when_asked(scripted):
    await make(cancel_on_kill=False).on_kill()
    assert ScriptedBackend.instances == []
    await make(cancel_on_kill=True).on_kill()
    assert ScriptedBackend.instances[0].cancelled == ["b1", "b2"]
    assert ScriptedBackend.instances[0].closed


async def test_success_event_stays_small_for_many_batches(scripted):
    ids = [f"batch_{i:024d}" for i in range(300)]
    event = await anext(make(batch_ids=ids).run())
    assert event.payload["status"] == "success"
    assert set(event.payload["states"]) == set(ids)
    states = event.payload["states"].values()
    assert all(s["ending"] == "completed" and s["status"] == "ended" for s in states)
    size = len(json.dumps(event.payload))
    assert size / len(ids) < 160, f"{size / len(ids):.0f} bytes per batch"


def test_progress_lines_that_say_nothing_new_are_not_repeated(monkeypatch):
    """Each line goes through the triggerer's supervisor: thousands of triggers must not log
    "0/1 batches ended" at every poll. A change, or ten quiet minutes, logs again."""
    from batch_provider.core.watch import Progress
    from batch_provider.triggers import batch as trigger_module

    lines: list[str] = []

    class Recorder:
        def info(self, fmt, *args):
            lines.append(fmt % args)

    trigger = make()
    trigger._log = Recorder()
    clock = [1000.0]
    monkeypatch.setattr(trigger_module.time, "monotonic", lambda: clock[0])

    def progress(done: int, elapsed: float) -> Progress:
        return Progress(
            round=1, batches_total=1, batches_ended=0, items_total=10, items_done=done,
            items_errored=0, elapsed_seconds=elapsed, next_poll_seconds=5,
        )  # fmt: skip

    trigger._log_progress(progress(0, 5))
    clock[0] += 5
    trigger._log_progress(progress(0, 10))
    assert len(lines) == 1
    trigger._log_progress(progress(3, 15))
    assert len(lines) == 2 and "3/10 requests done" in lines[-1]
    clock[0] += trigger_module.PROGRESS_REPEAT_SECONDS
    trigger._log_progress(progress(3, 615))
    assert len(lines) == 3
