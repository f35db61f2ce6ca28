"""The Vertex backend through the run lifecycle (submit → wait → collect → retry → dead letter),
cancel, expiry and re-attaching, against the emulator's batchPredictionJobs routes and its GCS
over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_support import (
    BUCKET,
    assert_accounted,
    backend_for,
    listed_jobs,
    make_bucket,
    read_lines,
    rows,
    submit_rows,
    wait_all,
)

from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.models import BatchEnding, BatchStatus
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory
from batch_provider.emulator.process import EmulatorProcess, running_emulator


@pytest.fixture(scope="module")
def backend_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0, with_gcs=True) as emu:
        make_bucket(emu)
        yield emu


@pytest.fixture
def emu(backend_emulator: EmulatorProcess) -> Iterator[EmulatorProcess]:
    yield backend_emulator
    backend_emulator.clear_faults()


async def test_partial_failure_recovered_by_retry_then_dead_letter(emu: Any, tmp_path: Path) -> None:
    data = rows(40)
    data[3]["id"] = "emu-fail400-bad"  # refused by the model: not retryable
    data[3]["text"] += " [[emu:fail400]]"  # the directive reaches the wire in the text
    data[5]["id"] = "Odd id\nwith a line break"  # row ids never reach the wire (labels are strict)
    data.append({"id": data[0]["id"], "text": "a duplicate id"})  # rejected before sending
    run_dir = run_directory(tmp_path, dag_id="d", run_id="retry")
    key = RunKey(dag_id="d", task_id="submit", run_id="retry")
    before = len(listed_jobs(emu))
    async with backend_for(emu) as backend:
        handle = await submit_rows(
            backend,
            data,
            run_dir,
            key,
            max_requests_per_batch=25,
            tags={"emu_faults": "item_errors=0.3:500/429"},
        )
        assert len(handle.batch_ids) == 2
        assert all("/batchPredictionJobs/" in b for b in handle.batch_ids)
        assert all(ref.input_file_id.startswith(f"gs://{BUCKET}/runs/input/") for ref in handle.batches)
        await wait_all(backend, handle, emu)
        first = await collect_run(backend, handle, run_dir)
        assert first.accounted and first.rejected == 1
        assert 3 <= first.retryable < 39 and first.unresolved == first.retryable + 1
        assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

        retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, tags={}, max_attempts=3)
        assert retry is not None and retry.attempt == 2 and retry.counts.submitted == first.retryable
        again = await resubmit_retryable(backend, handle, run_dir, run_key=key, tags={}, max_attempts=3)
        assert again is not None and again.batch_ids == retry.batch_ids, "a rerun of the retry re-attaches"
        await wait_all(backend, retry, emu)
        second = await collect_run(backend, retry, run_dir)
        assert second.succeeded == 39 and second.unresolved == 1
        closed = write_dead_letter(backend, run_dir)
        for ref in handle.batches:
            await backend.delete_input(ref)
            await backend.delete_input(ref)  # already gone: fine
    assert len(listed_jobs(emu)) - before == len(handle.batch_ids) + len(retry.batch_ids)
    assert closed.dead_letter == 1 and closed.finished
    dead = read_lines(run_dir.dead_letter)
    assert [d["custom_id"] for d in dead] == ["emu-fail400-bad"] and dead[0]["error"]["retryable"] is False
    assert_accounted(run_dir, 41)
    results = read_lines(run_dir.results)
    assert all(r["provider"] == "vertex" and r["output_text"] and r["model"] for r in results)
    assert "Odd id\nwith a line break" in {r["custom_id"] for r in results}
    assert {r["attempt"] for r in results} == {1, 2}
    manifest = json.loads(run_dir.manifest.read_text())
    assert manifest["cost"]["batch_usd"] > 0


async def test_expiry_keeps_partial_results_and_the_rest_is_retryable(emu: Any, tmp_path: Path) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="expire")
    key = RunKey(dag_id="d", task_id="submit", run_id="expire")
    async with backend_for(emu) as backend:
        handle = await submit_rows(backend, rows(20), run_dir, key, tags={"emu_faults": "expire=0.5"})
        await wait_all(backend, handle, emu)
        state = await backend.status(handle.batch_ids[0])
        assert (state.native_status, state.ending) == ("JOB_STATE_EXPIRED", BatchEnding.EXPIRED)
        summary = await collect_run(backend, handle, run_dir)
    assert summary.succeeded == 10 and summary.retryable == 10
    assert_accounted(run_dir, 20)


async def test_cancel_keeps_finished_requests(emu: Any, tmp_path: Path) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="cancel")
    key = RunKey(dag_id="d", task_id="submit", run_id="cancel")
    async with backend_for(emu) as backend:
        handle = await submit_rows(backend, rows(40), run_dir, key, tags={"emu_faults": "expire=1.0"})
        job = handle.batch_ids[0]
        emu.advance(86400)
        cancelling = await backend.cancel(job)
        assert cancelling.status in (BatchStatus.FINALIZING, BatchStatus.RUNNING, BatchStatus.ENDED)
        emu.advance(3600)
        cancelled = await backend.cancel(job)  # ended: unchanged, not an error
        assert (cancelled.native_status, cancelled.ending) == ("JOB_STATE_CANCELLED", BatchEnding.CANCELLED)
        summary = await collect_run(backend, handle, run_dir)
        await backend.delete_batch(job)
        await backend.delete_batch(job)  # already gone: fine
    assert 0 < summary.succeeded < 40
    assert summary.retryable == 40 - summary.succeeded
    assert_accounted(run_dir, 40)


async def test_crash_between_create_and_ledger_write_reattaches(emu: Any, tmp_path: Path) -> None:
    """The job exists but the ledger never heard of it: the rerun finds it by its labels and
    display name, one job per chunk, not two."""
    run_dir = run_directory(tmp_path, dag_id="d", run_id="crash")
    key = RunKey(dag_id="d", task_id="submit", run_id="crash")
    before = len(listed_jobs(emu))
    async with backend_for(emu) as backend:
        first = await submit_rows(backend, rows(8), run_dir, key, max_requests_per_batch=4)
        ledger = Ledger.load(run_dir)
        assert ledger is not None
        lost = ledger.attempts[1].chunks[1]
        lost.batch = None  # as if the process died right after the create call returned
        ledger.save(run_dir)
        claim = json.loads(run_dir.chunk_claim(1, 1).read_text())
        claim["batch"] = None
        run_dir.chunk_claim(1, 1).write_text(json.dumps(claim))
        again = await submit_rows(backend, rows(8), run_dir, key, max_requests_per_batch=4)
        found = await backend.find(tags={"bp_run": key.digest()}, created_after=first.batches[0].created_at)
    assert sorted(again.batch_ids) == sorted(first.batch_ids)
    assert len(listed_jobs(emu)) - before == 2
    assert Ledger.load(run_dir).attempts[1].chunks[1].matched_by == "tags"
    assert sorted(ref.batch_id for ref in found) == sorted(first.batch_ids)


async def test_create_answer_lost_is_adopted_not_repeated(emu: Any, tmp_path: Path) -> None:
    """The create took effect but its answer was cut off: the backend finds the job by its display
    name instead of paying for a second one."""
    run_dir = run_directory(tmp_path, dag_id="d", run_id="dropped")
    key = RunKey(dag_id="d", task_id="submit", run_id="dropped")
    before = len(listed_jobs(emu))
    emu.set_faults(
        {"rules": [{"match": "POST /v1/projects/*/batchPredictionJobs", "kind": "drop", "times": 1}]}
    )
    async with backend_for(emu) as backend:
        handle = await submit_rows(backend, rows(5), run_dir, key)
        await wait_all(backend, handle, emu)
        summary = await collect_run(backend, handle, run_dir)
    assert emu.stats()["faults"].get("http_drop", 0) >= 1
    assert len(listed_jobs(emu)) - before == 1
    assert summary.succeeded == 5
    assert_accounted(run_dir, 5)
