"""OpenAIBackend against the emulator over real HTTP: every operation and every fault of spec §E."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_provider.backends.openai.backend import OpenAIBackend, OpenAICompatibleBackend
from batch_provider.backends.transport import TransportPolicy
from batch_provider.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    ProviderUnavailableError,
    RateLimitedError,
)
from batch_provider.core.models import BatchEnding, BatchStatus, ItemStatus, LLMRequest
from batch_provider.emulator.process import EmulatorProcess
from tests.backends.conftest import FAST, assert_invariant, chat, end_all, submit_all

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


async def test_full_cycle_chat_responses_embeddings(
    emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path
) -> None:
    requests = [
        chat(f"c-{i}", response_schema=SCHEMA if i % 2 else None, system="Be terse.") for i in range(6)
    ]
    requests += [chat(f"r-{i}", endpoint="/v1/responses", response_schema=SCHEMA) for i in range(3)]
    requests += [
        LLMRequest(custom_id=f"e-{i}", model="text-embedding-3-small", kind="embedding", input=f"t{i}")
        for i in range(3)
    ]
    requests += [chat("c-0"), chat("no-model", model=None)]  # duplicate and rejected
    run = await submit_all(openai, requests, tmp_path, tags={"dag_id": "d", "run_id": "r1"})
    assert {c.group for c in run.chunks} == {
        "/v1/chat/completions gpt-6-luna",
        "/v1/responses gpt-6-luna",
        "/v1/embeddings text-embedding-3-small",
    }
    first = await openai.status(run.refs[0].batch_id)
    assert first.status in (BatchStatus.PENDING, BatchStatus.RUNNING) and first.ending is None

    found = await openai.find(tags={"dag_id": "d", "run_id": "r1"}, created_after=run.started)
    assert {r.batch_id for r in found} == {r.batch_id for r in run.refs}
    assert {r.chunk_index for r in found} == {c.index for c in run.chunks}
    assert await openai.find(tags={"run_id": "other"}, created_after=run.started) == []

    states = await end_all(emu, openai, run.refs)
    assert all(s.ending is BatchEnding.COMPLETED for s in states)
    records = await run.collect()
    by_id = run.by_id()
    assert by_id["c-1"].parsed is not None and "label" in by_id["c-1"].parsed
    assert by_id["c-0"].output_text and by_id["c-0"].parsed is None
    assert by_id["r-0"].parsed is not None and by_id["r-0"].usage.output_tokens > 0
    assert len(by_id["e-0"].embedding) == 1536
    assert by_id["c-2"].model and by_id["c-2"].usage.input_tokens > 0 and by_id["c-2"].raw
    assert {r.status for r in records} == {ItemStatus.SUCCEEDED, ItemStatus.REJECTED}
    assert [r.custom_id for r in records if r.status is ItemStatus.REJECTED] == ["c-0", "no-model"]


async def test_item_errors_are_classified(
    emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path
) -> None:
    ids = [
        "ok-1",
        "emu-fail-a",
        "emu-fail422-b",
        "emu-fail429-c",
        "emu-fail500-d",
        "emu-fail503-e",
        "emu-fail504-f",
    ]
    run = await submit_all(openai, [chat(i) for i in ids], tmp_path)
    await end_all(emu, openai, run.refs)
    await run.collect()
    by_id = run.by_id()
    assert by_id["ok-1"].status is ItemStatus.SUCCEEDED
    retryable = {i: by_id[i].error.retryable for i in ids[1:]}
    assert retryable == {
        "emu-fail-a": False,
        "emu-fail422-b": False,
        "emu-fail429-c": True,
        "emu-fail500-d": True,
        "emu-fail503-e": True,
        "emu-fail504-f": True,
    }
    assert by_id["emu-fail-a"].error.type == "invalid_request_error"


async def test_expiry_keeps_partial_results(
    emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path
) -> None:
    run = await submit_all(
        openai, [chat(f"x-{i}") for i in range(10)], tmp_path, tags={"emu_faults": "expire=0.3"}
    )
    [state] = await end_all(emu, openai, run.refs)
    assert (state.status, state.ending, state.native_status) == (
        BatchStatus.ENDED,
        BatchEnding.EXPIRED,
        "expired",
    )
    counts = assert_invariant(run.inputs, await run.collect())
    assert counts[ItemStatus.SUCCEEDED] == 3 and counts[ItemStatus.EXPIRED] == 7
    assert all(r.error.retryable for r in run.records if r.status is ItemStatus.EXPIRED)


async def test_cancel_then_cancel_again(emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path) -> None:
    run = await submit_all(openai, [chat(f"k-{i}") for i in range(8)], tmp_path)
    state = await openai.cancel(run.refs[0].batch_id)
    assert state.status in (BatchStatus.FINALIZING, BatchStatus.ENDED)
    [ended] = await end_all(emu, openai, run.refs)
    assert ended.ending is BatchEnding.CANCELLED
    again = await openai.cancel(run.refs[0].batch_id)
    assert again.ending is BatchEnding.CANCELLED and again.native_status == "cancelled"
    counts = assert_invariant(run.inputs, await run.collect())
    assert counts[ItemStatus.CANCELLED] == 8 - counts[ItemStatus.SUCCEEDED] - counts[ItemStatus.ERRORED]
    assert counts[ItemStatus.CANCELLED] > 0


@pytest.mark.parametrize(("code", "retryable"), [("token_limit_exceeded", True), ("invalid_request", False)])
async def test_validation_failure(
    emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path, code: str, retryable: bool
) -> None:
    run = await submit_all(
        openai, [chat(f"v-{i}") for i in range(4)], tmp_path, tags={"emu_faults": f"fail_validation={code}"}
    )
    [state] = await end_all(emu, openai, run.refs)
    assert (state.ending, state.retryable) == (BatchEnding.FAILED, retryable)
    assert state.error_message
    counts = assert_invariant(run.inputs, await run.collect())
    assert counts[ItemStatus.ERRORED] == 4
    assert all(r.error.type == "batch_failed" and r.error.retryable for r in run.records)


async def test_results_download_dropped_twice_and_shuffled(
    emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path
) -> None:
    requests = [chat(f"d-{i}", messages=[{"role": "user", "content": "long " * 50}]) for i in range(300)]
    requests += [chat(f"emu-fail500-{i}") for i in range(20)]
    run = await submit_all(openai, requests, tmp_path, tags={"emu_faults": "drop=2,shuffle"})
    await end_all(emu, openai, run.refs)
    await run.collect()
    assert emu.stats()["faults"].get("stream_drop", 0) >= 2
    assert run.reports[0].duplicates == 0 and run.reports[0].synthesized == 0


@pytest.mark.parametrize("kind", ["429", "500", "502", "503", "504", "529", "reset", "drop"])
async def test_transient_http_faults_are_retried(
    emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path, kind: str
) -> None:
    emu.set_faults({"rules": [{"match": "openai", "kind": kind, "times": 2, "retry_after": 0.05}]})
    run = await submit_all(openai, [chat(f"t-{i}") for i in range(5)], tmp_path)
    await end_all(emu, openai, run.refs)
    await run.collect()
    stats = emu.stats()
    assert stats["faults_total"] == 2
    assert stats["batches_created"]["openai"] == 1


async def test_dropped_create_adopts_the_batch_it_made(
    emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path
) -> None:
    emu.set_faults({"rules": [{"match": "POST /v1/batches", "kind": "drop", "times": 1}]})
    run = await submit_all(openai, [chat(f"a-{i}") for i in range(3)], tmp_path)
    assert emu.stats()["batches_created"]["openai"] == 1
    await end_all(emu, openai, run.refs)
    await run.collect()


@pytest.mark.parametrize("kind", ["429_long", "quota"])
async def test_long_or_quota_429_raises_at_once(
    emu: EmulatorProcess, openai: OpenAIBackend, kind: str
) -> None:
    emu.set_faults({"rules": [{"match": "GET /v1/batches/*", "kind": kind, "times": 5}]})
    with pytest.raises(RateLimitedError) as caught:
        await openai.status("batch_whatever")
    assert caught.value.status_code == 429
    assert emu.faults()["rules"][0]["times"] == 4


async def test_persistent_5xx_gives_up_as_unavailable(emu: EmulatorProcess, tmp_path: Path) -> None:
    emu.set_faults({"rules": [{"match": "GET /v1/batches/*", "kind": "503", "times": 100}]})
    policy = TransportPolicy(backoff_base=0.01, backoff_cap=0.02, max_attempts=3)
    async with OpenAIBackend("sk-k", emu.base_url + "/v1", policy=policy) as backend:
        with pytest.raises(ProviderUnavailableError):
            await backend.status("batch_x")
    assert emu.faults()["rules"][0]["times"] == 97


async def test_429_waits_for_retry_after(emu: EmulatorProcess, openai: OpenAIBackend) -> None:
    import time

    emu.set_faults({"rules": [{"match": "GET /v1/batches", "kind": "429", "times": 1, "retry_after": 0.3}]})
    started = time.monotonic()
    assert await openai.find(tags={}, created_after=__import__("datetime").datetime.now().astimezone()) == []
    assert time.monotonic() - started >= 0.3


async def test_auth_not_found_and_wrong_state(
    emu: EmulatorProcess, openai: OpenAIBackend, tmp_path: Path
) -> None:
    async with OpenAICompatibleBackend("", emu.base_url + "/v1", policy=FAST) as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.status("batch_x")
    with pytest.raises(NotFoundError) as caught:
        await openai.status("batch_nope")
    assert "sk-emulator-key-123" not in str(caught.value)
    run = await submit_all(openai, [chat("w-1")], tmp_path)
    await end_all(emu, openai, run.refs)
    await openai.delete_input(run.refs[0])
    await openai.delete_input(run.refs[0])  # already gone: not an error
    with pytest.raises(NotFoundError):
        await openai._http.json("GET", f"files/{run.refs[0].input_file_id}", operation="get file")
    with pytest.raises(InvalidRequestError):
        await openai._http.json("POST", "batches", operation="create batch", json_body={"endpoint": "/v1/x"})


async def test_key_never_in_errors_or_logs(emu: EmulatorProcess, caplog: pytest.LogCaptureFixture) -> None:
    emu.set_faults({"rules": [{"match": "GET /v1/batches/*", "kind": "quota", "times": 1}]})
    async with OpenAIBackend("sk-very-secret-key-987", emu.base_url + "/v1", policy=FAST) as backend:
        with pytest.raises(RateLimitedError) as caught:
            await backend.status("batch_x")
        assert "secret" not in str(caught.value) and "secret" not in repr(backend)
    assert "secret" not in caplog.text


async def test_full_cycle_under_random_faults(emu: EmulatorProcess, tmp_path: Path) -> None:
    emu.set_faults(
        {
            "fault_rate": 0.3,
            "fault_kinds": ["429", "500", "502", "503", "504", "529", "drop", "reset"],
            "retry_after": 0.02,
        }
    )
    policy = TransportPolicy(backoff_base=0.01, backoff_cap=0.05, max_attempts=12)
    async with OpenAIBackend("sk-k", emu.base_url + "/v1", policy=policy) as backend:
        requests = [chat(f"f-{i}") for i in range(40)] + [chat(f"emu-fail500-{i}") for i in range(5)]
        run = await submit_all(
            backend, requests, tmp_path, tags={"emu_faults": "shuffle"}, max_requests_per_batch=15
        )
        await end_all(emu, backend, run.refs)
        await run.collect()
    stats = emu.stats()
    assert stats["faults_total"] >= 3
    assert stats["batches_created"]["openai"] == 3


async def test_submit_from_object_storage(emu: EmulatorProcess, openai: OpenAIBackend) -> None:
    from upath import UPath

    run = await submit_all(openai, [chat(f"s-{i}") for i in range(4)], UPath("memory://openai-submit/parts"))
    await end_all(emu, openai, run.refs)
    counts = assert_invariant(run.inputs, await run.collect())
    assert counts[ItemStatus.SUCCEEDED] == 4
