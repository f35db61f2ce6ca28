"""Row ids of any content and length work on every provider: the provider only ever sees wire ids
of ours, and results, errors, rejects and the dead letter show each row's own id unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rel_support import assert_every_row_once, backend_for, bedrock_options, read_lines, wait_until_ended
from run_support import part_text

from batch_provider.backends.registry import create_backend
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run

MODELS = {
    "openai": "gpt-6-luna",
    "anthropic": "claude-haiku-4-5",
    "bedrock": "anthropic.claude-haiku-4-5-20251001-v1:0",
    "gemini": "gemini-2.5-flash",
}
ODD_IDS = [
    "os.path.join",
    "a/../../b c!",
    "x" * 300,
    "ünïcødé ✓ 漢字 🚀",
    "42",
    "line\nbreak\tand tab",
    "  spaced  ",
    'quote " and \\ backslash',
    "bp0123456789aba01n000000000",  # looks like a wire id
]
REFUSED = "refused/by the provider.txt"


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock", "gemini"])
async def test_row_ids_of_any_kind_come_back_unchanged(
    provider: str, bedrock_emulator: Any, tmp_path: Path
) -> None:
    emu = bedrock_emulator
    emu.bedrock_settings(min_records=10)
    data = [{"id": row_id, "text": f"odd row {n}"} for n, row_id in enumerate(ODD_IDS)]
    data.append({"id": REFUSED, "text": "refused [[emu:fail400]]"})  # a permanent item error
    data.append({"id": ODD_IDS[1], "text": "the same id again"})  # a duplicate: rejected
    run_dir = run_directory(tmp_path, dag_id="ids", run_id=f"odd__{provider}")
    key = RunKey(dag_id="ids", task_id="submit", run_id=f"odd__{provider}")
    if provider == "bedrock":
        options = bedrock_options(emu, f"ids-{tmp_path.name}", min_records_per_job=10)
        backend = create_backend("bedrock", **options)
    else:
        backend = backend_for(provider, emu)
    builder = RequestBuilder(template="Say: {{ text }}", model=MODELS[provider], max_tokens=16)
    async with backend:
        handle = await submit_run(
            backend, builder.render(iter_list(data)), run_dir, run_key=key, conn_id=None
        )
        assert handle.counts.rejected == 1 and handle.counts.submitted == len(ODD_IDS) + 1
        await wait_until_ended(backend, handle.batch_ids, emu)
        await collect_run(backend, handle, run_dir)
        assert await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=3) is None
        write_dead_letter(backend, run_dir)
    assert_every_row_once(run_dir, [d["id"] for d in data], final=True)
    assert sorted(r["custom_id"] for r in read_lines(run_dir.results)) == sorted(ODD_IDS)
    assert [r["custom_id"] for r in read_lines(run_dir.dead_letter)] == [REFUSED]
    assert [r["custom_id"] for r in read_lines(run_dir.rejects)] == [ODD_IDS[1]]
    sent = part_text(run_dir.requests_dir(1) / "part-00000.jsonl")
    assert "os.path.join" not in sent and "odd row 0" in sent  # the wire carries our ids only
