"""Helpers shared by the Gemini tests."""

from __future__ import annotations

from typing import Any

from run_support import assert_accounted as assert_accounted
from run_support import read_lines as read_lines
from run_support import wait_all as wait_all

from batch_provider.backends.gemini.backend import GeminiBackend
from batch_provider.backends.transport import TransportPolicy
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.submission import submit_run

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
