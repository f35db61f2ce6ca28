"""Sync fallback on Vertex AI: the rows a cut-off job left unanswered go to the emulator's
``publishers/google/models/{model}:generateContent`` under a rate limit, each sent once, with the
job's request bodies and the backend's bearer token; answers that do not match the run's output
type are ``invalid_output``, never successes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from backend_support import PROJECT, REGION, backend_for, make_bucket, read_lines
from pydantic import BaseModel
from run_support import fall_back_once_under_a_rate_limit

from batch_provider.backends.sync_callers import sync_caller
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.output_type import output_spec, save_output_spec
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import write_dead_letter
from batch_provider.core.rundir import RunDirectory, run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.sync_fallback import rows_to_send, run_sync_fallback
from batch_provider.emulator.outputs import body_hash
from batch_provider.emulator.process import EmulatorProcess, running_emulator

ROWS = 24
MODEL = "gemini-2.5-flash"


class Ticket(BaseModel):
    category: Literal["billing", "bug", "other"]
    urgent: bool
    summary: str


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=1.0, with_gcs=True) as emulator:
        yield emulator


async def cut_off(emu: Any, root: Path, run_id: str, *, typed: bool = False) -> RunDirectory:
    """``ROWS`` rows in two jobs that cannot finish, cancelled half-way and collected."""
    emu.reset()
    make_bucket(emu)
    run_dir = run_directory(root, dag_id="vertex_sync", run_id=run_id)
    key = RunKey(dag_id="vertex_sync", task_id="submit", run_id=run_id)
    marker = " [[emu:invalid50]]" if typed else ""
    data = [{"id": f"v-{i:03d}", "text": f"long tail row {i}{marker}"} for i in range(ROWS)]
    schema = None
    if typed:
        spec = output_spec(Ticket)
        save_output_spec(run_dir.root, spec)
        schema = spec.json_schema
    builder = RequestBuilder(
        template="Say {{ text }}", model=MODEL, max_tokens=400 if typed else 16, response_schema=schema
    )
    async with backend_for(emu) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id=None,
            max_requests_per_batch=12,
            tags={"emu_faults": "expire=1.0"},
        )
        emu.advance(86400)
        for job in handle.batch_ids:
            await backend.cancel(job)
        emu.advance(3600)
        await collect_run(backend, handle, run_dir)
    return run_dir


def served_per_row(emu: Any, rows: list[Any]) -> dict[str, int]:
    served = emu.sync_settings(bodies=True)["served_by_body"]
    out = {}
    for row in rows:
        body = {"model": f"publishers/google/models/{row.model}", **json.loads(row.line)["request"]}
        out[row.row_id] = served.get(str(body_hash(0, body)), 0)
    return out


async def test_vertex_fallback_answers_the_long_tail_once_under_a_rate_limit(
    emu: Any, tmp_path: Path
) -> None:
    run_dir = await cut_off(emu, tmp_path, "tail")
    run = await fall_back_once_under_a_rate_limit(
        emu, run_dir, backend_for, served_per_row, [f"v-{i:03d}" for i in range(ROWS)]
    )
    assert all(r["output_text"] and r["provider"] == "vertex" for r in run.synced)
    fallback = run.manifest["sync_fallback"]
    assert fallback["cost_usd"] > 0 and fallback["extra_cost_usd"] > 0


async def test_vertex_sync_answers_are_checked_against_the_output_type(emu: Any, tmp_path: Path) -> None:
    run_dir = await cut_off(emu, tmp_path, "typed", typed=True)
    async with backend_for(emu) as backend:
        to_send = rows_to_send(backend, run_dir, Ledger.load(run_dir), 1)
        report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, concurrency=4)
        write_dead_letter(backend, run_dir, max_attempts=1)
    assert to_send and report.invalid_output > 0 and report.answered > 0
    results, dead = read_lines(run_dir.results), read_lines(run_dir.dead_letter)
    assert sorted([r["custom_id"] for r in results] + [d["custom_id"] for d in dead]) == [
        f"v-{i:03d}" for i in range(ROWS)
    ]
    for record in results:
        Ticket.model_validate(record["parsed"])
    assert all(n <= 2 for n in served_per_row(emu, to_send).values())
    assert any(d["batch_id"] == "sync" and d["status"] == "invalid_output" for d in dead)


def test_the_endpoint_needs_a_token_and_a_served_model(emu: Any) -> None:
    url = f"{emu.base_url}/v1/projects/{PROJECT}/locations/{REGION}/publishers/google/models"
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    assert httpx.post(f"{url}/{MODEL}:generateContent", json=body).status_code == 401
    missing = httpx.post(
        f"{url}/no-such-model:generateContent", json=body, headers={"authorization": "Bearer t"}
    )
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    answer = httpx.post(f"{url}/{MODEL}:generateContent", json=body, headers={"authorization": "Bearer t"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["candidates"][0]["content"]["parts"][0]["text"]
    assert answer.json()["usageMetadata"]["totalTokenCount"] > 0
