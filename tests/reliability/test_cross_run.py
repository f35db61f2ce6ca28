"""Two runs of one DAG with the same row ids and different prompts: run B is SIGKILLed right after
its first chunk's intent, then rerun. Whatever run A left at the provider, B gets only its own
answers: its wire ids are its own, and a batch is re-attached on evidence only (tags, or wire ids
once it has ended), never on size and time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import crash_submit
import pytest
from rel_support import (
    backend_for,
    base_url,
    batches_created,
    bedrock_options,
    read_lines,
    wait_until_ended,
)

from batch_provider.backends.registry import create_backend
from batch_provider.core.collection import collect_run
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger
from batch_provider.core.retry import resubmit_retryable
from batch_provider.core.rundir import run_directory

CHILD = Path(__file__).with_name("crash_submit.py")
SHAPE = {"bedrock": (30, 10)}  # rows, per batch (Bedrock jobs need 10 records in these tests)
DEFAULT_SHAPE = (10, 4)


def run_child(args: dict[str, Any]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHILD), json.dumps(args)], capture_output=True, text=True, timeout=180
    )


def child_args(provider: str, emu: Any, root: Path, run_id: str, words: str) -> dict[str, Any]:
    count, per_batch = SHAPE.get(provider, DEFAULT_SHAPE)
    args: dict[str, Any] = {
        "provider": provider,
        "run_root": str(root),
        "run_id": run_id,
        "rows": count,
        "max_requests_per_batch": per_batch,
        "text_prefix": words,
    }
    if provider == "bedrock":
        args["backend_options"] = bedrock_options(emu, f"xrun-{root.name}-{run_id}", min_records_per_job=10)
    else:
        args["base_url"] = base_url(provider, emu)
    return args


def backend_of(provider: str, emu: Any, args: dict[str, Any]) -> Any:
    if provider == "bedrock":
        return create_backend("bedrock", **args["backend_options"])
    return backend_for(provider, emu)


def run_dir_of(args: dict[str, Any]) -> Any:
    return run_directory(Path(args["run_root"]), dag_id="crash_dag", run_id=args["run_id"], group="llm")


async def collect(provider: str, emu: Any, args: dict[str, Any], handle: RunHandle) -> Any:
    async with backend_of(provider, emu, args) as backend:
        await wait_until_ended(backend, handle.batch_ids, emu)
        return await collect_run(backend, handle, run_dir_of(args))


def answers(run_dir: Any) -> dict[str, tuple[str, int]]:
    return {
        r["custom_id"]: (r["output_text"], r["usage"]["input_tokens"]) for r in read_lines(run_dir.results)
    }


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock", "gemini"])
async def test_crashed_rerun_never_takes_another_runs_answers(
    provider: str, bedrock_emulator: Any, tmp_path: Path
) -> None:
    emu = bedrock_emulator
    emu.bedrock_settings(min_records=10)
    count, per_batch = SHAPE.get(provider, DEFAULT_SHAPE)
    chunks = -(-count // per_batch)
    before = batches_created(emu, provider)

    # run A: short prompts, ends
    args_a = child_args(provider, emu, tmp_path / "a", "run_a", "alpha")
    await crash_submit.main(args_a)
    handle_a = RunHandle.model_validate_json((tmp_path / "a" / "handle.json").read_text())
    summary_a = await collect(provider, emu, args_a, handle_a)
    assert summary_a.succeeded == count

    # run B: the same row ids, long prompts; killed right after chunk 0's intent, then rerun
    args_b = child_args(provider, emu, tmp_path / "b", "run_b", "bravo " * 40)
    crashed = run_child({**args_b, "crash": "intent_written", "chunk": 0})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    await crash_submit.main(args_b)
    handle_b = RunHandle.model_validate_json((tmp_path / "b" / "handle.json").read_text())
    assert batches_created(emu, provider) - before == 2 * chunks, emu.stats()["batches_created"]
    assert not set(handle_b.batch_ids) & set(handle_a.batch_ids)
    ledger = Ledger.load(run_dir_of(args_b))
    assert ledger is not None and all(c.matched_by is None for c in ledger.attempts[1].chunks)

    summary_b = await collect(provider, emu, args_b, handle_b)
    assert summary_b.accounted and summary_b.succeeded == count and summary_b.stray_results == 0
    mine, theirs = answers(run_dir_of(args_b)), answers(run_dir_of(args_a))
    assert sorted(mine) == sorted(theirs) == [f"c-{i:04d}" for i in range(count)]
    for row_id, (text, input_tokens) in mine.items():
        assert input_tokens > theirs[row_id][1] + 30, f"{row_id} was answered for run A's prompt"
        assert text != theirs[row_id][0]


async def test_anthropic_running_candidate_of_another_run_sends_rows_to_retry(tmp_path: Path) -> None:
    """Anthropic keeps no tags: B's rerun attaches a running batch of the right size (run A's)
    unverified. At collect its answers are not B's wire ids: none is taken, B's rows of that
    chunk become retryable errors, and the retry answers them with B's own prompts."""
    from batch_provider.emulator.process import running_emulator

    with running_emulator(time_factor=1.0) as emu:
        args_a = child_args("anthropic", emu, tmp_path / "a", "run_a", "alpha")
        await crash_submit.main(args_a)
        handle_a = RunHandle.model_validate_json((tmp_path / "a" / "handle.json").read_text())

        args_b = child_args("anthropic", emu, tmp_path / "b", "run_b", "bravo " * 40)
        crashed = run_child({**args_b, "crash": "intent_written", "chunk": 0})
        assert crashed.returncode == -9, crashed.stderr[-2000:]
        await crash_submit.main(args_b)
        handle_b = RunHandle.model_validate_json((tmp_path / "b" / "handle.json").read_text())
        run_b = run_dir_of(args_b)
        ledger = Ledger.load(run_b)
        assert ledger is not None
        attached = ledger.attempts[1].chunks[0]
        assert attached.matched_by == "unverified" and attached.batch is not None
        assert attached.batch.batch_id in handle_a.batch_ids  # the only evidence there was: size and time

        summary = await collect("anthropic", emu, args_b, handle_b)
        assert summary.accounted and summary.succeeded == 6 and summary.unresolved == 4
        assert summary.stray_results == 4  # run A's four answers, counted and ignored
        errors = read_lines(run_b.errors)
        assert sorted(e["custom_id"] for e in errors) == [f"c-{i:04d}" for i in range(4)]
        assert all(e["error"]["retryable"] and e["error"]["type"] == "missing_result" for e in errors)

        key = ledger.run_key
        async with backend_for("anthropic", emu) as backend:
            retry = await resubmit_retryable(backend, handle_b, run_b, run_key=key, max_attempts=3)
            assert retry is not None and retry.counts.submitted == 4
            await wait_until_ended(backend, retry.batch_ids, emu)
            final = await collect_run(backend, retry, run_b)
        assert final.accounted and final.succeeded == 10 and final.unresolved == 0
        assert all(tokens > 60 for _, tokens in answers(run_b).values())
