"""The Gemini backend through the run lifecycle (submit → wait → collect → retry → dead letter),
inline and uploaded-file batches, against the emulator over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from gemini_support import (
    FILE,
    INLINE,
    KEY,
    assert_accounted,
    backend_for,
    batches_created,
    builder,
    read_lines,
    rows,
    submit_rows,
    wait_all,
)

from batch_provider.core.collection import collect_run
from batch_provider.core.errors import NotFoundError, RateLimitedError
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.models import BatchEnding, BatchStatus
from batch_provider.core.records import iter_list
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run

MODES = pytest.mark.parametrize("inline_max_bytes", [INLINE, FILE], ids=["inline", "file"])


@MODES
async def test_partial_failure_recovered_by_retry_then_dead_letter(
    emu: Any, tmp_path: Path, inline_max_bytes: int
) -> None:
    data = rows(40)
    data[3]["id"] = "emu-fail400-bad"  # refused by the model: not retryable
    data[3]["text"] += " [[emu:fail400]]"  # the directive reaches the wire in the text
    data[5]["id"] = "odd\nid"  # any row id works: the wire carries a wire id, results this id
    data.append({"id": data[0]["id"], "text": "a duplicate id"})  # rejected before sending
    run_dir = run_directory(tmp_path, dag_id="d", run_id="retry")
    key = RunKey(dag_id="d", task_id="submit", run_id="retry")
    before = batches_created(emu)
    async with backend_for(emu, inline_max_bytes) as backend:
        handle = await submit_rows(
            backend,
            data,
            run_dir,
            key,
            max_requests_per_batch=25,
            tags={"emu_faults": "item_errors=0.3:500/429"},
        )
        assert len(handle.batch_ids) == 2 and all(b.startswith("batches/") for b in handle.batch_ids)
        uploaded = [ref.input_file_id for ref in handle.batches]
        assert (
            all(f and f.startswith("files/") for f in uploaded)
            if inline_max_bytes == FILE
            else uploaded == [None, None]
        )
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
    assert batches_created(emu) - before == len(handle.batch_ids) + len(retry.batch_ids)
    assert closed.dead_letter == 1 and closed.finished
    dead = read_lines(run_dir.dead_letter)
    assert [d["custom_id"] for d in dead] == ["emu-fail400-bad"] and dead[0]["error"]["retryable"] is False
    assert_accounted(run_dir, 41)
    results = read_lines(run_dir.results)
    assert all(r["provider"] == "gemini" and r["output_text"] and r["model"] for r in results)
    assert "odd\nid" in {r["custom_id"] for r in results}
    assert {r["attempt"] for r in results} == {1, 2}


@MODES
async def test_expiry_keeps_partial_results_and_the_rest_is_retryable(
    emu: Any, tmp_path: Path, inline_max_bytes: int
) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="expire")
    key = RunKey(dag_id="d", task_id="submit", run_id="expire")
    async with backend_for(emu, inline_max_bytes) as backend:
        handle = await submit_rows(backend, rows(20), run_dir, key, tags={"emu_faults": "expire=0.5"})
        await wait_all(backend, handle, emu)
        state = await backend.status(handle.batch_ids[0])
        assert (state.native_status, state.ending) == ("BATCH_STATE_EXPIRED", BatchEnding.EXPIRED)
        assert state.counts.succeeded == 10 and state.counts.expired == 10
        summary = await collect_run(backend, handle, run_dir)
    assert summary.succeeded == 10 and summary.unresolved_by_status == {"expired": 10}
    assert summary.retryable == 10
    assert_accounted(run_dir, 20)


async def test_cancel_keeps_finished_requests(emu: Any, tmp_path: Path) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="cancel")
    key = RunKey(dag_id="d", task_id="submit", run_id="cancel")
    async with backend_for(emu) as backend:
        # expire=1.0 spreads the work over the 48 h window, so half of it is done after 24 h
        handle = await submit_rows(backend, rows(40), run_dir, key, tags={"emu_faults": "expire=1.0"})
        emu.advance(86400)
        cancelling = await backend.cancel(handle.batch_ids[0])
        assert cancelling.status is BatchStatus.RUNNING
        emu.advance(600)
        cancelled = await backend.cancel(handle.batch_ids[0])  # ended: unchanged, not an error
        assert (cancelled.native_status, cancelled.ending) == ("BATCH_STATE_CANCELLED", BatchEnding.CANCELLED)
        summary = await collect_run(backend, handle, run_dir)
        await backend.delete_batch(handle.batch_ids[0])
        await backend.delete_batch(handle.batch_ids[0])  # already gone: fine
    assert 0 < summary.succeeded < 40
    assert summary.unresolved_by_status == {"cancelled": 40 - summary.succeeded}
    assert summary.retryable == 40 - summary.succeeded
    assert_accounted(run_dir, 40)


@MODES
async def test_crash_between_create_and_ledger_write_reattaches(
    emu: Any, tmp_path: Path, inline_max_bytes: int
) -> None:
    """The provider accepted a batch but the ledger never heard of it: the rerun finds it by its
    display name, one batch, not two."""
    run_dir = run_directory(tmp_path, dag_id="d", run_id="crash")
    key = RunKey(dag_id="d", task_id="submit", run_id="crash")
    before = batches_created(emu)
    async with backend_for(emu, inline_max_bytes) as backend:
        first = await submit_rows(backend, rows(8), run_dir, key, max_requests_per_batch=4)
        ledger = Ledger.load(run_dir)
        assert ledger is not None
        lost = ledger.attempts[1].chunks[1]
        assert lost.intent_at is not None
        lost.batch = None  # as if the process died right after the create call returned
        ledger.save(run_dir)
        claim = json.loads(run_dir.chunk_claim(1, 1).read_text())
        claim["batch"] = None  # nor did its claim get the batch; the claim's owner is gone
        run_dir.chunk_claim(1, 1).write_text(json.dumps(claim))
        again = await submit_rows(backend, rows(8), run_dir, key, max_requests_per_batch=4)
    assert sorted(again.batch_ids) == sorted(first.batch_ids)
    assert batches_created(emu) - before == 2
    assert Ledger.load(run_dir).attempts[1].chunks[1].matched_by == "tags"


async def test_create_answer_lost_is_adopted_not_repeated(emu: Any, tmp_path: Path) -> None:
    """The create took effect but its answer was cut off: the backend finds the batch by its
    display name instead of paying for a second one."""
    emu.set_faults({"rules": [{"match": "POST /v1beta/models/*", "kind": "drop", "times": 1}]})
    run_dir = run_directory(tmp_path, dag_id="d", run_id="drop")
    key = RunKey(dag_id="d", task_id="submit", run_id="drop")
    before = batches_created(emu)
    async with backend_for(emu) as backend:
        handle = await submit_rows(backend, rows(6), run_dir, key)
    assert len(handle.batch_ids) == 1 and batches_created(emu) - before == 1
    assert emu.stats()["faults"].get("http_drop", 0) >= 1


async def test_transient_faults_are_retried_and_the_key_stays_out_of_urls(emu: Any, tmp_path: Path) -> None:
    urls: list[str] = []

    async def record(request: httpx2.Request) -> None:
        urls.append(str(request.url))

    emu.set_faults(
        {
            "rules": [
                {"match": "POST /v1beta/models/*", "kind": "429", "times": 1, "retry_after": 0},
                {"match": "GET /v1beta/batches/*", "kind": "503", "times": 2, "retry_after": 0},
                {"match": "GET /download/*", "kind": "500", "times": 1},
            ]
        }
    )
    run_dir = run_directory(tmp_path, dag_id="d", run_id="faults")
    key = RunKey(dag_id="d", task_id="submit", run_id="faults")
    client = httpx2.AsyncClient(base_url=emu.base_url, event_hooks={"request": [record]})
    async with backend_for(emu, FILE, client=client) as backend:
        handle = await submit_rows(backend, rows(5), run_dir, key)
        await wait_all(backend, handle, emu)
        summary = await collect_run(backend, handle, run_dir)
        assert KEY not in repr(backend)
    await client.aclose()
    assert summary.succeeded == 5
    assert urls and not any(KEY in url for url in urls)
    assert any("/upload/v1beta/files" in url for url in urls)
    faults = emu.stats()["faults"]
    assert faults.get("http_429", 0) >= 1 and faults.get("http_503", 0) >= 2


async def test_quota_429_is_not_waited_out_and_unknown_batch_is_not_found(emu: Any) -> None:
    emu.set_faults({"rules": [{"match": "GET /v1beta/batches/*", "kind": "quota", "times": 1}]})
    async with backend_for(emu) as backend:
        with pytest.raises(RateLimitedError) as limited:
            await backend.status("batches/nope")
        assert KEY not in str(limited.value)
        with pytest.raises(NotFoundError):
            await backend.status("nope")


@MODES
async def test_structured_output_parsed_and_broken_download_restarted(
    emu: Any, tmp_path: Path, inline_max_bytes: int
) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["bug", "question"]}, "score": {"type": "number"}},
        "required": ["label", "score"],
    }
    run_dir = run_directory(tmp_path, dag_id="d", run_id="json")
    key = RunKey(dag_id="d", task_id="submit", run_id="json")
    items = builder(response_schema=schema).render(iter_list(rows(30)))
    async with backend_for(emu, inline_max_bytes) as backend:
        handle = await submit_run(
            backend, items, run_dir, run_key=key, conn_id=None, tags={"emu_faults": "drop,shuffle"}
        )
        await wait_all(backend, handle, emu)
        summary = await collect_run(backend, handle, run_dir)
    assert summary.succeeded == 30 and summary.unresolved == 0
    parsed = [r["parsed"] for r in read_lines(run_dir.results)]
    assert all(p["label"] in ("bug", "question") and isinstance(p["score"], float | int) for p in parsed)
    if inline_max_bytes == FILE:
        assert emu.stats()["faults"].get("stream_drop", 0) >= 1


@MODES
async def test_fault_storm_still_one_batch_per_chunk(emu: Any, tmp_path: Path, inline_max_bytes: int) -> None:
    emu.set_faults(
        {
            "fault_rate": 0.3,
            "fault_kinds": ["429", "500", "503", "drop"],
            "fault_routes": ["* /v1beta/*", "* /upload/*", "* /download/*"],
            "retry_after": 0,
        }
    )
    run_dir = run_directory(tmp_path, dag_id="d", run_id="storm")
    key = RunKey(dag_id="d", task_id="submit", run_id="storm")
    before = batches_created(emu)
    async with backend_for(emu, inline_max_bytes) as backend:
        handle = await submit_rows(backend, rows(30), run_dir, key, max_requests_per_batch=10)
        await wait_all(backend, handle, emu)
        summary = await collect_run(backend, handle, run_dir)
    faults = emu.stats()["faults"]
    emu.clear_faults()
    assert batches_created(emu) - before == 3 and len(handle.batch_ids) == 3
    assert summary.succeeded == 30 and summary.accounted
    assert sum(n for kind, n in faults.items() if kind.startswith("http_")) > 0


async def test_retry_under_the_same_faults_recovers_transient_errors_only(emu: Any, tmp_path: Path) -> None:
    """The retry's batch carries the same item-error fault as the first: the resent 429/500 rows
    recover (the emulator's item errors are transient), the 400 row stays an error."""
    data = [{"id": f"g-{i:04d}", "text": f"gemini recovery row {i}"} for i in range(30)]
    data[2]["text"] += " [[emu:fail400]]"  # a permanent item error, through the text marker
    faults = {"emu_faults": "item_errors=0.4:500/429"}
    run_dir = run_directory(tmp_path, dag_id="d", run_id="transient")
    key = RunKey(dag_id="d", task_id="submit", run_id="transient")
    async with backend_for(emu) as backend:
        handle = await submit_rows(backend, data, run_dir, key, tags=faults)
        await wait_all(backend, handle, emu)
        first = await collect_run(backend, handle, run_dir)
        assert first.retryable >= 5
        retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, tags=faults, max_attempts=2)
        assert retry is not None
        await wait_all(backend, retry, emu)
        second = await collect_run(backend, retry, run_dir)
        write_dead_letter(backend, run_dir)
    assert 0 < second.succeeded - first.succeeded <= first.retryable
    recovered = {r["custom_id"] for r in read_lines(run_dir.results) if r["attempt"] == 2}
    dead = {r["custom_id"]: r for r in read_lines(run_dir.dead_letter)}
    assert dead["g-0002"]["error"]["retryable"] is False
    assert recovered and dead.keys().isdisjoint(recovered)
    assert_accounted(run_dir, 30)
