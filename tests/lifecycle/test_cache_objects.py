"""What the result cache leaves in storage across real runs against the emulator: a collect writes
a segment and an index per batch, however many rows; a re-run for another date served from the
cache writes nothing to it, and its answers read like the first run's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batch_provider.backends.registry import create_backend
from batch_provider.core.cache import ResultCache
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches


def cache_objects(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def run_once(backend: Any, emulator: Any, tmp_path: Path, run_id: str, cache: ResultCache, rows: int):
    builder = RequestBuilder(template="{{ text }}", model="text-embedding-3-small", kind="embedding")
    data = [{"id": f"doc-{i:04d}", "text": f"document number {i}"} for i in range(rows)]
    run_dir = run_directory(tmp_path / "runs", dag_id="embed", run_id=run_id)
    handle = await submit_run(
        backend,
        builder.render(iter_list(data)),
        run_dir,
        run_key=RunKey(dag_id="embed", task_id="submit", run_id=run_id),
        conn_id=None,
        cache=cache,
        max_requests_per_batch=100,
    )
    emulator.advance(2 * 86400)
    await watch_batches(
        backend, handle.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.2
    )
    summary = await collect_run(backend, handle, run_dir, cache=cache)
    return handle, summary, run_dir


async def test_rerun_for_another_date_writes_no_cache_objects(emulator: Any, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    async with create_backend("openai", api_key="test-key", base_url=f"{emulator.base_url}/v1") as backend:
        first_handle, first, first_dir = await run_once(
            backend, emulator, tmp_path, "2026-11-20", ResultCache(root), 350
        )
        assert len(first_handle.batches) == 4 and first.succeeded == 350
        stored = cache_objects(root)
        assert len(stored) == 2 * 4, "a segment and an index per batch, not an object per row"

        second_handle, second, second_dir = await run_once(
            backend, emulator, tmp_path, "2026-11-21", ResultCache(root), 350
        )
    assert second_handle.batches == [] and second.cached == 350 and second.succeeded == 350
    assert cache_objects(root) == stored, "served from the cache: nothing written to it"
    answers = {r["custom_id"]: r for r in lines(first_dir.results)}
    for cached in lines(second_dir.results):
        answer = answers[cached["custom_id"]]
        assert cached.pop("cached") is True and answer.pop("cached") is False
        assert cached == answer, (
            "a cached answer reads like the first run's, vector, usage and model included"
        )
