"""Bytes a run leaves behind: result bytes per row for embeddings, and the run folder of a chat run.

Runs the whole core path (render → ``submit_run`` → wait → ``collect_run``) against one emulator
started for the bench, with the result cache off (its storage is measured by ``bench/cache.py``):

1. **Embeddings** (``--embeddings``, default 20,000 rows of 1,536 dimensions): collected as
   JSONL (the default), as Parquet and as JSONL with ``keep_raw=True``. Prints the results file's
   bytes per row next to the vector's own JSON (the ``embedding`` list as the provider sent it,
   compact) and its float32 size (4 bytes × dimensions), with the ratios.
2. **Chat** (``--chat``, default 50,000 requests): bytes and file count of the run folder, with
   the default options and with ``keep_raw=True``. The layout before one copy per result also kept
   ``attempt-1/results.jsonl`` beside ``results.jsonl`` (both with the raw body) and the request
   parts plain: that figure is the ``keep_raw`` folder plus a second copy of its results file and
   its parts' unpacked size, computed from the same run.

    .venv/bin/python bench/result_files.py                       # ~5 minutes on 2 cores
    .venv/bin/python bench/result_files.py --embeddings 2000 --chat 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch_provider.backends.openai import OpenAIBackend
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import RunDirectory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches
from batch_provider.emulator.process import running_emulator

KEY = "sk-bench-key"
MB = 1024 * 1024


def folder_figures(root: Path) -> tuple[int, int]:
    """(bytes, files) under ``root``."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def unpacked_growth(root: Path) -> int:
    """Bytes the packed part files and sidecars under ``root`` would add if kept plain."""
    extra = 0
    for path in root.rglob("*.gz"):
        with gzip.open(path, "rb") as fh:
            plain = sum(len(block) for block in iter(lambda fh=fh: fh.read(1 << 20), b""))
        extra += plain - path.stat().st_size
    return extra


async def one_run(
    emu: Any, root: Path, name: str, rows: list[dict[str, Any]], builder: RequestBuilder, **collect: Any
) -> tuple[RunDirectory, dict[str, float]]:
    run_dir = RunDirectory(root / name)
    key = RunKey(dag_id="bench_result_files", task_id="submit", run_id=name)
    async with OpenAIBackend(KEY, emu.base_url + "/v1") as backend:
        started = time.perf_counter()
        handle = await submit_run(
            backend, builder.render(iter_list(rows)), run_dir, run_key=key, conn_id=None
        )
        submitted = time.perf_counter()
        emu.advance(100_000)
        await watch_batches(
            backend, handle.batch_ids, deadline=None, poll_interval_min=0.2, poll_interval_max=1
        )
        waited = time.perf_counter()
        summary = await collect_run(backend, handle, run_dir, **collect)
        collected = time.perf_counter()
    assert summary.accounted and summary.succeeded == len(rows), summary
    return run_dir, {
        "submit_s": submitted - started,
        "wait_s": waited - submitted,
        "collect_s": collected - waited,
    }


def vector_json_bytes(results: Path) -> tuple[int, int]:
    """(rows, bytes of each row's ``embedding`` list as compact JSON) of a results.jsonl."""
    rows = total = 0
    with results.open("rb") as fh:
        for line in fh:
            vector = json.loads(line)["embedding"]
            total += len(json.dumps(vector, separators=(",", ":")))
            rows += 1
    return rows, total


async def embeddings(emu: Any, root: Path, count: int) -> None:
    rows = [
        {"id": f"doc-{i:06d}", "text": f"document {i} about shipping, refunds and support"}
        for i in range(count)
    ]
    builder = RequestBuilder(template="{{ text }}", model="text-embedding-3-small", kind="embedding")
    print(f"\nEmbeddings: {count:,} rows × 1,536 dimensions")
    runs = {}
    for name, options in (
        ("jsonl", {}),
        ("parquet", {"results_format": "parquet"}),
        ("jsonl-keep-raw", {"keep_raw": True}),
    ):
        run_dir, times = await one_run(emu, root, f"emb-{name}", rows, builder, **options)
        runs[name] = run_dir
        print(f"  {name:15s} collected in {times['collect_s']:.1f} s")
    n, vector_bytes = vector_json_bytes(runs["jsonl"].results)
    own_json = vector_bytes / n
    float32 = 4 * 1536
    print(f"  the vector's own JSON: {own_json:,.0f} B/row; as float32: {float32:,} B/row")
    print("  | results file | bytes per row | ÷ vector JSON | ÷ float32 |")
    print("  |---|---|---|---|")
    for name, path in (
        ("jsonl", runs["jsonl"].results),
        ("parquet", runs["parquet"].results_parquet),
        ("jsonl-keep-raw", runs["jsonl-keep-raw"].results),
    ):
        per_row = path.stat().st_size / n
        ratios = f"{per_row / own_json:.3f} | {per_row / float32:.3f}"
        print(f"  | {name} ({path.name}) | {per_row:,.0f} | {ratios} |")
    for name, run_dir in runs.items():
        size, files = folder_figures(Path(run_dir.root))
        print(f"  run folder {name}: {size / MB:,.1f} MB in {files} files")


async def chat(emu: Any, root: Path, count: int) -> None:
    rows = [
        {"id": f"t-{i:06d}", "text": f"ticket {i}: the delivery was late but support helped"}
        for i in range(count)
    ]
    builder = RequestBuilder(template="Classify: {{ text }}", model="gpt-6-luna", max_tokens=16)
    print(f"\nChat: {count:,} requests, run folder with the cache off")
    lean, _ = await one_run(emu, root, "chat-lean", rows, builder)
    raw, _ = await one_run(emu, root, "chat-keep-raw", rows, builder, keep_raw=True)
    lean_bytes, lean_files = folder_figures(Path(lean.root))
    raw_bytes, raw_files = folder_figures(Path(raw.root))
    # As before: attempt-1/results.jsonl beside the top-level copy, and the request parts plain.
    old_bytes = raw_bytes + raw.results.stat().st_size + unpacked_growth(Path(raw.root))
    plain_parts = lean_bytes + unpacked_growth(Path(lean.root))
    print("  | layout | bytes | files | results file |")
    print("  |---|---|---|---|")
    print(
        f"  | before: raw body, results twice, parts plain | {old_bytes / MB:,.1f} MB "
        f"| {raw_files + 1} | {raw.results.stat().st_size / MB:,.1f} MB ×2 |"
    )
    raw_results, lean_results = raw.results.stat().st_size / MB, lean.results.stat().st_size / MB
    print(f"  | keep_raw=True | {raw_bytes / MB:,.1f} MB | {raw_files} | {raw_results:,.1f} MB |")
    print(f"  | default, parts plain | {plain_parts / MB:,.1f} MB | {lean_files} | {lean_results:,.1f} MB |")
    print(f"  | default | {lean_bytes / MB:,.1f} MB | {lean_files} | {lean_results:,.1f} MB |")
    print(f"  default ÷ before: {lean_bytes / old_bytes:.3f} of the bytes")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embeddings", type=int, default=20_000)
    parser.add_argument("--chat", type=int, default=50_000)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: a temporary folder, removed after"
    )
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-result-files-"))
    extra = ["--log-level", "warning", "--outputs-at-finalize"]
    try:
        with running_emulator(time_factor=600.0, extra_args=extra) as emu:
            if args.embeddings:
                await embeddings(emu, root, args.embeddings)
            if args.chat:
                await chat(emu, root, args.chat)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
