"""Sync fallback throughput on the emulator: rows answered per second by the synchronous API after
a cut-off batch, with the journal written as answers arrive.

    PYTHONPATH=. python bench/sync_fallback.py [--rows 400] [--concurrency 8] [--latency 0.05] [--rpm 0]

A batch of ``--rows`` rows is submitted, cancelled before any row is answered and collected; the
fallback then sends every row. The figure is the fallback alone (rows / wall seconds), and the
emulator's counts show each row answered once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from batch_provider.backends.registry import create_backend
from batch_provider.backends.sync_callers import sync_caller
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.sync_fallback import run_sync_fallback
from batch_provider.core.watch import cancel_batches
from batch_provider.emulator.process import running_emulator


async def measure(emulator: object, rows: int, concurrency: int, root: Path) -> tuple[float, int]:
    base = f"{emulator.base_url}/v1"  # type: ignore[attr-defined]
    run_dir = run_directory(root, dag_id="bench", run_id="sync")
    data = [{"id": f"b-{i:05d}", "text": f"bench row {i}"} for i in range(rows)]
    builder = RequestBuilder(template="Say {{ text }}", model="gpt-4o-mini", max_tokens=16)
    async with create_backend("openai", api_key="bench", base_url=base) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=RunKey(dag_id="bench", task_id="submit", run_id="sync"),
            conn_id="bench",
        )
        await cancel_batches(backend, handle.batch_ids)
        emulator.advance(3600)  # type: ignore[attr-defined]
        await collect_run(backend, handle, run_dir)
        started = time.perf_counter()
        report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, concurrency=concurrency)
        return time.perf_counter() - started, report.answered


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05, help="emulator seconds per synchronous answer")
    parser.add_argument("--rpm", type=int, default=0, help="emulator calls per second per key (0: no limit)")
    args = parser.parse_args()
    with running_emulator(time_factor=1.0) as emulator, tempfile.TemporaryDirectory() as tmp:
        emulator.sync_settings(latency_seconds=args.latency, rpm=args.rpm, window_seconds=1.0)
        seconds, answered = asyncio.run(measure(emulator, args.rows, args.concurrency, Path(tmp)))
        counts = emulator.sync_settings()
    print(
        f"sync fallback: {answered} rows in {seconds:.2f}s = {answered / seconds:.0f} rows/s "
        f"(concurrency {args.concurrency}, latency {args.latency}s, limit {args.rpm or 'none'}/s; "
        f"served {counts['served']}, max per body {counts['max_per_body']}, 429s {counts['limited']})"
    )
    sys.exit(0 if answered == args.rows and counts["max_per_body"] == 1 else 1)


if __name__ == "__main__":
    main()
