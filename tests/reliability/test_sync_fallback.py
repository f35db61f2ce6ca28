"""Sync fallback on the emulator: the rows a cut-off attempt left unanswered go to the
synchronous endpoints under a rate limit, each sent once; the run's files and manifest count
them apart (with their full-price cost); a budget that cannot afford it refuses before any call."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel
from rel_support import backend_for, base_url, read_lines
from sync_fallback_support import ROWS, cut_off_run, served_per_row

from batch_provider.backends.sync_callers import sync_caller
from batch_provider.core.ledger import Ledger
from batch_provider.core.retry import write_dead_letter
from batch_provider.core.sync_fallback import row_tokens, rows_to_send, run_sync_fallback
from batch_provider.core.sync_journal import read_answers, read_invalid
from batch_provider.emulator.outputs import anthropic_message
from batch_provider.emulator.process import running_emulator

CHILD = Path(__file__).with_name("crash_sync_fallback.py")


@pytest.fixture(scope="module")
def slow_emulator():
    """Real time barely moves the emulated clock: the tests cut the batches with ``advance``."""
    with running_emulator(time_factor=1.0) as emulator:
        yield emulator


def manifest_of(run_dir: Any) -> dict[str, Any]:
    return json.loads(Path(str(run_dir.manifest)).read_text())


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_fallback_answers_the_long_tail_once_under_a_rate_limit(
    provider: str, slow_emulator: Any, tmp_path: Path
) -> None:
    emulator = slow_emulator
    emulator.reset()
    _, run_dir = await cut_off_run(provider, emulator, tmp_path, f"tail-{provider}")
    batch_answered = {r["custom_id"] for r in read_lines(run_dir.results)}
    async with backend_for(provider, emulator) as backend:
        to_send = rows_to_send(backend, run_dir, Ledger.load(run_dir), 1)
    assert to_send and batch_answered, "the cut left nothing to fall back on, or nothing answered"
    assert not {r.row_id for r in to_send} & batch_answered  # a row answered in a batch is never sent
    emulator.sync_settings(rpm=4, window_seconds=1.0)

    async with backend_for(provider, emulator) as backend:
        report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, concurrency=6)
        summary = write_dead_letter(backend, run_dir, max_attempts=1)

    counts = emulator.sync_settings()
    assert report.answered == len(to_send) and not report.unanswered
    assert counts["limited"] > 0, "the rate limit was never reached: the test proves nothing about 429s"
    assert counts["served"] == len(to_send) and counts["max_per_body"] == 1
    assert set(served_per_row(provider, emulator, to_send).values()) == {1}
    results = read_lines(run_dir.results)
    assert sorted(Counter(r["custom_id"] for r in results).items()) == [
        (f"s-{i:03d}", 1) for i in range(ROWS)
    ]
    assert read_lines(run_dir.dead_letter) == []
    manifest = manifest_of(run_dir)
    assert manifest["finished_by"] == {"batch": len(batch_answered), "sync": len(to_send), "cache": 0}
    assert manifest["accounted"] and summary.succeeded == ROWS and summary.dead_letter == 0
    fallback = manifest["sync_fallback"]
    batches_usd = sum(b["cost"]["batch_usd"] for b in manifest["batches"])
    assert fallback["cost_usd"] > 0
    assert manifest["cost"]["batch_usd"] == pytest.approx(batches_usd + fallback["cost_usd"], abs=1e-6)
    assert fallback["extra_cost_usd"] == pytest.approx(
        fallback["cost_usd"] - fallback["at_batch_prices_usd"], abs=2e-6
    )
    assert fallback["extra_cost_usd"] > 0  # full price, no batch discount
    synced = [r for r in results if r["batch_id"] == "sync"]
    assert len(synced) == len(to_send) and all(r["output_text"] for r in synced)

    # running it again (a retried task) sends nothing
    async with backend_for(provider, emulator) as backend:
        again = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1)
    assert again.to_send == 0 and emulator.sync_settings()["served"] == len(to_send)


async def test_fallback_the_budget_cannot_afford_is_refused_before_any_call(
    slow_emulator: Any, tmp_path: Path
) -> None:
    emulator = slow_emulator
    emulator.reset()
    _, run_dir = await cut_off_run("openai", emulator, tmp_path, "refused")
    spent = manifest_of(run_dir)["cost"]["batch_usd"]
    async with backend_for("openai", emulator) as backend:
        report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, max_cost_usd=spent + 1e-7)
        write_dead_letter(backend, run_dir, max_attempts=1)
    assert report.refused and "max_cost_usd" in report.refused and report.answered == 0
    assert emulator.sync_settings()["served"] == 0
    manifest = manifest_of(run_dir)
    assert manifest["sync_fallback"]["refused"]["1"]["rows"] == report.to_send
    assert manifest["finished_by"]["sync"] == 0
    dead = read_lines(run_dir.dead_letter)
    assert len(dead) == report.to_send and manifest["dead_letter"] == report.to_send
    assert all("sync fallback was not started" in d["dead_letter_reason"] for d in dead)


async def test_rows_the_fallback_got_no_answer_for_go_to_the_dead_letter_saying_why(
    slow_emulator: Any, tmp_path: Path
) -> None:
    emulator = slow_emulator
    emulator.reset()
    _, run_dir = await cut_off_run("openai", emulator, tmp_path, "no-answer")
    emulator.set_faults({"fault_rate": 1.0, "fault_kinds": ["500"]})
    try:
        async with backend_for("openai", emulator) as backend:
            report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, max_tries=1)
    finally:
        emulator.clear_faults()
    async with backend_for("openai", emulator) as backend:
        write_dead_letter(backend, run_dir, max_attempts=1)
    assert report.to_send and report.answered == 0 and len(report.unanswered) == report.to_send
    dead = read_lines(run_dir.dead_letter)
    assert sorted(d["custom_id"] for d in dead) == sorted(report.unanswered)
    assert all("sync fallback got no answer" in d["dead_letter_reason"] for d in dead)
    assert manifest_of(run_dir)["finished_by"]["sync"] == 0


def test_fallback_killed_mid_way_resumes_without_resending_answered_rows(
    slow_emulator: Any, tmp_path: Path
) -> None:
    emulator = slow_emulator
    emulator.reset()
    _, run_dir = asyncio.run(cut_off_run("openai", emulator, tmp_path, "killed"))

    async def pending() -> list[Any]:
        async with backend_for("openai", emulator) as backend:
            return rows_to_send(backend, run_dir, Ledger.load(run_dir), 1)

    to_send = asyncio.run(pending())
    assert len(to_send) >= 8, "too few rows cut off to kill the fallback half-way"
    emulator.sync_settings(latency_seconds=0.25)
    args = {"provider": "openai", "base_url": base_url("openai", emulator), "run_path": str(run_dir.root)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(read_answers(run_dir, 1))) < 3:
            assert child.poll() is None, child.stdout.read().decode()[-3000:] if child.stdout else ""
            assert time.monotonic() < deadline, "the fallback committed no answers in time"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    kept = {row for row, _ in read_answers(run_dir, 1)}
    assert 3 <= len(kept) < len(to_send), "the kill did not land in the middle of the fallback"

    emulator.sync_settings(latency_seconds=0.0)
    left = asyncio.run(pending())
    assert not {r.row_id for r in left} & kept  # what the journal holds is not sent again

    async def resume() -> Any:
        async with backend_for("openai", emulator) as backend:
            report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1)
            write_dead_letter(backend, run_dir, max_attempts=1)
            return report

    report = asyncio.run(resume())
    assert report.already_answered == len(kept) and report.answered == len(left)
    served = served_per_row("openai", emulator, to_send)
    assert all(served[row] == 1 for row in kept), {row: served[row] for row in kept}
    # only rows in flight at the kill (at most the concurrency, 2) may have been answered twice
    assert sum(served.values()) - len(to_send) <= 2
    results = read_lines(run_dir.results)
    assert sorted(Counter(r["custom_id"] for r in results).items()) == [
        (f"s-{i:03d}", 1) for i in range(ROWS)
    ]
    manifest = manifest_of(run_dir)
    assert manifest["finished_by"]["sync"] == len(to_send) and manifest["accounted"]


async def test_a_tokens_per_minute_budget_keeps_the_fallback_under_the_provider_limit(
    slow_emulator: Any, tmp_path: Path
) -> None:
    emulator = slow_emulator
    emulator.reset()
    _, run_dir = await cut_off_run("anthropic", emulator, tmp_path, "tpm")
    async with backend_for("anthropic", emulator) as backend:
        rows = rows_to_send(backend, run_dir, Ledger.load(run_dir), 1)
        budget = 3 * max(sum(row_tokens(r)) for r in rows)  # about three rows per window
        used = [anthropic_message(json.loads(r.line)["params"], 0)["usage"] for r in rows]
        # the provider lets three rows' worth of real tokens through a window (eight at once are
        # refused), over a window a little shorter than the client's, so calls the client spaced
        # by its window never meet in the provider's
        real = 3 * max(u["input_tokens"] + u["output_tokens"] for u in used)
        emulator.sync_settings(tpm=real, window_seconds=0.9)
        report = await run_sync_fallback(
            backend,
            sync_caller(backend),
            run_dir,
            1,
            concurrency=8,
            tokens_per_minute=budget,
            token_window_seconds=1.0,
        )
    counts = emulator.sync_settings()
    assert report.answered == len(rows) >= 6
    assert counts["limited"] == 0, "the client's token budget let the provider's limit be hit"
    # this run's bodies only: a call an earlier test's killed child left in flight may land late
    served = served_per_row("anthropic", emulator, rows)
    assert all(n == 1 for n in served.values()), served


class Ticket(BaseModel):
    category: Literal["billing", "bug", "other"]
    urgent: bool
    summary: str


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_sync_answers_are_checked_against_the_output_type(
    provider: str, slow_emulator: Any, tmp_path: Path
) -> None:
    emulator = slow_emulator
    emulator.reset()
    _, run_dir = await cut_off_run(
        provider, emulator, tmp_path, f"typed-{provider}", output_type=Ticket, marker=" [[emu:invalid50]]"
    )
    batch_invalid = {
        r["custom_id"] for r in read_lines(run_dir.attempt_errors(1)) if r["status"] == "invalid_output"
    }
    async with backend_for(provider, emulator) as backend:
        to_send = rows_to_send(backend, run_dir, Ledger.load(run_dir), 1)
        assert to_send and all(r.wants_json for r in to_send)
        report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, concurrency=4)
        summary = write_dead_letter(backend, run_dir, max_attempts=1)

    assert report.invalid_output > 0, "no sync answer was made invalid: the test proves nothing"
    assert not report.unanswered and report.answered > 0
    results = read_lines(run_dir.results)
    dead = read_lines(run_dir.dead_letter)
    # every row in exactly one file, and no answer that does not validate among the successes
    assert sorted([r["custom_id"] for r in results] + [d["custom_id"] for d in dead]) == [
        f"s-{i:03d}" for i in range(ROWS)
    ]
    for record in results:
        Ticket.model_validate(record["parsed"])
    synced = [r for r in results if r["batch_id"] == "sync"]
    assert len(synced) == report.answered
    # a row's answers that did not validate: sent again while retry_invalid_output=1 allows
    served = served_per_row(provider, emulator, to_send)
    for row in to_send:
        assert served[row.row_id] <= (1 if row.row_id in batch_invalid else 2), row.row_id
    invalid_by_sync = [d for d in dead if d["batch_id"] == "sync"]
    assert invalid_by_sync, "no row ended with a sync answer that does not validate"
    for d in invalid_by_sync:
        assert d["status"] == "invalid_output" and d["output_text"] and d["error"]["details"]
        assert not d["error"]["retryable"] and "retry_invalid_output=1" in d["error"]["message"]
        assert d["dead_letter_reason"].startswith("answer not valid")
    journal_invalid = read_invalid(run_dir, 1)
    assert sum(len(v) for v in journal_invalid.values()) == report.invalid_output
    manifest = manifest_of(run_dir)
    fallback = manifest["sync_fallback"]
    assert fallback["invalid_output"] == report.invalid_output
    assert manifest["invalid_output"] == len(batch_invalid) + report.invalid_output
    assert manifest["finished_by"]["sync"] == report.answered and manifest["accounted"]
    assert summary.succeeded + summary.dead_letter == ROWS
    # the invalid answers were paid: their tokens are in the fallback's usage
    paid_out = sum(r["usage"]["output_tokens"] for r in synced) + sum(
        json.loads(line)["usage"]["output_tokens"] for lines in journal_invalid.values() for line in lines
    )
    assert fallback["usage"]["output_tokens"] == paid_out

    # running it again sends nothing: answered rows and rows out of resends are done
    before = emulator.sync_settings()["served"]
    async with backend_for(provider, emulator) as backend:
        again = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1)
    assert again.to_send == 0 and emulator.sync_settings()["served"] == before


async def test_invalid_answers_journaled_before_a_restart_count_towards_retry_invalid_output(
    slow_emulator: Any, tmp_path: Path
) -> None:
    emulator = slow_emulator
    emulator.reset()
    _, run_dir = await cut_off_run(
        "openai", emulator, tmp_path, "typed-resume", output_type=Ticket, marker=" [[emu:invalid100]]"
    )
    batch_invalid = {
        r["custom_id"] for r in read_lines(run_dir.attempt_errors(1)) if r["status"] == "invalid_output"
    }
    async with backend_for("openai", emulator) as backend:
        to_send = rows_to_send(backend, run_dir, Ledger.load(run_dir), 1)
        cut_off = {r.row_id for r in to_send} - batch_invalid
        assert cut_off and batch_invalid, "the cut left no unanswered or no invalid row"
        # one call per row, as if the process stopped after each row's first answer
        first = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, max_tries=1)
        assert first.answered == 0 and first.invalid_output == len(to_send)
        assert set(first.unanswered) == cut_off  # still within retry_invalid_output=1
        second = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1)
        write_dead_letter(backend, run_dir, max_attempts=1)
    assert second.to_send == len(cut_off) and second.invalid_output == len(cut_off)
    served = served_per_row("openai", emulator, to_send)
    assert all(served[r] == 1 for r in batch_invalid) and all(served[r] == 2 for r in cut_off)
    dead = read_lines(run_dir.dead_letter)
    assert len(dead) == ROWS - len(read_lines(run_dir.results))
    by_sync = {d["custom_id"]: d for d in dead if d["batch_id"] == "sync"}
    assert set(by_sync) == cut_off | batch_invalid
    assert all("sent 2 times" in d["error"]["message"] for d in by_sync.values())


def test_every_provider_has_a_sync_caller() -> None:
    from types import SimpleNamespace

    from batch_provider.backends.bedrock.sync import BedrockSyncCaller
    from batch_provider.backends.sync_callers import SYNC_PROVIDERS
    from batch_provider.core.models import Provider

    assert set(SYNC_PROVIDERS) == set(Provider)
    for invocation_type in ("InvokeModel", "Converse"):
        caller = sync_caller(SimpleNamespace(provider=Provider.BEDROCK, invocation_type=invocation_type))
        assert isinstance(caller, BedrockSyncCaller) and invocation_type in caller.operation
