"""SIGKILL the submitting process at every step of submit, rerun it, and check that each chunk
has exactly one batch at the provider and that every row comes back after wait + collect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import crash_submit
import pytest
from rel_support import backend_for, base_url, batches_created, bedrock_options, read_lines, wait_until_ended

from batch_provider.core.collection import collect_run
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger
from batch_provider.core.rundir import run_directory

CHILD = Path(__file__).with_name("crash_submit.py")
ROWS = 10
PER_BATCH = 4  # chunks of 4, 4 and 2 requests
CHUNKS = 3

POINTS = {
    "openai": [
        ("requests_written", 0),
        ("intent_written", 1),
        ("file_uploaded", 1),
        ("batch_created", 1),
        ("ledger_written", 1),
        ("xcom_pushed", 0),
    ],
    "anthropic": [
        ("requests_written", 0),
        ("intent_written", 1),
        ("batch_created", 1),
        ("batch_created", 2),
        ("ledger_written", 1),
        ("xcom_pushed", 0),
    ],
}
CASES = [(provider, point, chunk) for provider, points in POINTS.items() for point, chunk in points]


def run_child(args: dict[str, Any]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHILD), json.dumps(args)], capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize(("provider", "point", "chunk"), CASES, ids=[f"{p}-{c}-{k}" for p, c, k in CASES])
async def test_crash_at_each_submit_step_then_rerun_pays_once(
    provider: str, point: str, chunk: int, fresh_emulator: Any, tmp_path: Path
) -> None:
    emulator = fresh_emulator
    args = {
        "provider": provider,
        "base_url": base_url(provider, emulator),
        "run_root": str(tmp_path),
        "run_id": f"crash__{point}_{chunk}",
        "rows": ROWS,
        "max_requests_per_batch": PER_BATCH,
        "crash": point,
        "chunk": chunk,
    }
    crashed = run_child(args)
    assert crashed.returncode == -9, f"the child did not die at {point}: {crashed.stderr[-2000:]}"
    created_before_rerun = batches_created(emulator, provider)
    assert created_before_rerun <= CHUNKS

    # the rerun (the task's next try), in this process, with no crash
    await crash_submit.main({**args, "crash": None})
    handle = RunHandle.model_validate_json((tmp_path / "handle.json").read_text())

    # one batch per chunk at the provider, whatever the crash point
    assert batches_created(emulator, provider) == CHUNKS, emulator.stats()
    assert len(handle.batch_ids) == CHUNKS == len(set(handle.batch_ids))
    run_dir = run_directory(tmp_path, dag_id="crash_dag", run_id=args["run_id"], group="llm")
    ledger = Ledger.load(run_dir)
    assert ledger is not None
    assert [c.request_count for c in ledger.attempts[1].chunks] == [4, 4, 2]
    assert all(c.batch is not None for c in ledger.attempts[1].chunks)

    async with backend_for(provider, emulator) as backend:
        await wait_until_ended(backend, handle.batch_ids, emulator)
        summary = await collect_run(backend, handle, run_dir)
    assert summary.accounted and summary.succeeded == ROWS and summary.unresolved == 0
    ids = sorted(r["custom_id"] for r in read_lines(run_dir.results))
    assert ids == [f"c-{i:04d}" for i in range(ROWS)]


BEDROCK_POINTS = [
    ("requests_written", 0),
    ("intent_written", 1),
    ("file_uploaded", 1),
    ("batch_created", 1),
    ("ledger_written", 1),
    ("xcom_pushed", 0),
]


@pytest.mark.parametrize(
    ("point", "chunk"), BEDROCK_POINTS, ids=[f"bedrock-{p}-{c}" for p, c in BEDROCK_POINTS]
)
async def test_bedrock_crash_at_each_submit_step_then_rerun_pays_once(
    point: str, chunk: int, bedrock_emulator: Any, tmp_path: Path
) -> None:
    from batch_provider.backends.registry import create_backend

    emu = bedrock_emulator
    prefix = f"{point}-{chunk}"
    emu.bedrock_settings(min_records=10)
    options = bedrock_options(emu, prefix, min_records_per_job=10)
    args = {
        "provider": "bedrock",
        "backend_options": options,
        "run_root": str(tmp_path),
        "run_id": f"crash__{prefix}",
        "rows": 30,
        "max_requests_per_batch": 10,
        "crash": point,
        "chunk": chunk,
    }
    before = batches_created(emu, "bedrock")
    crashed = run_child(args)
    assert crashed.returncode == -9, f"the child did not die at {point}: {crashed.stderr[-2000:]}"
    await crash_submit.main({**args, "crash": None})
    handle = RunHandle.model_validate_json((tmp_path / "handle.json").read_text())
    assert batches_created(emu, "bedrock") - before == 3, emu.stats()
    assert len(set(handle.batch_ids)) == 3
    run_dir = run_directory(tmp_path, dag_id="crash_dag", run_id=args["run_id"], group="llm")
    async with create_backend("bedrock", **options) as backend:
        emu.advance(2 * 86400)
        await wait_until_ended(backend, handle.batch_ids, emu, advance=False)
        summary = await collect_run(backend, handle, run_dir)
    assert summary.accounted and summary.succeeded == 30 and summary.unresolved == 0
    assert sorted(r["custom_id"] for r in read_lines(run_dir.results)) == [f"c-{i:04d}" for i in range(30)]


RETRY_POINTS = [("requests_written", 0), ("intent_written", 1), ("batch_created", 1), ("ledger_written", 1)]
# OpenAI re-attaches by tags exactly as in the submit task; Anthropic's size matching is the risk
RETRY_CASES = [("openai", "batch_created", 1)] + [("anthropic", c, k) for c, k in RETRY_POINTS]


@pytest.mark.parametrize(
    ("provider", "point", "chunk"), RETRY_CASES, ids=[f"retry-{p}-{c}-{k}" for p, c, k in RETRY_CASES]
)
async def test_crash_in_the_retry_task_then_rerun_pays_once(
    provider: str, point: str, chunk: int, fresh_emulator: Any, tmp_path: Path
) -> None:
    """The same for the retry task: attempt 2 (two retryable rows per chunk, so every attempt-2
    chunk has the same size) gets exactly one batch per chunk however the task died."""
    emulator = fresh_emulator
    emulator.set_faults({"item_recovery": 0})  # the emu-fail500 rows fail on every attempt
    args = {
        "provider": provider,
        "base_url": base_url(provider, emulator),
        "run_root": str(tmp_path),
        "run_id": f"retry__{point}_{chunk}",
        "rows": 12,
        "max_requests_per_batch": 4,
        "flaky_rows": [0, 1, 4, 5, 8, 9],
        "crash": None,
    }
    await crash_submit.main(args)  # attempt 1, in this process
    first = RunHandle.model_validate_json((tmp_path / "handle.json").read_text())
    run_dir = run_directory(tmp_path, dag_id="crash_dag", run_id=args["run_id"], group="llm")
    async with backend_for(provider, emulator) as backend:
        await wait_until_ended(backend, first.batch_ids, emulator)
        collected = await collect_run(backend, first, run_dir)
    assert collected.retryable == 6 and batches_created(emulator, provider) == 3

    crashed = run_child({**args, "phase": "retry", "crash": point, "chunk": chunk})
    assert crashed.returncode == -9, f"the child did not die at {point}: {crashed.stderr[-2000:]}"
    await crash_submit.retry_main({**args, "phase": "retry"})
    retry = RunHandle.model_validate_json((tmp_path / "retry_handle.json").read_text())
    assert retry.attempt == 2 and retry.counts.submitted == 6
    assert batches_created(emulator, provider) == 3 + 3, emulator.stats()["batches_created"]
    ledger = Ledger.load(run_dir)
    assert [c.request_count for c in ledger.attempts[2].chunks] == [2, 2, 2]
    assert len({c.batch.batch_id for c in ledger.attempts[2].chunks}) == 3
    async with backend_for(provider, emulator) as backend:
        await wait_until_ended(backend, retry.batch_ids, emulator)
        second = await collect_run(backend, retry, run_dir)
    # the emu-fail500 rows fail again: 6 succeeded in attempt 1, 6 unresolved after attempt 2
    assert second.accounted and second.succeeded == 6 and second.unresolved == 6
    assert {r["custom_id"] for r in read_lines(run_dir.attempt_errors(2))} == {
        f"emu-fail500-c-{i:04d}" for i in args["flaky_rows"]
    }
