"""Cancelling a run mid-wait: the trigger's ``on_kill`` (Airflow calls it when a user marks the
deferred task failed or success, or clears it) and the sensor's ``on_kill`` in poke mode cancel
the remote batches; what finished before the cancel is still collected, the rest comes back as
cancelled + retryable and a retry resubmits exactly those."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rel_support import MODELS, backend_for, base_url, batches_created, read_lines

from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.models import BatchStatus
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.emulator.process import running_emulator

ROWS = 40


@pytest.fixture
def slow_emulator():
    """Real time barely moves the emulated clock: the test places the cancel with ``advance``."""
    with running_emulator(time_factor=1.0) as emulator:
        yield emulator


async def submit(provider: str, emulator: Any, tmp_path: Path, run_id: str) -> tuple[Any, Any, RunKey]:
    run_dir = run_directory(tmp_path, dag_id="cancel", run_id=run_id)
    key = RunKey(dag_id="cancel", task_id="submit", run_id=run_id)
    data = [{"id": f"k-{i:03d}", "text": f"row {i}"} for i in range(ROWS)]
    builder = RequestBuilder(template="Say {{ text }}", model=MODELS[provider], max_tokens=16)
    async with backend_for(provider, emulator) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id=f"rel_cancel_{provider}",
            max_requests_per_batch=20,
        )
    return handle, run_dir, key


def set_conn(monkeypatch: Any, provider: str, emulator: Any) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_REL_CANCEL_{provider.upper()}",
        json.dumps({"conn_type": f"llm_{provider}", "host": base_url(provider, emulator), "password": "k"}),
    )


async def collect_after_cancel(provider: str, emulator: Any, handle: Any, run_dir: Any, key: RunKey) -> None:
    async with backend_for(provider, emulator) as backend:
        states = [await backend.status(b) for b in handle.batch_ids]
        assert all(s.native_status in ("cancelling", "canceling", "cancelled", "ended") for s in states), [
            s.native_status for s in states
        ]
        emulator.advance(3600)  # past the cancel delay
        states = [await backend.status(b) for b in handle.batch_ids]
        assert all(s.status is BatchStatus.ENDED for s in states), states
        assert {s.ending.value for s in states} == {"cancelled"}, states
        summary = await collect_run(backend, handle, run_dir)
        assert summary.accounted
        results = read_lines(run_dir.results)
        errors = read_lines(run_dir.errors)
        assert len(results) + len(errors) == ROWS
        assert results, "the requests finished before the cancel were lost"
        cancelled = [e for e in errors if e["status"] == "cancelled"]
        assert cancelled, "nothing was left unfinished by the cancel"
        assert all(e["error"]["retryable"] for e in cancelled)
        before = batches_created(emulator, provider)
        retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=2)
        assert retry is not None and retry.counts.submitted == len(
            [e for e in errors if e["error"]["retryable"]]
        )
        assert batches_created(emulator, provider) - before == len(retry.batch_ids)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_trigger_on_kill_cancels_and_partial_results_are_kept(
    provider: str, slow_emulator: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from batch_provider.triggers.batch import BatchWaitTrigger

    emulator = slow_emulator
    set_conn(monkeypatch, provider, emulator)
    handle, run_dir, key = await submit(provider, emulator, tmp_path, "trigger_kill")
    emulator.advance(30 + 600)  # in progress, about half of each batch done
    trigger = BatchWaitTrigger(
        conn_id=handle.conn_id,
        provider=provider,
        batch_ids=handle.batch_ids,
        poll_interval_min=0.2,
        poll_interval_max=0.5,
        cancel_on_kill=True,
    )
    waiting = asyncio.create_task(anext(trigger.run()))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    # what the triggerer does on a user action: cancel the trigger's task, then call on_kill
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await trigger.on_kill()
    await collect_after_cancel(provider, emulator, handle, run_dir, key)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_sensor_on_kill_in_poke_mode_cancels(
    provider: str, slow_emulator: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from unittest import mock

    from batch_provider.sensors import BatchSensor

    emulator = slow_emulator
    set_conn(monkeypatch, provider, emulator)
    handle, run_dir, key = await submit(provider, emulator, tmp_path, "sensor_kill")
    emulator.advance(30 + 600)
    sensor = BatchSensor(
        task_id="wait",
        handle=handle.model_dump(mode="json"),
        deferrable=False,
        mode="poke",
        poll_interval=0.2,
        timeout=120,
        cancel_on_kill=True,
    )
    context = {"ti": mock.MagicMock(dag_id="cancel", task_id="wait", map_index=-1), "run_id": "sensor_kill"}
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = sensor.execute(context)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    await asyncio.sleep(1.5)
    assert worker.is_alive(), outcome
    await asyncio.to_thread(sensor.on_kill)
    emulator.advance(3600)
    deadline = time.monotonic() + 60
    while worker.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not worker.is_alive(), "the sensor never saw the cancelled batches end"
    assert "error" not in outcome, outcome
    await collect_after_cancel(provider, emulator, handle, run_dir, key)


async def test_bedrock_cancel_keeps_partial_results(tmp_path: Path) -> None:
    """Bedrock through ``cancel_batches``, what both ``on_kill`` paths call: the jobs stop, the
    records done before are collected, the rest are cancelled + retryable."""
    from rel_support import bedrock_options, s3_client

    from batch_provider.backends.registry import create_backend
    from batch_provider.triggers.batch import cancel_batches

    with running_emulator(time_factor=1.0, with_s3=True) as emulator:
        s3 = s3_client(emulator)
        for bucket in ("rel-in", "rel-out"):
            s3.create_bucket(Bucket=bucket)
        emulator.bedrock_settings(min_records=10)
        options = bedrock_options(emulator, "cancel", min_records_per_job=10)
        run_dir = run_directory(tmp_path, dag_id="cancel", run_id="bedrock")
        key = RunKey(dag_id="cancel", task_id="submit", run_id="bedrock")
        data = [{"id": f"k-{i:03d}", "text": f"row {i}"} for i in range(ROWS)]
        builder = RequestBuilder(template="Say {{ text }}", model=MODELS["bedrock"], max_tokens=16)
        async with create_backend("bedrock", **options) as backend:
            handle = await submit_run(
                backend,
                builder.render(iter_list(data)),
                run_dir,
                run_key=key,
                conn_id=None,
                max_requests_per_batch=20,
            )
            assert len(handle.batch_ids) == 2
            emulator.advance(30 + 600)  # in progress, about half done
            outcome = await cancel_batches(backend, handle.batch_ids)
            assert set(outcome.values()) <= {"Stopping", "Stopped"}, outcome
            emulator.advance(3600)
            states = [await backend.status(b) for b in handle.batch_ids]
            assert {s.ending.value for s in states if s.ending} == {"cancelled"}, states
            assert all(s.status is BatchStatus.ENDED for s in states), states
            summary = await collect_run(backend, handle, run_dir)
            assert summary.accounted
            results, errors = read_lines(run_dir.results), read_lines(run_dir.errors)
            assert results and len(results) + len(errors) == ROWS
            cancelled = [e for e in errors if e["status"] == "cancelled"]
            assert cancelled and all(e["error"]["retryable"] for e in cancelled)
            retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=2)
            assert retry is not None and retry.counts.submitted == len(cancelled) + sum(
                1 for e in errors if e["status"] != "cancelled" and e["error"]["retryable"]
            )
