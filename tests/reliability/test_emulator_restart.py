"""The provider goes away mid-wait (the emulator is stopped and started again on the same port
and data dir): both the plain watch loop and the deferrable trigger ride it out, and the run
completes with every row."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from rel_support import MODELS, backend_for, base_url, read_lines

from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.models import BatchStatus
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches
from batch_provider.emulator.process import running_emulator


def status_polls(emulator: Any) -> int:
    return sum(
        n
        for route, n in emulator.stats()["requests"].items()
        if route.startswith("GET") and "batches/" in route
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_wait_rides_out_an_emulator_restart(provider: str, tmp_path: Path, monkeypatch) -> None:
    from batch_provider.triggers.batch import BatchWaitTrigger

    # at time factor 100 a 12-request batch takes ~13 s: the restart lands mid-wait
    with running_emulator(time_factor=100.0, data_dir=tmp_path / "emu-data") as emulator:
        conn_id = f"rel_restart_{provider}"
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps(
                {"conn_type": f"llm_{provider}", "host": base_url(provider, emulator), "password": "k"}
            ),
        )
        run_dir = run_directory(tmp_path / "runs", dag_id="restart", run_id="r1")
        key = RunKey(dag_id="restart", task_id="submit", run_id="r1")
        data = [{"id": f"x-{i:03d}", "text": f"row {i}"} for i in range(24)]
        builder = RequestBuilder(template="Say {{ text }}", model=MODELS[provider], max_tokens=16)
        async with backend_for(provider, emulator) as backend:
            handle = await submit_run(
                backend,
                builder.render(iter_list(data)),
                run_dir,
                run_key=key,
                conn_id=conn_id,
                max_requests_per_batch=12,
            )
            assert len(handle.batch_ids) == 2
            rounds: list[Any] = []
            watcher = asyncio.create_task(
                watch_batches(
                    backend,
                    handle.batch_ids,
                    poll_interval_min=0.2,
                    poll_interval_max=0.5,
                    on_progress=rounds.append,
                )
            )
            trigger = BatchWaitTrigger(
                conn_id=conn_id,
                provider=provider,
                batch_ids=handle.batch_ids,
                poll_interval_min=0.2,
                poll_interval_max=0.5,
            )
            event_task = asyncio.create_task(anext(trigger.run()))
            deadline = time.monotonic() + 30
            while (not rounds or status_polls(emulator) < 4) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert rounds and not watcher.done() and not event_task.done(), "nothing was waiting"
            first_pid = emulator.pid

            await asyncio.to_thread(emulator.stop)
            await asyncio.sleep(1.5)  # polls meet a closed port meanwhile
            assert not watcher.done() and not event_task.done(), (
                watcher.done() and watcher.exception(),
                event_task.done() and event_task.exception(),
            )
            await asyncio.to_thread(emulator.start)
            assert emulator.pid != first_pid
            states = [await backend.status(b) for b in handle.batch_ids]
            assert all(s.status is not BatchStatus.ENDED for s in states), (
                "the batches ended before the restart"
            )
            emulator.advance(2 * 86400)

            final = await asyncio.wait_for(watcher, 120)
            event = await asyncio.wait_for(event_task, 120)
            assert event.payload["status"] == "success", event.payload
            assert {s["ending"] for s in event.payload["states"].values()} == {"completed"}
            assert {s.ending.value for s in final.values()} == {"completed"}
            summary = await collect_run(backend, handle, run_dir)
    assert summary.accounted and summary.succeeded == 24
    assert sorted(r["custom_id"] for r in read_lines(run_dir.results)) == [d["id"] for d in data]
