"""Sync fallback on Bedrock: the rows two stopped jobs left unanswered go to the emulator's Bedrock
Runtime ``InvokeModel`` under a rate limit, each sent once, with the jobs' ``modelInput`` bodies;
the run's files and manifest count them apart at synchronous prices; answers that do not match the
run's output type are ``invalid_output``, never successes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from bedrock_support import CLAUDE, INPUT_BUCKET, OUTPUT_BUCKET, backend_for, s3_client
from pydantic import BaseModel
from run_support import fall_back_once_under_a_rate_limit

from batch_provider.backends.sync_callers import sync_caller
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.output_type import output_spec, save_output_spec
from batch_provider.core.pricing import default_price_table
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import write_dead_letter
from batch_provider.core.rundir import RunDirectory, run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.sync_fallback import rows_to_send, run_sync_fallback
from batch_provider.core.watch import cancel_batches
from batch_provider.emulator.bedrock.outputs import model_output
from batch_provider.emulator.outputs import body_hash
from batch_provider.emulator.process import EmulatorProcess, running_emulator

ROWS = 24
SEED = 0


class Ticket(BaseModel):
    category: Literal["billing", "bug", "other"]
    urgent: bool
    summary: str


@pytest.fixture(scope="module")
def slow_emu() -> Iterator[EmulatorProcess]:
    """Real time barely moves the emulated clock: the tests stop the jobs with ``advance``."""
    with running_emulator(time_factor=1.0, with_s3=True) as emulator:
        s3 = s3_client(emulator)
        for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
            s3.create_bucket(Bucket=bucket)
        yield emulator


def read_lines(path: Any) -> list[dict[str, Any]]:
    path = Path(str(path))
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


async def cut_off(emu: Any, root: Path, run_id: str, *, typed: bool = False) -> RunDirectory:
    """``ROWS`` rows in two jobs of 12, stopped about half-way and collected."""
    emu.reset()
    emu.bedrock_settings(min_records=1)
    run_dir = run_directory(root, dag_id="bedrock_sync", run_id=run_id)
    key = RunKey(dag_id="bedrock_sync", task_id="submit", run_id=run_id)
    marker = " [[emu:invalid50]]" if typed else ""
    data = [{"id": f"b-{i:03d}", "text": f"long tail row {i}{marker}"} for i in range(ROWS)]
    schema = None
    if typed:
        spec = output_spec(Ticket)
        save_output_spec(run_dir.root, spec)
        schema = spec.json_schema
    builder = RequestBuilder(
        template="Say {{ text }}", model=CLAUDE, max_tokens=400 if typed else 16, response_schema=schema
    )
    async with backend_for(emu, min_records_per_job=1) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id=None,
            max_requests_per_batch=12,
        )
        emu.advance(95 + 600)  # in progress: about half of each job's 12 records done
        await cancel_batches(backend, handle.batch_ids)
        emu.advance(3600)
        await collect_run(backend, handle, run_dir)
    return run_dir


def served_per_row(emu: Any, rows: list[Any]) -> dict[str, int]:
    """Row id → how many times the emulator answered its ``modelInput`` synchronously."""
    served = emu.sync_settings(bodies=True)["served_by_body"]
    out = {}
    for row in rows:
        body = {"model": row.model, **json.loads(row.line)["modelInput"]}
        out[row.row_id] = served.get(str(body_hash(0, body)), 0)
    return out


async def test_bedrock_fallback_answers_the_long_tail_once_under_a_rate_limit(
    slow_emu: Any, tmp_path: Path
) -> None:
    emu = slow_emu
    run_dir = await cut_off(emu, tmp_path, "tail")
    run = await fall_back_once_under_a_rate_limit(
        emu, run_dir, backend_for, served_per_row, [f"b-{i:03d}" for i in range(ROWS)]
    )
    assert {r.model for r in run.to_send} == {CLAUDE}

    # each synchronous answer is the one a job's record with that modelInput gets
    assert all(r["provider"] == "bedrock" for r in run.synced)
    by_id = {r["custom_id"]: r for r in run.synced}
    for row in run.to_send:
        want = model_output("anthropic", CLAUDE, json.loads(row.line)["modelInput"], SEED)
        got = by_id[row.row_id]
        assert got["output_text"] == want["content"][0]["text"]
        assert got["usage"]["output_tokens"] == want["usage"]["output_tokens"]

    manifest, fallback = run.manifest, run.manifest["sync_fallback"]
    batches_usd = sum(b["cost"]["batch_usd"] for b in manifest["batches"])
    assert manifest["cost"]["batch_usd"] == pytest.approx(batches_usd + fallback["cost_usd"], abs=1e-6)
    # synchronous prices are the price table's standard rates, batch ones half of them
    sync_usd = sum(
        default_price_table().cost("bedrock", CLAUDE, _usage(r["usage"])).standard_usd for r in run.synced
    )
    assert fallback["cost_usd"] == pytest.approx(sync_usd, abs=1e-6) and sync_usd > 0
    assert fallback["at_batch_prices_usd"] == pytest.approx(sync_usd / 2, abs=1e-6)
    assert fallback["extra_cost_usd"] == pytest.approx(sync_usd / 2, abs=2e-6)


def _usage(raw: dict[str, Any]) -> Any:
    from batch_provider.core.models import Usage

    return Usage(**{k: v for k, v in raw.items() if k in Usage.model_fields})


async def test_bedrock_sync_answers_are_checked_against_the_output_type(
    slow_emu: Any, tmp_path: Path
) -> None:
    emu = slow_emu
    run_dir = await cut_off(emu, tmp_path, "typed", typed=True)
    async with backend_for(emu) as backend:
        to_send = rows_to_send(backend, run_dir, Ledger.load(run_dir), 1)
        assert to_send and all(r.wants_json for r in to_send)
        report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, concurrency=4)
        write_dead_letter(backend, run_dir, max_attempts=1)
    assert report.invalid_output > 0 and report.answered > 0
    results, dead = read_lines(run_dir.results), read_lines(run_dir.dead_letter)
    assert sorted([r["custom_id"] for r in results] + [d["custom_id"] for d in dead]) == [
        f"b-{i:03d}" for i in range(ROWS)
    ]
    for record in results:
        Ticket.model_validate(record["parsed"])
    assert all(n <= 2 for n in served_per_row(emu, to_send).values())
    assert any(d["batch_id"] == "sync" and d["status"] == "invalid_output" for d in dead)
