"""Submit → wait → collect → retry without Airflow, over real HTTP against the emulator.

Each test checks the run invariant: every input row is in exactly one of results, errors/dead
letter and rejects, and the manifest's counts say so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from run_support import part_text

from batch_provider.backends.registry import create_backend
from batch_provider.core.cache import ResultCache
from batch_provider.core.collection import collect_run
from batch_provider.core.intake import intake
from batch_provider.core.ledger import Ledger, LedgerConflictError, RunKey
from batch_provider.core.models import LLMRequest, Message
from batch_provider.core.pricing import default_price_table
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import BudgetExceededError, handle_for, submit_pending, submit_run
from batch_provider.core.watch import watch_batches

MODELS = {"openai": "gpt-6-luna", "anthropic": "claude-haiku-4-5"}
USER = Message(role="user", content="hello")


def backend_for(provider: str, emulator: Any):
    base = f"{emulator.base_url}/v1" if provider == "openai" else emulator.base_url
    return create_backend(provider, api_key="test-key", base_url=base)


def rows(count: int, *, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i:04d}", "text": f"ticket number {i} " * (1 + i % 5)} for i in range(count)]


def builder(provider: str) -> RequestBuilder:
    return RequestBuilder(template="Classify: {{ text }}", model=MODELS[provider], max_tokens=64)


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def packed_only(folder: Any) -> bool:
    """Whether a requests folder holds part files and sidecars, all packed."""
    names = [p.name for p in Path(str(folder)).iterdir()]
    return bool(names) and all(name.endswith(".gz") for name in names)


def batches_created(emulator: Any, provider: str) -> int:
    return int(emulator.stats().get("batches_created", {}).get(provider, 0))


async def submit_rows(
    backend: Any, provider: str, data: list[dict[str, Any]], run_dir: Any, key: RunKey, **options: Any
) -> Any:
    items = builder(provider).render(iter_list(data))
    return await submit_run(backend, items, run_dir, run_key=key, conn_id=None, **options)


async def wait_all(backend: Any, handle: Any, emulator: Any) -> None:
    emulator.advance(2 * 86400)
    await watch_batches(
        backend, handle.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.2
    )


def assert_accounted(run_dir: Any, inputs: int) -> dict[str, Any]:
    manifest = json.loads(run_dir.manifest.read_text())
    results = read_lines(run_dir.results)
    errors = read_lines(run_dir.errors)
    rejects = read_lines(run_dir.rejects)
    assert len(results) + len(errors) + len(rejects) == inputs, "an input row is missing or counted twice"
    sent = [r["custom_id"] for r in results + errors]
    assert len(sent) == len(set(sent)), "a sent request has two outcomes"
    assert manifest["inputs"] == inputs
    assert manifest["succeeded"] == len(results)
    assert manifest["unresolved"] == len(errors)
    assert manifest["rejected"] == len(rejects)
    assert manifest["accounted"] is True
    return manifest


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_run_end_to_end_with_rejects_item_errors_and_chunks(
    provider: str, emulator: Any, tmp_path: Path
) -> None:
    data = rows(23)
    data[3]["id"] = "emu-fail400-bad"  # refused by the provider, not retryable
    data[3]["text"] += " [[emu:fail400]]"  # the directive reaches the wire in the text
    data[5]["id"] = "emu-fail500-flaky"  # a server error on one item: retryable
    data[5]["text"] += " [[emu:fail500]]"  # the directive reaches the wire in the text
    del data[7]["text"]  # the template cannot render this row: rejected before paying
    data.append({"id": data[0]["id"], "text": "a duplicate id"})  # rejected as a duplicate
    run_dir = run_directory(tmp_path, dag_id="d", run_id=f"manual__{provider}", group="g")
    key = RunKey(dag_id="d", task_id="submit", run_id=f"manual__{provider}")
    before = batches_created(emulator, provider)
    async with backend_for(provider, emulator) as backend:
        handle = await submit_run(
            backend,
            builder(provider).render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id="c",
            max_requests_per_batch=10,
        )
        assert handle.counts.inputs == 24 and handle.counts.rejected == 2 and handle.counts.submitted == 22
        assert len(handle.batches) == 3
        assert batches_created(emulator, provider) - before == 3
        await wait_all(backend, handle, emulator)
        summary = await collect_run(backend, handle, run_dir)
    manifest = assert_accounted(run_dir, 24)
    assert summary.succeeded == 20 and summary.unresolved == 2 and summary.retryable == 1
    assert manifest["usage"]["input_tokens"] > 0 and manifest["usage"]["output_tokens"] > 0
    assert manifest["cost"]["batch_usd"] > 0
    assert manifest["cost"]["savings_usd"] == pytest.approx(manifest["cost"]["batch_usd"])
    rejects = {r["custom_id"]: r for r in read_lines(run_dir.rejects)}
    assert rejects["t-0007"]["error"]["field"] == "prompt_template"
    assert rejects["t-0007"]["row"] == 8
    errors = {r["custom_id"]: r for r in read_lines(run_dir.errors)}
    assert errors["emu-fail400-bad"]["error"]["retryable"] is False
    assert errors["emu-fail500-flaky"]["error"]["retryable"] is True


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_rerun_reattaches_and_other_input_is_refused(
    provider: str, emulator: Any, tmp_path: Path
) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="r1")
    key = RunKey(dag_id="d", task_id="submit", run_id="r1")
    before = batches_created(emulator, provider)
    async with backend_for(provider, emulator) as backend:
        first = await submit_rows(backend, provider, rows(12), run_dir, key, max_requests_per_batch=5)
        again = await submit_rows(backend, provider, rows(12), run_dir, key, max_requests_per_batch=5)
        assert again.batch_ids == first.batch_ids
        assert batches_created(emulator, provider) - before == 3
        with pytest.raises(LedgerConflictError, match="different input"):
            await submit_rows(backend, provider, rows(13), run_dir, key, max_requests_per_batch=5)
        with pytest.raises(LedgerConflictError, match="ledger of"):
            await submit_rows(
                backend,
                provider,
                rows(12),
                run_dir,
                key.model_copy(update={"task_id": "other"}),
                max_requests_per_batch=5,
            )
    assert batches_created(emulator, provider) - before == 3


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_crash_between_create_and_ledger_write_reattaches(
    provider: str, emulator: Any, tmp_path: Path
) -> None:
    """The provider accepted a batch but the ledger never heard of it: the rerun finds it."""
    run_dir = run_directory(tmp_path, dag_id="d", run_id="crash")
    key = RunKey(dag_id="d", task_id="submit", run_id="crash")
    before = batches_created(emulator, provider)
    async with backend_for(provider, emulator) as backend:
        first = await submit_rows(backend, provider, rows(8), run_dir, key, max_requests_per_batch=4)
        ledger = Ledger.load(run_dir)
        assert ledger is not None
        lost = ledger.attempts[1].chunks[1]
        assert lost.intent_at is not None
        lost.batch = None  # as if the process died right after the create call returned
        ledger.save(run_dir)
        claim_path = run_dir.chunk_claim(1, 1)
        claim = json.loads(claim_path.read_text())
        claim["batch"] = None  # its claim never got the batch either; its owner is gone
        claim_path.write_text(json.dumps(claim))
        again = await submit_rows(backend, provider, rows(8), run_dir, key, max_requests_per_batch=4)
    assert sorted(again.batch_ids) == sorted(first.batch_ids)
    assert batches_created(emulator, provider) - before == 2
    matched = Ledger.load(run_dir).attempts[1].chunks[1].matched_by
    # Anthropic keeps no tags: a running batch of the chunk's size is attached, checked at collect
    assert matched == ("tags" if provider == "openai" else "unverified")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_retry_recovers_transient_failures_and_dead_letters_the_rest(
    provider: str, fresh_emulator: Any, tmp_path: Path
) -> None:
    emulator = fresh_emulator
    data = rows(30)
    data[2]["id"] = "emu-fail422-never"
    data[2]["text"] += " [[emu:fail422]]"  # the directive reaches the wire in the text
    run_dir = run_directory(tmp_path, dag_id="d", run_id="retry")
    key = RunKey(dag_id="d", task_id="submit", run_id="retry")
    emulator.set_faults({"batch_faults": "item_errors=0.3:500/529,expire=0.6"})
    async with backend_for(provider, emulator) as backend:
        handle = await submit_rows(backend, provider, data, run_dir, key)
        assert packed_only(run_dir.requests_dir(1)), "every batch exists: its part is packed"
        await wait_all(backend, handle, emulator)
        first = await collect_run(backend, handle, run_dir)
        assert first.retryable > 0 and first.accounted
        # the item errors go on for every attempt (the expiry does not): retried rows that met a
        # transient error recover, as the emulator makes 429/5xx item errors transient
        emulator.set_faults({"batch_faults": "item_errors=0.3:500/529"})
        retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=3)
        assert retry is not None and retry.attempt == 2
        assert retry.counts.submitted == first.retryable
        assert packed_only(run_dir.requests_dir(2)), "made from attempt 1's packed parts, then packed"
        again = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=3)
        assert again is not None and again.batch_ids == retry.batch_ids, "a rerun of the retry re-attaches"
        await wait_all(backend, retry, emulator)
        second = await collect_run(backend, retry, run_dir)
        assert second.attempts == 2 and second.retryable < first.retryable
        last: Any = retry
        while nxt := await resubmit_retryable(backend, last, run_dir, run_key=key, max_attempts=3):
            await wait_all(backend, nxt, emulator)
            await collect_run(backend, nxt, run_dir)
            last = nxt
        final = write_dead_letter(backend, run_dir)
    manifest = assert_accounted(run_dir, 30)
    item_failed = {
        r["custom_id"]
        for r in read_lines(run_dir.attempt_errors(1))
        if r["status"] == "errored" and r["error"]["retryable"]
    }
    recovered = {r["custom_id"] for r in read_lines(run_dir.results) if r["attempt"] >= 2} & item_failed
    assert item_failed and len(recovered) > 0, item_failed
    dead = {r["custom_id"]: r for r in read_lines(run_dir.dead_letter)}
    assert final.finished and manifest["dead_letter"] == len(dead) == manifest["unresolved"]
    assert dead["emu-fail422-never"]["error"]["retryable"] is False, "a permanent error stays"
    assert dead.keys().isdisjoint(recovered)
    assert {r["attempt"] for r in read_lines(run_dir.results)} >= {1, 2}


async def test_budget_cap_stops_submit_before_any_paid_call(emulator: Any, tmp_path: Path) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="budget")
    key = RunKey(dag_id="d", task_id="submit", run_id="budget")
    before = batches_created(emulator, "openai")
    async with backend_for("openai", emulator) as backend:
        with pytest.raises(BudgetExceededError, match=r"over max_cost_usd=\$0\.0000.*nothing was sent"):
            await submit_rows(backend, "openai", rows(40), run_dir, key, max_cost_usd=0.00001)
    assert batches_created(emulator, "openai") == before
    ledger = Ledger.load(run_dir)
    assert ledger is not None and all(c.intent_at is None for c in ledger.attempts[1].chunks)
    estimate = ledger.attempts[1].estimate
    assert estimate["ceiling"]["batch_usd"] >= estimate["expected"]["batch_usd"] > 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_unchanged_input_costs_nothing_the_second_time(
    provider: str, emulator: Any, tmp_path: Path
) -> None:
    """A new run over rows answered before is served from the result cache: zero batches."""
    cache = ResultCache(tmp_path / "cache")
    data = rows(15)
    data[4]["id"] = "emu-fail400-never-cached"
    data[4]["text"] += " [[emu:fail400]]"  # the directive reaches the wire in the text
    summaries = []
    before = batches_created(emulator, provider)
    async with backend_for(provider, emulator) as backend:
        for run_id in ("first", "second"):
            run_dir = run_directory(tmp_path / "runs", dag_id="d", run_id=run_id)
            key = RunKey(dag_id="d", task_id="submit", run_id=run_id)
            handle = await submit_rows(backend, provider, data, run_dir, key, cache=cache)
            await wait_all(backend, handle, emulator)
            summaries.append((handle, await collect_run(backend, handle, run_dir, cache=cache)))
            assert_accounted(run_dir, 15)
    (first_handle, first), (second_handle, second) = summaries
    assert len(first_handle.batches) == 1 and first.cached == 0
    assert len(second_handle.batches) == 1 and second_handle.counts.submitted == 1, (
        "only the failure is resent"
    )
    assert second.cached == 14 and second.succeeded == 14 and second.unresolved == 1
    assert second.cache_savings_usd > 0
    assert batches_created(emulator, provider) - before == 2


async def test_estimate_is_within_twenty_percent_once_history_exists(emulator: Any, tmp_path: Path) -> None:
    errors = []
    async with backend_for("anthropic", emulator) as backend:
        for run_id in ("day1", "day2"):
            run_dir = run_directory(tmp_path, dag_id="nightly", run_id=run_id)
            key = RunKey(dag_id="nightly", task_id="submit", run_id=run_id)
            data = rows(60, prefix=run_id)
            handle = await submit_rows(backend, "anthropic", data, run_dir, key)
            await wait_all(backend, handle, emulator)
            summary = await collect_run(backend, handle, run_dir)
            errors.append(summary.estimate_error_pct)
            assert (
                json.loads(run_dir.manifest.read_text())["estimate_error_pct"] == summary.estimate_error_pct
            )
    first, second = errors
    assert first is not None and second is not None
    assert abs(second) <= 20, f"estimate off by {second}% with history (first run: {first}%)"


async def test_unknown_models_and_absurd_max_tokens_are_rejected_before_paying(
    emulator: Any, tmp_path: Path
) -> None:
    items = [
        LLMRequest(custom_id="known", model="gpt-6-luna-2026-09-22", max_tokens=10, messages=[USER]).at_row(
            1
        ),
        LLMRequest(custom_id="unknown", model="gpt-does-not-exist-9", max_tokens=10, messages=[USER]).at_row(
            2
        ),
        LLMRequest(custom_id="huge", model="gpt-6-luna", max_tokens=10_000_000, messages=[USER]).at_row(3),
    ]
    async with backend_for("openai", emulator) as backend:
        run_dir = run_directory(tmp_path, dag_id="d", run_id="models")
        handle = await submit_run(
            backend, items, run_dir, run_key=RunKey(dag_id="d", task_id="s", run_id="m"), conn_id=None
        )
        rejects = {r["custom_id"]: r for r in read_lines(run_dir.rejects)}
        assert handle.counts.submitted == 1 and set(rejects) == {"unknown", "huge"}
        assert rejects["unknown"]["error"]["field"] == "model" and rejects["unknown"]["row"] == 2
        assert (
            rejects["huge"]["error"]["field"] == "max_tokens"
            and "10000000" in rejects["huge"]["error"]["message"]
        )
        allowed_dir = run_directory(tmp_path, dag_id="d", run_id="allowed")
        allowed = await submit_run(
            backend,
            items[:2],
            allowed_dir,
            run_key=RunKey(dag_id="d", task_id="s", run_id="a"),
            conn_id=None,
            allow_unknown_models=True,
        )
        assert allowed.counts.submitted == 2 and allowed.counts.rejected == 0


async def test_duplicate_custom_ids_never_mix_cached_answers(emulator: Any, tmp_path: Path) -> None:
    """With a result cache, the first item of a custom_id is the one kept, whether the cache answers
    it or it is sent; a later duplicate is rejected and never stores or receives another prompt's
    answer."""
    cache = ResultCache(tmp_path / "cache")
    first_prompt = {"id": "dup", "text": "the parcel arrived broken"}
    second_prompt = {"id": "dup", "text": "the refund came quickly"}
    outcomes = []
    async with backend_for("openai", emulator) as backend:
        for run_id, data in (
            ("sent-then-duplicate", [first_prompt, second_prompt]),
            ("second-prompt-alone", [second_prompt]),
            ("hit-then-duplicate", [first_prompt, second_prompt]),
        ):
            run_dir = run_directory(tmp_path / "runs", dag_id="d", run_id=run_id)
            key = RunKey(dag_id="d", task_id="submit", run_id=run_id)
            handle = await submit_rows(backend, "openai", data, run_dir, key, cache=cache)
            await wait_all(backend, handle, emulator)
            summary = await collect_run(backend, handle, run_dir, cache=cache)
            assert_accounted(run_dir, len(data))
            outcomes.append((handle, summary, read_lines(run_dir.rejects)))
    (_, first, first_rejects), (second_handle, second, _), (third_handle, third, third_rejects) = outcomes
    assert first.succeeded == 1 and [r["error"]["field"] for r in first_rejects] == ["custom_id"]
    assert second.cached == 0 and second_handle.counts.submitted == 1, (
        "the second prompt was never answered, so it must be sent, not served another prompt's answer"
    )
    assert third.cached == 1 and third_handle.batches == [] and len(third_rejects) == 1


# A run folder written before wire ids (row ids on the wire, sidecars without the header, no
# claims) still collects, and its retry sends the retryable rows under new wire ids that map back
# to the same row ids.
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_folder_from_before_wire_ids_collects_and_retries(
    provider: str, emulator: Any, tmp_path: Path
) -> None:
    data = rows(6)
    data[2]["text"] += " [[emu:fail500]]"  # retryable in attempt 1
    run_dir = run_directory(tmp_path, dag_id="d", run_id="legacy")
    key = RunKey(dag_id="d", task_id="submit", run_id="legacy")
    async with backend_for(provider, emulator) as backend:
        first = intake(
            backend,
            builder(provider).render(iter_list(data)),
            run_dir,
            cache=None,
            prices=default_price_table(),
            max_requests_per_batch=4,
            max_bytes_per_batch=None,
            allow_unknown_models=False,
        )
        ledger = Ledger(run_key=key, provider=backend.provider, attempts={1: first})
        ledger.save(run_dir)
        await submit_pending(backend, ledger, run_dir, attempt=1, tags={})
        shutil.rmtree(Path(str(run_dir.claims_dir)))  # the old layout had no claims
        part = Path(str(run_dir.root / first.chunks[0].part))
        assert json.loads(part_text(part).splitlines()[0])["custom_id"] == "t-0000"  # a row id on the wire
        handle = handle_for(Ledger.load(run_dir), run_dir, attempt=1, conn_id=None)
        await wait_all(backend, handle, emulator)
        summary = await collect_run(backend, handle, run_dir)
        assert summary.accounted and summary.succeeded == 5 and summary.retryable == 1

        retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=3)
        assert retry is not None and retry.counts.submitted == 1
        sent = part_text(run_dir.root / Ledger.load(run_dir).attempts[2].chunks[0].part)
        assert "t-0002" not in sent and '"bp' in sent  # the retry travels under a wire id
        await wait_all(backend, retry, emulator)
        second = await collect_run(backend, retry, run_dir)
    assert second.accounted and second.inputs == 6
    # The fault follows the text to the retry, where the transient 500 may recover (item_recovery):
    # either way the row is answered under its own id, once.
    results = [json.loads(line)["custom_id"] for line in Path(str(run_dir.results)).read_text().splitlines()]
    errors = [json.loads(line) for line in Path(str(run_dir.errors)).read_text().splitlines()]
    assert sorted(results + [e["custom_id"] for e in errors]) == [f"t-{i:04d}" for i in range(6)]
    assert all(e["custom_id"] == "t-0002" and e["error"]["retryable"] for e in errors)
