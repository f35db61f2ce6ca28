"""AnthropicBackend against the emulator over real HTTP: every operation and every fault of spec §E."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_provider.backends.anthropic.backend import AnthropicBackend
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

MODEL = "claude-haiku-4-5"
SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


def msg(custom_id: str, **fields) -> LLMRequest:
    return chat(custom_id, **{"model": MODEL, **fields})


async def test_full_cycle(emu: EmulatorProcess, anthropic: AnthropicBackend, tmp_path: Path) -> None:
    image = [
        {"type": "text", "text": "what is it"},
        {"type": "image", "media_type": "image/png", "data": "AAAA"},
    ]
    requests = [
        msg(f"m-{i}", system="Be terse.", response_schema=SCHEMA if i % 2 else None) for i in range(6)
    ]
    requests += [
        msg("img", messages=[{"role": "user", "content": image}]),
        msg("other", model="claude-sonnet-5-5"),
    ]
    requests += [msg("bad id!"), msg("no-max", max_tokens=None), msg("m-0")]
    run = await submit_all(anthropic, requests, tmp_path, max_requests_per_batch=5)
    assert [c.request_count for c in run.chunks] == [5, 3]
    state = await anthropic.status(run.refs[0].batch_id)
    assert state.status is BatchStatus.RUNNING and state.counts.processing == 5

    found = await anthropic.find(tags={}, created_after=run.started)
    assert {(r.batch_id, r.request_count) for r in found} == {(r.batch_id, r.request_count) for r in run.refs}

    with pytest.raises(InvalidRequestError):  # results before the batch ended
        [r async for r in anthropic.results(run.refs[0])]

    states = await end_all(emu, anthropic, run.refs)
    assert [s.ending for s in states] == [BatchEnding.COMPLETED] * 2
    records = await run.collect()
    by_id = run.by_id()
    assert by_id["m-1"].parsed is not None and "label" in by_id["m-1"].parsed
    assert by_id["m-0"].status is ItemStatus.SUCCEEDED and by_id["m-0"].parsed is None
    assert by_id["img"].output_text and by_id["other"].model == "claude-sonnet-5-5"
    assert by_id["m-2"].usage.input_tokens > 0 and by_id["m-2"].finish_reason
    rejected = sorted(r.custom_id for r in records if r.status is ItemStatus.REJECTED)
    assert rejected == ["bad id!", "m-0", "no-max"]


async def test_item_errors_are_classified(
    emu: EmulatorProcess, anthropic: AnthropicBackend, tmp_path: Path
) -> None:
    ids = ["ok-1", "emu-fail-a", "emu-fail429-b", "emu-fail500-c", "emu-fail504-d", "emu-fail529-e"]
    run = await submit_all(anthropic, [msg(i) for i in ids], tmp_path)
    await end_all(emu, anthropic, run.refs)
    await run.collect()
    by_id = run.by_id()
    kinds = {i: (by_id[i].error.type, by_id[i].error.retryable) for i in ids[1:]}
    assert kinds == {
        "emu-fail-a": ("invalid_request_error", False),
        "emu-fail429-b": ("rate_limit_error", True),
        "emu-fail500-c": ("api_error", True),
        "emu-fail504-d": ("timeout_error", True),
        "emu-fail529-e": ("overloaded_error", True),
    }


async def test_invalid_params_become_errored_records(
    emu: EmulatorProcess, anthropic: AnthropicBackend, tmp_path: Path
) -> None:
    requests = [msg("ok"), msg("streamy", extra={"stream": True})]
    run = await submit_all(anthropic, requests, tmp_path)
    await end_all(emu, anthropic, run.refs)
    await run.collect()
    assert run.by_id()["streamy"].error.type == "invalid_request_error"
    assert not run.by_id()["streamy"].retryable


async def test_expiry(emu: EmulatorProcess, anthropic: AnthropicBackend, tmp_path: Path) -> None:
    requests = [msg("emu-expire-first")] + [msg(f"x-{i}") for i in range(9)]
    run = await submit_all(anthropic, requests, tmp_path)
    [state] = await end_all(emu, anthropic, run.refs)
    assert state.ending is BatchEnding.EXPIRED and state.counts.expired > 0
    counts = assert_invariant(run.inputs, await run.collect())
    assert counts[ItemStatus.EXPIRED] == state.counts.expired
    assert counts[ItemStatus.SUCCEEDED] + counts[ItemStatus.EXPIRED] == 10
    assert all(r.retryable for r in run.records if r.status is ItemStatus.EXPIRED)


async def test_cancel_then_cancel_again(
    emu: EmulatorProcess, anthropic: AnthropicBackend, tmp_path: Path
) -> None:
    run = await submit_all(anthropic, [msg(f"k-{i}") for i in range(8)], tmp_path)
    state = await anthropic.cancel(run.refs[0].batch_id)
    assert (state.status, state.native_status) == (BatchStatus.FINALIZING, "canceling")
    [ended] = await end_all(emu, anthropic, run.refs)
    assert ended.ending is BatchEnding.CANCELLED
    again = await anthropic.cancel(run.refs[0].batch_id)
    assert again.ending is BatchEnding.CANCELLED
    counts = assert_invariant(run.inputs, await run.collect())
    assert counts[ItemStatus.CANCELLED] > 0
    assert all(r.retryable for r in run.records if r.status is ItemStatus.CANCELLED)


async def test_results_stream_dropped_twice_and_shuffled(
    emu: EmulatorProcess, anthropic: AnthropicBackend, tmp_path: Path
) -> None:
    requests = [msg("emu-drop2-shuffle-first")]
    requests += [msg(f"d-{i}", messages=[{"role": "user", "content": "long " * 50}]) for i in range(300)]
    run = await submit_all(anthropic, requests, tmp_path)
    await end_all(emu, anthropic, run.refs)
    await run.collect()
    assert emu.stats()["faults"].get("stream_drop", 0) >= 2
    assert run.reports[0].duplicates == 0 and run.reports[0].synthesized == 0


@pytest.mark.parametrize(
    ("kind", "route"),
    [
        ("429", "anthropic"),
        ("500", "anthropic"),
        ("502", "anthropic"),
        ("503", "anthropic"),
        ("504", "anthropic"),
        ("529", "anthropic"),
        ("reset", "GET /v1/messages/batches/*"),
        ("drop", "GET /v1/messages/batches/*"),
    ],
)
async def test_transient_http_faults_are_retried(
    emu: EmulatorProcess, anthropic: AnthropicBackend, tmp_path: Path, kind: str, route: str
) -> None:
    """Error statuses are retried on every route; connection drops on reads (a create whose
    connection broke is never resent: see the next test)."""
    emu.set_faults({"rules": [{"match": route, "kind": kind, "times": 2, "retry_after": 0.05}]})
    run = await submit_all(anthropic, [msg(f"t-{i}") for i in range(5)], tmp_path)
    await end_all(emu, anthropic, run.refs)
    await run.collect()
    stats = emu.stats()
    assert stats["faults_total"] == 2
    assert stats["batches_created"]["anthropic"] == 1


@pytest.mark.parametrize(("kind", "created"), [("drop", 1), ("reset", 0)])
async def test_broken_create_is_not_resent_and_find_recovers(
    emu: EmulatorProcess, anthropic: AnthropicBackend, tmp_path: Path, kind: str, created: int
) -> None:
    emu.set_faults({"rules": [{"match": "POST /v1/messages/batches", "kind": kind, "times": 1}]})
    with pytest.raises(ProviderUnavailableError):
        await submit_all(anthropic, [msg(f"a-{i}") for i in range(3)], tmp_path)
    assert emu.stats()["batches_created"]["anthropic"] == created
    if not created:
        return
    from datetime import UTC, datetime, timedelta

    [found] = await anthropic.find(tags={}, created_after=datetime.now(UTC) - timedelta(minutes=5))
    assert found.request_count == 3 and found.chunk_index == -1


@pytest.mark.parametrize("kind", ["429_long", "quota"])
async def test_long_or_spend_cap_429_raises_at_once(
    emu: EmulatorProcess, anthropic: AnthropicBackend, kind: str
) -> None:
    emu.set_faults({"rules": [{"match": "GET /v1/messages/batches/*", "kind": kind, "times": 5}]})
    with pytest.raises(RateLimitedError):
        await anthropic.status("msgbatch_x")
    assert emu.faults()["rules"][0]["times"] == 4


async def test_persistent_overload_gives_up(emu: EmulatorProcess) -> None:
    emu.set_faults({"rules": [{"match": "GET /v1/messages/batches/*", "kind": "529", "times": 100}]})
    policy = TransportPolicy(backoff_base=0.01, backoff_cap=0.02, max_attempts=4)
    async with AnthropicBackend("k", emu.base_url, policy=policy) as backend:
        with pytest.raises(ProviderUnavailableError) as caught:
            await backend.status("msgbatch_x")
    assert caught.value.status_code == 529
    assert emu.faults()["rules"][0]["times"] == 96


async def test_auth_and_not_found(emu: EmulatorProcess, anthropic: AnthropicBackend) -> None:
    async with AnthropicBackend("", emu.base_url, policy=FAST) as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.status("msgbatch_x")
    with pytest.raises(NotFoundError) as caught:
        await anthropic.status("msgbatch_nope")
    assert "sk-ant-emulator-key-123" not in str(caught.value)


async def test_full_cycle_under_random_faults(emu: EmulatorProcess, tmp_path: Path) -> None:
    emu.set_faults(
        {
            "fault_rate": 0.3,
            "fault_kinds": ["429", "500", "502", "503", "504", "529"],
            "retry_after": 0.02,
        }
    )
    policy = TransportPolicy(backoff_base=0.01, backoff_cap=0.05, max_attempts=12)
    async with AnthropicBackend("k", emu.base_url, policy=policy) as backend:
        requests = [msg("emu-shuffle-drop-0")] + [msg(f"f-{i}") for i in range(40)]
        run = await submit_all(backend, requests, tmp_path, max_requests_per_batch=15)
        await end_all(emu, backend, run.refs)
        await run.collect()
    stats = emu.stats()
    assert stats["faults_total"] >= 3
    assert stats["batches_created"]["anthropic"] == 3


async def test_submit_from_object_storage(emu: EmulatorProcess, anthropic: AnthropicBackend) -> None:
    from upath import UPath

    run = await submit_all(
        anthropic, [msg(f"s-{i}") for i in range(4)], UPath("memory://anthropic-submit/parts")
    )
    await end_all(emu, anthropic, run.refs)
    counts = assert_invariant(run.inputs, await run.collect())
    assert counts[ItemStatus.SUCCEEDED] == 4
