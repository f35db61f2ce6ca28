"""BatchWaitTrigger and the operators against the emulator over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batch_provider.hooks.batch import LLMBatchHook
from batch_provider.operators import SubmitBatchOperator
from batch_provider.triggers.batch import BatchWaitTrigger

TICKETS = Path(__file__).resolve().parents[2] / "dags" / "data" / "tickets" / "2026-11-20.jsonl"


def submit_op(**kwargs) -> SubmitBatchOperator:
    return SubmitBatchOperator(
        task_id="submit",
        provider=kwargs.pop("provider", "openai"),
        input_path=str(TICKETS),
        prompt_template="{{ subject }}",
        model=kwargs.pop("model", "gpt-6-luna"),
        max_tokens=32,
        **kwargs,
    )


def context(run_id: str = "manual__1"):
    from unittest import mock

    ti = mock.MagicMock(dag_id="d", task_id="submit", map_index=-1)
    return {"ti": ti, "run_id": run_id, "params": {}}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_trigger_watches_real_batches(llm_conns, run_root, provider):
    model = "gpt-6-luna" if provider == "openai" else "claude-haiku-4-5"
    handle = await asyncio.to_thread(
        submit_op(provider=provider, model=model, max_requests_per_batch=10).execute, context()
    )
    ids = [b["batch_id"] for b in handle["batches"]]
    assert len(ids) == 3
    trigger = BatchWaitTrigger(
        conn_id=handle["conn_id"],
        provider=provider,
        batch_ids=ids,
        poll_interval_min=0.2,
        poll_interval_max=0.5,
    )
    event = await asyncio.wait_for(anext(trigger.run()), 60)
    assert event.payload["status"] == "success"
    assert {s["ending"] for s in event.payload["states"].values()} == {"completed"}


async def test_trigger_deadline_then_cancel_on_kill(llm_conns, run_root):
    handle = await asyncio.to_thread(submit_op().execute, context())
    ids = [b["batch_id"] for b in handle["batches"]]
    deadline = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
    trigger = BatchWaitTrigger(
        conn_id="llm_openai_default",
        provider="openai",
        batch_ids=ids,
        deadline=deadline,
        poll_interval_min=0.2,
        cancel_on_kill=True,
    )
    event = await anext(trigger.run())
    assert event.payload["status"] == "timeout" and event.payload["pending"] == ids
    await trigger.on_kill()
    backend = await LLMBatchHook(conn_id="llm_openai_default").aget_backend()
    async with backend:
        state = await backend.status(ids[0])
    assert state.native_status in ("cancelling", "cancelled")


CRASHING_SUBMIT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path[:0] = {paths!r}
    from unittest import mock
    from batch_provider.backends.openai.backend import OpenAIBackend
    original = OpenAIBackend.submit

    async def submit_then_die(self, chunk, *, tags):
        ref = await original(self, chunk, tags=tags)
        os.kill(os.getpid(), signal.SIGKILL)  # the provider accepted the batch; the ledger never learns
        return ref

    OpenAIBackend.submit = submit_then_die
    from batch_provider.operators import SubmitBatchOperator
    op = SubmitBatchOperator(task_id="submit", provider="openai", input_path={tickets!r},
                             prompt_template="{{{{ subject }}}}", model="gpt-6-luna", max_tokens=32)
    ti = mock.MagicMock(dag_id="d", task_id="submit", map_index=-1)
    op.execute({{"ti": ti, "run_id": "scheduled__crash", "params": {{}}}})
    """
)


def test_submit_killed_after_the_provider_accepted_reattaches(llm_conns, run_root):
    script = CRASHING_SUBMIT.format(paths=sys.path, tickets=str(TICKETS))
    child = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert llm_conns.stats()["batches_created"]["openai"] == 1
    # the task's next try (same run key: try_number is not part of it) finds the batch by its tags
    handle = submit_op().execute(context("scheduled__crash"))
    assert len(handle["batches"]) == 1
    assert llm_conns.stats()["batches_created"]["openai"] == 1
    ledger = json.loads(next(run_root.rglob("ledger.json")).read_text())
    assert ledger["attempts"]["1"]["chunks"][0]["batch"]["batch_id"] == handle["batches"][0]["batch_id"]
