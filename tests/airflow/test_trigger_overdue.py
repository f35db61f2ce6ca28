"""The trigger's overdue report against the emulator: one ``overdue`` event for a batch still
running past its expected end, none once ``overdue_notified`` is set (a re-deferral, or a
triggerer restarted from those kwargs), and progress lines that say how long such batches take."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batch_provider.operators import SubmitBatchOperator
from batch_provider.triggers.batch import BatchWaitTrigger

TICKETS = Path(__file__).resolve().parents[2] / "dags" / "data" / "tickets" / "2026-11-20.jsonl"


def submitted(emulator) -> dict:
    from unittest import mock

    op = SubmitBatchOperator(
        task_id="submit",
        provider="openai",
        input_path=str(TICKETS),
        prompt_template="{{ subject }}",
        model="gpt-6-luna",
        max_tokens=32,
        use_cache=False,
    )
    ti = mock.MagicMock(dag_id="d", task_id="submit", map_index=-1)
    return op.execute({"ti": ti, "run_id": "manual__1", "params": {}})


def trigger_for(handle: dict, **kwargs) -> BatchWaitTrigger:
    return BatchWaitTrigger(
        conn_id=handle["conn_id"],
        provider="openai",
        batch_ids=[b["batch_id"] for b in handle["batches"]],
        poll_interval_min=0.2,
        poll_interval_max=0.5,
        **kwargs,
    )


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, fmt, *args):
        self.lines.append(fmt % args)

    warning = info
    debug = info


async def test_overdue_once_then_the_same_state_waits_to_the_end(llm_conns, run_root):
    llm_conns.set_queue_delay(next=[10_000_000])  # held in the queue until released below
    handle = await asyncio.to_thread(submitted, llm_conns)
    (batch_id,) = [b["batch_id"] for b in handle["batches"]]
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    first = trigger_for(handle, expected_by={batch_id: past}, usual="usually done in 20m00s (p95 40m00s)")
    event = (await asyncio.wait_for(anext(first.run()), 60)).payload
    assert event["status"] == "overdue"
    assert event["overdue"][batch_id]["native_status"] == "validating"
    assert event["overdue"][batch_id]["expected_by"] == past
    assert event["progress"]["batches_ended"] == 0 and event["progress"]["batches_total"] == 1

    # a triggerer restarted before the task was told builds the trigger from the same kwargs: told again
    restarted = BatchWaitTrigger(**event["trigger"])
    assert (await asyncio.wait_for(anext(restarted.run()), 60)).payload["status"] == "overdue"

    # the task defers again with the flag set: the same state now waits until the batch ends
    llm_conns.set_queue_delay(per_batch={batch_id: 0})
    again = BatchWaitTrigger(**{**event["trigger"], "overdue_notified": True})
    assert again.serialize()[1]["overdue_notified"] is True
    again._log = recorder = Recorder()
    final = (await asyncio.wait_for(anext(again.run()), 60)).payload
    assert final["status"] == "success"
    assert final["states"][batch_id]["ending"] == "completed"
    assert "started_at" in final["states"][batch_id]
    assert recorder.lines[0].endswith("until they end; usually done in 20m00s (p95 40m00s)")
    progress = [line for line in recorder.lines if "batches ended" in line]
    assert progress and all(line.endswith("; usually done in 20m00s (p95 40m00s)") for line in progress)


async def test_a_batch_ended_before_its_expected_time_is_not_overdue(llm_conns, run_root):
    handle = await asyncio.to_thread(submitted, llm_conns)
    (batch_id,) = [b["batch_id"] for b in handle["batches"]]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    trigger = trigger_for(handle, expected_by={batch_id: later})
    event = (await asyncio.wait_for(anext(trigger.run()), 60)).payload
    assert event["status"] == "success"
