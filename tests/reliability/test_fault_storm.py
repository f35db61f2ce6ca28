"""The whole lifecycle (submit → watch → collect → retry → dead letter) while 30 % of all API
calls fail (429 with Retry-After, 500, 503, 529, dropped and reset connections), with per-item
errors and one expiring batch, for each provider: every input row ends in exactly one of
results, dead letter and rejects; no id twice; one batch per ledger chunk; the manifest adds up;
retried rows recover from transient item errors, never from a permanent one.

A step that fails because the provider stayed unreachable is run again, as Airflow retries a
task: each step must be safe to repeat."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from rel_support import (
    MODELS,
    assert_every_row_once,
    backend_for,
    batches_created,
    bedrock_options,
    read_lines,
)

from batch_provider.core.collection import collect_run
from batch_provider.core.errors import BatchProviderError
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches

T = TypeVar("T")
TASK_TRIES = 10

STORM = {
    "fault_rate": 0.3,
    "fault_kinds": ["429", "500", "503", "529", "drop", "reset"],
    "fault_routes": ["*"],
    "retry_after": 1,
    "batch_faults": "item_errors=0.15:500/429",
}


async def as_task(step: Callable[[], Awaitable[T]], tries: list[str]) -> T:
    """Run ``step`` like an Airflow task with retries: a provider error fails the try."""
    for _ in range(TASK_TRIES):
        try:
            return await step()
        except BatchProviderError as exc:
            tries.append(f"{type(exc).__name__}: {exc}")
    raise AssertionError(f"step still failing after {TASK_TRIES} tries: {tries[-3:]}")


def storm_rows() -> list[dict[str, Any]]:
    data = [{"id": f"s-{i:04d}", "text": f"storm row {i} " + "word " * (i % 6)} for i in range(44)]
    data[0]["id"] = "emu-expire-s-0000"  # the first chunk's batch expires with half of it done
    data[0]["text"] += " [[emu:expire]]"  # the directive reaches the wire in the text
    data[5]["id"] = "emu-fail400-s-0005"  # refused by the provider: never retried, dead letter
    data[5]["text"] += " [[emu:fail400]]"  # the directive reaches the wire in the text
    del data[7]["text"]  # the template cannot render it: rejected before paying
    del data[31]["text"]
    data.append({"id": "s-0002", "text": "a duplicate id"})  # rejected as a duplicate
    return data


@pytest.fixture
def storm_emulator(request: Any) -> Any:
    if request.param == "bedrock":
        emu = request.getfixturevalue("bedrock_emulator")
        emu.bedrock_settings(min_records=1)
        yield emu
        emu.clear_faults()
        emu.bedrock_settings(min_records=100)
    else:
        yield request.getfixturevalue("fresh_emulator")


def storm_backend(provider: str, emulator: Any, prefix: str) -> Any:
    if provider != "bedrock":
        return backend_for(provider, emulator)
    from batch_provider.backends.bedrock.aws import AwsRetryPolicy
    from batch_provider.backends.registry import create_backend

    policy = AwsRetryPolicy(connect_timeout=5.0, read_timeout=30.0, max_attempts=10)
    return create_backend(
        "bedrock", **bedrock_options(emulator, prefix, min_records_per_job=1, policy=policy)
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("provider", "storm_emulator"),
    [("openai", "openai"), ("anthropic", "anthropic"), ("bedrock", "bedrock")],
    indirect=["storm_emulator"],
)
async def test_fault_storm_full_lifecycle_loses_nothing_and_pays_once(
    provider: str, storm_emulator: Any, tmp_path: Path
) -> None:
    emulator = storm_emulator
    created_before = batches_created(emulator, provider)
    faults_before = emulator.stats()["faults"]
    data = storm_rows()
    input_ids = [r["id"] for r in data[:-1]] + ["s-0002"]  # the duplicate is a reject of its own
    run_dir = run_directory(tmp_path, dag_id="storm", run_id=f"storm__{provider}", group="llm")
    key = RunKey(dag_id="storm", task_id="llm.submit", run_id=f"storm__{provider}")
    builder = RequestBuilder(template="Classify: {{ text }}", model=MODELS[provider], max_tokens=32)
    emulator.set_faults(STORM)
    tries: list[str] = []

    async with storm_backend(provider, emulator, f"storm-{tmp_path.name}") as backend:

        async def submit() -> Any:
            return await submit_run(
                backend,
                builder.render(iter_list(data)),
                run_dir,
                run_key=key,
                conn_id="c",
                max_requests_per_batch=10,
                # Bedrock reads per-job faults from a job tag, not from custom_ids: the first
                # attempt's jobs run out of time with half done, and more of that half errors than
                # the server-wide rate alone gives, so one retryable error at least is all but sure
                tags={"emu_faults": "expire=0.5 item_errors=0.3:500/429"} if provider == "bedrock" else None,
            )

        handle = await as_task(submit, tries)
        assert handle.counts.inputs == 45 and handle.counts.rejected == 3
        for _ in range(3):
            emulator.advance(2 * 86400)

            async def wait(h: Any = handle) -> Any:
                return await watch_batches(
                    backend, h.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.3
                )

            await as_task(wait, tries)

            async def collect(h: Any = handle) -> Any:
                return await collect_run(backend, h, run_dir)

            summary = await as_task(collect, tries)
            assert summary.accounted, summary

            async def retry(h: Any = handle) -> Any:
                return await resubmit_retryable(backend, h, run_dir, run_key=key, max_attempts=3)

            nxt = await as_task(retry, tries)
            if nxt is None:
                break
            handle = nxt
        final = write_dead_letter(backend, run_dir)

    emulator.clear_faults()
    stats = emulator.stats()
    faults = {k: v - faults_before.get(k, 0) for k, v in stats["faults"].items()}
    assert sum(v for k, v in faults.items() if k.startswith("http_")) >= 10, (
        f"the storm hardly happened: {faults}"
    )
    first_errors = read_lines(run_dir.attempt_errors(1))
    assert any(r["status"] == "expired" for r in first_errors), "no batch expired in the first attempt"
    assert any(r["status"] == "errored" and r["error"]["retryable"] for r in first_errors)

    manifest = assert_every_row_once(run_dir, input_ids, final=True)
    assert final.finished and final.attempts >= 2
    assert manifest["succeeded"] > 0
    dead = {r["custom_id"]: r for r in read_lines(run_dir.dead_letter)}
    assert "emu-fail400-s-0005" in dead and dead["emu-fail400-s-0005"]["error"]["retryable"] is False
    rejects = {r["custom_id"] for r in read_lines(run_dir.rejects)}
    assert {"s-0007", "s-0031", "s-0002"} <= rejects
    results = read_lines(run_dir.results)
    assert "s-0002" in {r["custom_id"] for r in results}, "the original of the duplicate id was lost"
    # item errors stay on for every attempt: the retried 429/500 rows recover (transient), the
    # 400 row does not (permanent)
    item_failed = {
        r["custom_id"] for r in first_errors if r["status"] == "errored" and r["error"]["retryable"]
    }
    recovered = {r["custom_id"] for r in results if r["attempt"] >= 2} & item_failed
    assert len(recovered) > 0, (sorted(item_failed), faults)
    assert dead.keys().isdisjoint(recovered)

    # one batch per ledger chunk: nothing paid twice despite dropped creates and task retries
    ledger = Ledger.load(run_dir)
    assert ledger is not None
    recorded = ledger.all_batches()
    assert len({b.batch_id for b in recorded}) == len(recorded)
    assert (
        batches_created(emulator, provider) - created_before
        == len(recorded)
        == sum(len(a.chunks) for a in ledger.attempts.values())
    ), (stats["batches_created"], [b.batch_id for b in recorded], tries)
