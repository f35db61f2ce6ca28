"""Prompt caching on Bedrock against the emulator and moto's S3: an Anthropic model gets
``cache_control`` on its system prompt in the InvokeModel body, Nova (Converse form) a ``cachePoint``
after its system blocks; the job's first record writes the prefix, later ones read it, and collect
puts the cache tokens into each result's usage and the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bedrock_support import CLAUDE, backend_for
from run_support import sent_requests

from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches
from batch_provider.emulator.prompt_cache import MIN_CACHEABLE_TOKENS

NOVA = "us.amazon.nova-lite-v1:0"
POLICY = "You classify support tickets for the billing team. " * 120


def read_lines(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("model", [CLAUDE, NOVA], ids=["anthropic-body", "nova-converse"])
async def test_cache_system_prompt_on_bedrock(model: str, emu: Any, tmp_path: Path) -> None:
    emu.bedrock_settings(min_records=10)
    rows = [{"id": f"b{i}", "text": f"ticket {i}: my invoice is wrong"} for i in range(10)]
    builder = RequestBuilder(
        template="{{ text }}", system=POLICY, cache_system_prompt=True, model=model, max_tokens=32
    )
    run_id = "cache-" + model.split(".")[1][:6]
    run_dir = run_directory(tmp_path, dag_id="d", run_id=run_id)
    async with backend_for(emu, min_records_per_job=10) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(rows)),
            run_dir,
            run_key=RunKey(dag_id="d", task_id="s", run_id=run_id),
            conn_id=None,
            cache=None,
        )
        emu.advance(2 * 86400)
        await watch_batches(
            backend, handle.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.2
        )
        summary = await collect_run(backend, handle, run_dir)
    assert summary.succeeded == 10
    body = sent_requests(run_dir.requests_dir(1))[0]["modelInput"]
    if model == CLAUDE:
        assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    else:
        assert body["system"] == [{"text": POLICY.strip()}, {"cachePoint": {"type": "default"}}]
    usages = [r["usage"] for r in read_lines(run_dir.results)]
    writers = [u for u in usages if u["cache_write_tokens"]]
    assert len(writers) == 1 and writers[0]["cache_read_tokens"] == 0
    prefix = writers[0]["cache_write_tokens"]
    assert prefix >= MIN_CACHEABLE_TOKENS
    readers = [u for u in usages if u["cache_read_tokens"]]
    assert len(readers) == 9 and all(u["cache_read_tokens"] == prefix for u in readers)
    manifest = json.loads(run_dir.manifest.read_text())
    assert manifest["usage"]["cache_read_tokens"] == 9 * prefix
    assert manifest["usage"]["cache_write_tokens"] == prefix
