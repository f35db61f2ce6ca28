"""Structured output on every provider, on the wire: a pydantic type in, validated instances out;
answers the emulator makes invalid land in ``invalid_output``, are resent once, and every row
still ends in exactly one file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel
from rel_support import assert_every_row_once, backend_for, bedrock_options, read_lines, wait_until_ended
from run_support import sent_requests

from batch_provider.backends.registry import create_backend
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.output_type import output_spec, save_output_spec
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.results import load_results

MODELS = {
    "openai": "gpt-6-luna",
    "anthropic": "claude-haiku-4-5",
    "bedrock": "anthropic.claude-haiku-4-5-20251001-v1:0",
    "gemini": "gemini-2.5-flash",
}


class Ticket(BaseModel):
    category: Literal["billing", "bug", "other"]
    urgent: bool
    summary: str


def _backend(provider: str, emu: Any, name: str) -> Any:
    if provider == "bedrock":
        return create_backend("bedrock", **bedrock_options(emu, f"so-{name}", min_records_per_job=1))
    return backend_for(provider, emu)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock", "gemini"])
async def test_pydantic_output_validated_invalid_answers_resent_once(
    provider: str, bedrock_emulator: Any, tmp_path: Path
) -> None:
    emu = bedrock_emulator
    before = emu.bedrock_settings()
    emu.bedrock_settings(min_records=1)
    data = [{"id": f"t-{n:02d}", "text": f"ticket {n} [[emu:invalid50]]"} for n in range(20)]
    run_dir = run_directory(tmp_path, dag_id="so", run_id=f"so__{provider}")
    key = RunKey(dag_id="so", task_id="submit", run_id=f"so__{provider}")
    spec = output_spec(Ticket)
    save_output_spec(run_dir.root, spec)
    builder = RequestBuilder(
        template="Classify: {{ text }}",
        model=MODELS[provider],
        max_tokens=400,
        response_schema=spec.json_schema,
    )
    try:
        async with _backend(provider, emu, tmp_path.name) as backend:
            items = builder.render(iter_list(data))
            handle = await submit_run(backend, items, run_dir, run_key=key, conn_id=None)
            await wait_until_ended(backend, handle.batch_ids, emu)
            first = await collect_run(backend, handle, run_dir)
            invalid = read_lines(run_dir.attempt_errors(1))
            assert invalid and all(r["status"] == "invalid_output" for r in invalid)
            assert first.invalid_output == len(invalid) == first.unresolved_by_status["invalid_output"]
            assert all(r["error"]["retryable"] and r["error"]["details"] for r in invalid)
            assert all(r.get("output_text") for r in invalid), "the raw answer is kept"
            kinds = {r["error"]["type"] for r in invalid}
            assert kinds <= {"invalid_json_output", "output_validation"}

            retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=3)
            assert retry is not None and retry.counts.submitted == len(invalid)
            await wait_until_ended(backend, retry.batch_ids, emu)
            second = await collect_run(backend, retry, run_dir)
            again = read_lines(run_dir.attempt_errors(2))
            assert all(not r["error"]["retryable"] for r in again), "resent once, not twice"
            assert all("retry_invalid_output=1" in r["error"]["message"] for r in again)
            assert second.succeeded == 20 - len(again)
            assert await resubmit_retryable(backend, retry, run_dir, run_key=key, max_attempts=3) is None
            write_dead_letter(backend, run_dir)
    finally:
        emu.bedrock_settings(min_records=before.get("min_records", 100))
    manifest = assert_every_row_once(run_dir, [d["id"] for d in data], final=True)
    dead = read_lines(run_dir.dead_letter)
    assert sorted(d["custom_id"] for d in dead) == sorted(r["custom_id"] for r in again)
    assert all(d["dead_letter_reason"].startswith("answer not valid") for d in dead)
    assert manifest["invalid_output"] == len(invalid) + len(again)
    tickets = load_results(run_dir.root, Ticket)
    assert len(tickets) == 20 - len(again) and all(isinstance(t, Ticket) for t in tickets)
    assert load_results(str(run_dir.results)) == tickets, "the run's own type is used without one"
    sent = sent_requests(run_dir.requests_dir(1))[0]
    assert "category" in json.dumps(sent)
