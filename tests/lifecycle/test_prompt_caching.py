"""Prompt caching end to end over HTTP against the emulator: ``cache_system_prompt`` and system
prompts given as blocks reach each provider in its own form, the emulator reports cache writes and
reads as that provider does (the first request of a batch writes a shared prefix, later ones read
it), and collect puts them into each result's usage and the manifest, apart from input tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from run_support import sent_requests

from batch_provider.backends.registry import create_backend
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches
from batch_provider.emulator.process import running_emulator
from batch_provider.emulator.prompt_cache import MIN_CACHEABLE_TOKENS

MODELS = {"openai": "gpt-6-luna", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
# A shared instruction well over the providers' minimum cacheable length (about 1,500 tokens).
POLICY = "You classify support tickets for the billing team. " * 120
ROWS = [{"id": f"c{i}", "text": f"ticket {i}: my invoice {i} is wrong"} for i in range(4)]


@pytest.fixture(scope="module")
def emulator():
    """This module's own emulator: Anthropic re-attach tests elsewhere match batches by size in
    the shared one, and these batches must not look like theirs."""
    with running_emulator(time_factor=600.0) as emu:
        yield emu


def backend_for(provider: str, emulator: Any) -> Any:
    base = f"{emulator.base_url}/v1" if provider == "openai" else emulator.base_url
    return create_backend(provider, api_key="test-key", base_url=base)


def read_lines(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def run_rows(
    provider: str, emulator: Any, tmp_path: Path, builder: RequestBuilder, *, keep_raw: bool = False
) -> Any:
    """Submit ``ROWS``, wait, collect (``keep_raw``: with each answer's provider body)."""
    run_dir = run_directory(tmp_path, dag_id="cache", run_id=f"r-{provider}", group="g")
    key = RunKey(dag_id="cache", task_id="submit", run_id=f"r-{provider}")
    async with backend_for(provider, emulator) as backend:
        handle = await submit_run(
            backend, builder.render(iter_list(ROWS)), run_dir, run_key=key, conn_id=None, cache=None
        )
        emulator.advance(2 * 86400)
        await watch_batches(
            backend, handle.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.2
        )
        await collect_run(backend, handle, run_dir, keep_raw=keep_raw)
    return run_dir


def sent_lines(run_dir: Any) -> list[dict[str, Any]]:
    return sent_requests(run_dir.requests_dir(1))


async def test_anthropic_cache_system_prompt_writes_once_then_reads(emulator: Any, tmp_path: Path) -> None:
    builder = RequestBuilder(
        template="{{ text }}",
        system=POLICY,
        cache_system_prompt=True,
        model=MODELS["anthropic"],
        max_tokens=32,
    )
    run_dir = await run_rows("anthropic", emulator, tmp_path, builder)
    system = sent_lines(run_dir)[0]["params"]["system"]
    assert system == [{"type": "text", "text": POLICY.strip(), "cache_control": {"type": "ephemeral"}}]
    usages = [r["usage"] for r in read_lines(run_dir.results)]
    # one request writes the prefix (the first the batch runs), the three others read it
    writers = [u for u in usages if u["cache_write_tokens"]]
    assert len(writers) == 1 and writers[0]["cache_read_tokens"] == 0
    prefix = writers[0]["cache_write_tokens"]
    assert prefix >= MIN_CACHEABLE_TOKENS
    readers = [u for u in usages if u["cache_read_tokens"]]
    assert len(readers) == 3 and all(u["cache_read_tokens"] == prefix for u in readers)
    assert all(0 < u["input_tokens"] < 50 for u in usages)  # only the row's own text
    usage = json.loads(run_dir.manifest.read_text())["usage"]
    assert usage["cache_write_tokens"] == prefix and usage["cache_read_tokens"] == 3 * prefix


async def test_anthropic_without_cache_flag_reports_no_cache(emulator: Any, tmp_path: Path) -> None:
    builder = RequestBuilder(template="{{ text }}", system=POLICY, model=MODELS["anthropic"], max_tokens=32)
    run_dir = await run_rows("anthropic", emulator, tmp_path, builder)
    assert sent_lines(run_dir)[0]["params"]["system"] == POLICY.strip()
    for result in read_lines(run_dir.results):
        assert result["usage"].get("cache_read_tokens", 0) == 0
        assert result["usage"].get("cache_write_tokens", 0) == 0


async def test_openai_system_blocks_first_and_implicit_cache_reads(emulator: Any, tmp_path: Path) -> None:
    builder = RequestBuilder(
        template="{{ text }}",
        system=[POLICY, "Answer in one word."],
        cache_system_prompt=True,
        model=MODELS["openai"],
        max_tokens=32,
    )
    run_dir = await run_rows("openai", emulator, tmp_path, builder, keep_raw=True)  # usage checked on it
    messages = sent_lines(run_dir)[0]["body"]["messages"]
    assert messages[0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": POLICY.strip()},
            {"type": "text", "text": "Answer in one word."},
        ],
    }
    assert messages[1]["role"] == "user"
    results = read_lines(run_dir.results)
    readers = [r for r in results if r["usage"]["cache_read_tokens"]]
    assert len(readers) == 3, "the first request run writes (OpenAI reports no write), the rest read"
    assert all(r["usage"]["cache_write_tokens"] == 0 for r in results)
    cached = readers[0]["usage"]["cache_read_tokens"]
    assert cached >= MIN_CACHEABLE_TOKENS and (cached - MIN_CACHEABLE_TOKENS) % 128 == 0
    raw = readers[0]["raw"]["usage"]
    assert raw["prompt_tokens_details"]["cached_tokens"] == cached
    assert raw["prompt_tokens"] == readers[0]["usage"]["input_tokens"] + cached
    assert json.loads(run_dir.manifest.read_text())["usage"]["cache_read_tokens"] == 3 * cached


async def test_gemini_shared_system_instruction_is_read_from_cache(emulator: Any, tmp_path: Path) -> None:
    builder = RequestBuilder(
        template="{{ text }}",
        system=[{"type": "text", "text": POLICY}],
        cache_system_prompt=True,
        model=MODELS["gemini"],
        max_tokens=32,
    )
    run_dir = await run_rows("gemini", emulator, tmp_path, builder, keep_raw=True)  # usage checked on it
    results = read_lines(run_dir.results)
    readers = [r for r in results if r["usage"]["cache_read_tokens"]]
    assert len(readers) == 3, "the first request run is not read from the cache, the rest are"
    cached = readers[0]["usage"]["cache_read_tokens"]
    assert cached >= MIN_CACHEABLE_TOKENS
    assert readers[0]["raw"]["usageMetadata"]["cachedContentTokenCount"] == cached
    assert json.loads(run_dir.manifest.read_text())["usage"]["cache_read_tokens"] == 3 * cached


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_short_prefix_is_not_cached(provider: str, emulator: Any, tmp_path: Path) -> None:
    builder = RequestBuilder(
        template="{{ text }}",
        system="Be brief.",
        cache_system_prompt=True,
        model=MODELS[provider],
        max_tokens=32,
    )
    run_dir = await run_rows(provider, emulator, tmp_path, builder)
    for result in read_lines(run_dir.results):
        assert result["usage"].get("cache_read_tokens", 0) == 0
        assert result["usage"].get("cache_write_tokens", 0) == 0
