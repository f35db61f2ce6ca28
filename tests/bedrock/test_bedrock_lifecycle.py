"""The Bedrock backend through the run lifecycle (submit → wait → collect → retry → dead letter),
against the emulator and moto's S3 over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bedrock_support import CLAUDE, INPUT_BUCKET, backend_for, s3_client
from run_support import assert_accounted, read_lines

from batch_provider.backends.bedrock.backend import BelowMinimumRecordsError
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.models import BatchEnding, BatchStatus
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches

NOVA = "us.amazon.nova-lite-v1:0"


def rows(count: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i:04d}", "text": f"ticket number {i} " * (1 + i % 5)} for i in range(count)]


def builder(model: str = CLAUDE, **options: Any) -> RequestBuilder:
    options.setdefault("max_tokens", 64)
    return RequestBuilder(template="Classify: {{ text }}", model=model, **options)


def jobs_created(emu: Any) -> int:
    return int(emu.stats()["batches_created"].get("bedrock", 0))


async def wait_all(backend: Any, handle: Any, emu: Any) -> None:
    emu.advance(2 * 86400)
    await watch_batches(
        backend, handle.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.2
    )


async def test_partial_failure_recovered_by_retry_then_dead_letter(emu: Any, tmp_path: Path) -> None:
    emu.bedrock_settings(min_records=10)
    data = rows(120)
    data[3]["id"] = "emu-fail400-bad"  # refused by the model: not retryable
    data[3]["text"] += " [[emu:fail400]]"  # the directive reaches the wire in the text
    data[5]["id"] = "odd id with spaces"  # any row id works: the recordId is a wire id of ours
    data.append({"id": data[0]["id"], "text": "a duplicate id"})  # rejected before sending
    run_dir = run_directory(tmp_path, dag_id="d", run_id="retry")
    key = RunKey(dag_id="d", task_id="submit", run_id="retry")
    before = jobs_created(emu)
    async with backend_for(emu, min_records_per_job=10) as backend:
        handle = await submit_run(
            backend,
            builder().render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id=None,
            tags={"emu_faults": "item_errors=0.2:500/429", "team": "eval"},
        )
        assert len(handle.batch_ids) == 1 and handle.batch_ids[0].startswith("arn:aws:bedrock:")
        await wait_all(backend, handle, emu)
        first = await collect_run(backend, handle, run_dir)
        assert first.accounted and first.rejected == 1
        assert 10 <= first.retryable < 120 and first.unresolved == first.retryable + 1
        assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

        retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, tags={}, max_attempts=3)
        assert retry is not None and retry.attempt == 2 and retry.counts.submitted == first.retryable
        again = await resubmit_retryable(backend, handle, run_dir, run_key=key, tags={}, max_attempts=3)
        assert again is not None and again.batch_ids == retry.batch_ids, "a rerun of the retry re-attaches"
        await wait_all(backend, retry, emu)
        second = await collect_run(backend, retry, run_dir)
        assert second.succeeded == 119 and second.unresolved == 1
        closed = write_dead_letter(backend, run_dir)
    assert jobs_created(emu) - before == 2
    assert closed.dead_letter == 1 and closed.finished
    dead = read_lines(run_dir.dead_letter)
    assert [d["custom_id"] for d in dead] == ["emu-fail400-bad"] and dead[0]["error"]["retryable"] is False
    assert_accounted(run_dir, 121)
    results = read_lines(run_dir.results)
    assert all(r["provider"] == "bedrock" and r["output_text"] for r in results)
    assert "odd id with spaces" in {r["custom_id"] for r in results}


async def test_partially_completed_keeps_output_and_retries_the_rest(emu: Any, tmp_path: Path) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="partial")
    key = RunKey(dag_id="d", task_id="submit", run_id="partial")
    async with backend_for(emu) as backend:
        handle = await submit_run(
            backend,
            builder().render(iter_list(rows(100))),
            run_dir,
            run_key=key,
            conn_id=None,
            tags={"emu_faults": "expire=0.5"},
        )
        await wait_all(backend, handle, emu)
        state = await backend.status(handle.batch_ids[0])
        assert (state.native_status, state.ending) == ("PartiallyCompleted", BatchEnding.EXPIRED)
        assert state.counts.succeeded == 50 and state.counts.expired == 50
        summary = await collect_run(backend, handle, run_dir)
        ref = handle.batches[0]
        bucket, key = ref.input_file_id[5:].split("/", 1)
        assert s3_client(emu).list_objects_v2(Bucket=bucket, Prefix=key)["KeyCount"] == 1
        await backend.delete_input(ref)
        assert s3_client(emu).list_objects_v2(Bucket=bucket, Prefix=key)["KeyCount"] == 0
    assert summary.succeeded == 50 and summary.unresolved_by_status == {"expired": 50}
    assert summary.retryable == 50
    assert_accounted(run_dir, 100)


async def test_stop_on_cancel_keeps_done_records(emu: Any, tmp_path: Path) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="stop")
    key = RunKey(dag_id="d", task_id="submit", run_id="stop")
    async with backend_for(emu) as backend:
        handle = await submit_run(
            backend, builder().render(iter_list(rows(200))), run_dir, run_key=key, conn_id=None
        )
        emu.advance(95 + 800)
        stopping = await backend.cancel(handle.batch_ids[0])
        assert stopping.status in (BatchStatus.FINALIZING, BatchStatus.ENDED)
        emu.advance(600)
        stopped = await backend.cancel(handle.batch_ids[0])  # ended: unchanged, not an error
        assert (stopped.native_status, stopped.ending) == ("Stopped", BatchEnding.CANCELLED)
        summary = await collect_run(backend, handle, run_dir)
    assert 0 < summary.succeeded < 200
    assert summary.unresolved_by_status == {"cancelled": 200 - summary.succeeded}
    assert summary.retryable == 200 - summary.succeeded
    assert_accounted(run_dir, 200)


async def test_crash_between_create_and_ledger_write_reattaches(emu: Any, tmp_path: Path) -> None:
    emu.bedrock_settings(min_records=10)
    run_dir = run_directory(tmp_path, dag_id="d", run_id="crash")
    key = RunKey(dag_id="d", task_id="submit", run_id="crash")
    before = jobs_created(emu)
    async with backend_for(emu, min_records_per_job=10) as backend:

        async def submit() -> Any:
            return await submit_run(
                backend,
                builder().render(iter_list(rows(40))),
                run_dir,
                run_key=key,
                conn_id=None,
                max_requests_per_batch=20,
            )

        first = await submit()
        ledger = Ledger.load(run_dir)
        assert ledger is not None
        lost = ledger.attempts[1].chunks[1]
        assert lost.intent_at is not None
        lost.batch = None  # as if the process died right after the create call returned
        ledger.save(run_dir)
        claim = json.loads(run_dir.chunk_claim(1, 1).read_text())
        claim["batch"] = None  # nor did its claim get the batch; the claim's owner is gone
        run_dir.chunk_claim(1, 1).write_text(json.dumps(claim))
        again = await submit()
        assert sorted(again.batch_ids) == sorted(first.batch_ids)
        assert Ledger.load(run_dir).attempts[1].chunks[1].matched_by == "tags"

        lost.intent_at = None  # even a rerun that does not look first reuses the job: same token
        ledger.save(run_dir)
        third = await submit()
        assert sorted(third.batch_ids) == sorted(first.batch_ids)
    assert jobs_created(emu) - before == 2


async def test_below_minimum_fails_before_any_upload_or_job(emu: Any, tmp_path: Path) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="tiny")
    key = RunKey(dag_id="d", task_id="submit", run_id="tiny")
    before = jobs_created(emu)
    backend = backend_for(emu)
    async with backend:
        with pytest.raises(BelowMinimumRecordsError) as refused:
            await submit_run(
                backend, builder().render(iter_list(rows(7))), run_dir, run_key=key, conn_id=None
            )
    message = str(refused.value)
    assert "at least 100 records" in message and "has 7" in message and "nothing was sent" in message
    assert jobs_created(emu) == before
    listing = s3_client(emu).list_objects_v2(Bucket=INPUT_BUCKET, Prefix=backend.input_prefix)
    assert not listing.get("Contents"), "nothing was uploaded"


async def test_structured_output_and_nova_family(emu: Any, tmp_path: Path) -> None:
    emu.bedrock_settings(min_records=10)
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["bug", "question"]}, "score": {"type": "number"}},
        "required": ["label", "score"],
    }
    async with backend_for(emu, min_records_per_job=10) as backend:
        for model, run_id in ((CLAUDE, "claude"), (NOVA, "nova")):
            run_dir = run_directory(tmp_path, dag_id="d", run_id=run_id)
            key = RunKey(dag_id="d", task_id="submit", run_id=run_id)
            handle = await submit_run(
                backend,
                builder(model, response_schema=schema, max_tokens=200).render(iter_list(rows(12))),
                run_dir,
                run_key=key,
                conn_id=None,
            )
            await wait_all(backend, handle, emu)
            summary = await collect_run(backend, handle, run_dir)
            assert summary.succeeded == 12, run_id
            for record in read_lines(run_dir.results):
                assert record["parsed"]["label"] in ("bug", "question")
                assert json.loads(record["output_text"]) == record["parsed"]
                assert record["usage"]["input_tokens"] > 0


async def test_short_last_chunk_stops_the_run_before_the_first_job(emu: Any, tmp_path: Path) -> None:
    emu.bedrock_settings(min_records=10)
    run_dir = run_directory(tmp_path, dag_id="d", run_id="tail")
    key = RunKey(dag_id="d", task_id="submit", run_id="tail")
    before = jobs_created(emu)
    async with backend_for(emu, min_records_per_job=10) as backend:
        with pytest.raises(BelowMinimumRecordsError, match=r"part-00002\.jsonl has 4"):
            await submit_run(
                backend,
                builder().render(iter_list(rows(44))),
                run_dir,
                run_key=key,
                conn_id=None,
                max_requests_per_batch=20,
            )
    assert jobs_created(emu) == before


async def test_full_cycle_under_random_http_faults_makes_one_job_per_chunk(emu: Any, tmp_path: Path) -> None:
    """Throttling, 5xx and lost answers on every Bedrock call: botocore retries, the token
    de-duplicates the creates."""
    emu.bedrock_settings(min_records=10)
    run_dir = run_directory(tmp_path, dag_id="d", run_id="faults")
    key = RunKey(dag_id="d", task_id="submit", run_id="faults")
    before = jobs_created(emu)
    emu.set_faults({"fault_rate": 0.3, "fault_kinds": ["429", "500", "503", "drop"], "retry_after": 0})
    async with backend_for(emu, min_records_per_job=10) as backend:
        handle = await submit_run(
            backend,
            builder().render(iter_list(rows(60))),
            run_dir,
            run_key=key,
            conn_id=None,
            max_requests_per_batch=20,
        )
        await wait_all(backend, handle, emu)
        summary = await collect_run(backend, handle, run_dir)
    faults = emu.stats()["faults"]
    emu.clear_faults()
    assert sum(faults.values()) > 0
    assert jobs_created(emu) - before == 3 and len(set(handle.batch_ids)) == 3
    assert summary.succeeded == 60
    assert_accounted(run_dir, 60)


async def test_create_waits_for_a_job_slot(emu: Any, tmp_path: Path) -> None:
    import asyncio
    import time

    from batch_provider.core.errors import RateLimitedError

    emu.bedrock_settings(min_records=10, max_jobs_in_flight=0)
    key = RunKey(dag_id="d", task_id="submit", run_id="slot")
    async with backend_for(emu, min_records_per_job=10) as impatient:
        with pytest.raises(RateLimitedError, match="ServiceQuotaExceededException"):
            await submit_run(
                impatient,
                builder().render(iter_list(rows(10))),
                run_directory(tmp_path / "a", dag_id="d", run_id="slot"),
                run_key=key,
                conn_id=None,
            )
    async with backend_for(
        emu, min_records_per_job=10, wait_for_job_slot_seconds=30, job_slot_poll_seconds=0.1
    ) as patient:

        async def free_a_slot() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(emu.bedrock_settings, max_jobs_in_flight=20)

        started = time.monotonic()
        freeing = asyncio.create_task(free_a_slot())
        handle = await submit_run(
            patient,
            builder().render(iter_list(rows(10))),
            run_directory(tmp_path / "b", dag_id="d", run_id="slot"),
            run_key=key,
            conn_id=None,
        )
        await freeing
    assert time.monotonic() - started >= 0.4 and len(handle.batch_ids) == 1


async def test_retry_below_the_minimum_is_refused_and_the_run_closes_with_a_dead_letter(
    emu: Any, tmp_path: Path
) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="small-retry")
    key = RunKey(dag_id="d", task_id="submit", run_id="small-retry")
    async with backend_for(emu) as backend:
        handle = await submit_run(
            backend,
            builder().render(iter_list(rows(100))),
            run_dir,
            run_key=key,
            conn_id=None,
            tags={"emu_faults": "item_errors=0.2:500"},
        )
        await wait_all(backend, handle, emu)
        first = await collect_run(backend, handle, run_dir)
        assert 0 < first.retryable < 100
        before = jobs_created(emu)
        with pytest.raises(BelowMinimumRecordsError, match=f"has {first.retryable};"):
            await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=3)
        assert jobs_created(emu) == before
        closed = write_dead_letter(backend, run_dir)
    assert closed.dead_letter == first.retryable and closed.succeeded == 100 - first.retryable
    assert_accounted(run_dir, 100)


async def test_llama_family_end_to_end(emu: Any, tmp_path: Path) -> None:
    emu.bedrock_settings(min_records=10)
    run_dir = run_directory(tmp_path, dag_id="d", run_id="llama")
    async with backend_for(emu, min_records_per_job=10) as backend:
        handle = await submit_run(
            backend,
            builder("meta.llama3-3-70b-instruct-v1:0").render(iter_list(rows(10))),
            run_dir,
            run_key=RunKey(dag_id="d", task_id="submit", run_id="llama"),
            conn_id=None,
        )
        await wait_all(backend, handle, emu)
        summary = await collect_run(backend, handle, run_dir)
    assert summary.succeeded == 10
    for record in read_lines(run_dir.results):
        assert record["output_text"] and record["finish_reason"] == "stop"
        assert record["usage"]["input_tokens"] > 0 and record["usage"]["output_tokens"] > 0
