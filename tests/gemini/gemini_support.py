"""Helpers shared by the Gemini tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batch_provider.backends.gemini.backend import GeminiBackend
from batch_provider.backends.transport import TransportPolicy
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches

MODEL = "gemini-2.5-flash"
KEY = "gm-secret-key-123"
INLINE = 20_000_000
FILE = 0
FAST_RETRY = TransportPolicy(backoff_base=0.05, backoff_cap=0.2, deadline=30.0)


def backend_for(emu: Any, inline_max_bytes: int = INLINE, **options: Any) -> GeminiBackend:
    options.setdefault("policy", FAST_RETRY)
    return GeminiBackend(api_key=KEY, base_url=emu.base_url, inline_max_bytes=inline_max_bytes, **options)


def rows(count: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i:04d}", "text": f"ticket number {i} " * (1 + i % 5)} for i in range(count)]


def builder(**options: Any) -> RequestBuilder:
    options.setdefault("max_tokens", 64)
    return RequestBuilder(template="Classify: {{ text }}", model=MODEL, **options)


async def submit_rows(
    backend: Any, data: list[dict[str, Any]], run_dir: Any, key: Any, **options: Any
) -> Any:
    return await submit_run(
        backend, builder().render(iter_list(data)), run_dir, run_key=key, conn_id=None, **options
    )


def batches_created(emu: Any) -> int:
    return int(emu.stats()["batches_created"].get("gemini", 0))


async def wait_all(backend: Any, handle: Any, emu: Any, seconds: float = 3 * 86400) -> None:
    emu.advance(seconds)
    await watch_batches(
        backend, handle.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.2
    )


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_accounted(run_dir: Any, inputs: int) -> dict[str, Any]:
    manifest = json.loads(run_dir.manifest.read_text())
    results, errors, rejects = (read_lines(p) for p in (run_dir.results, run_dir.errors, run_dir.rejects))
    assert len(results) + len(errors) + len(rejects) == inputs
    sent = [r["custom_id"] for r in results + errors]
    assert len(sent) == len(set(sent)), "a sent request has two outcomes"
    assert manifest["accounted"] is True and manifest["inputs"] == inputs
    return manifest
