"""Latency of the "LLM batches" page's API over a run index of many synthetic runs.

Writes ``--runs`` index entries (as collect writes them: one file per run folder) under a fresh
run path, then times, each in this process:

- ``first read, no segment``: a reader that has to open every entry file (once, ever: it then
  writes the segment);
- ``cold request``: a new app (as after an API-server restart) answering ``/api/runs``, loading
  the segment and listing the entries folder;
- ``warm request``: later ``/api/runs`` calls (page 1 of 50 rows, totals, the four charts,
  filter values), unfiltered and filtered; the same with the query cache cleared each time
  (a new filter, or an index that changed); then the CSV export of every run.

Requests go through FastAPI's test client with the user's readable DAGs fixed to every synthetic
DAG (the auth manager's lookup is one query on Airflow's DB, independent of the index size).

    .venv/bin/python bench/ui_index.py --runs 10000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5"), ("gemini", "gemini-2.5-flash")]
CENTRES = ["support", "research", "marketing", "finance"]


def entry(i: int, dags: int) -> dict[str, Any]:
    provider, model = PROVIDERS[i % len(PROVIDERS)]
    day = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}"
    cost = round(0.5 + (i % 97) / 10, 4)
    seconds = 900.0 + 37 * (i % 500)
    return {
        "v": 1,
        "dag_id": f"dag_{i % dags:03d}",
        "run_id": f"scheduled__{day}T00:00:00+00:00",
        "task_id": "classify.submit",
        "map_index": -1,
        "group": "classify",
        "provider": provider,
        "models": [model],
        "rows": 1000 + i % 5000,
        "succeeded": 990 + i % 5000,
        "errored": 8,
        "rejected": 2,
        "dead_letter": 0,
        "attempts": 1,
        "finished": False,
        "batch_usd": cost,
        "standard_usd": 2 * cost,
        "savings_usd": cost,
        "unpriced_models": [],
        "tags": {"cost_centre": CENTRES[i % len(CENTRES)], "team": f"t{i % 7}"},
        "started_at": f"{day}T00:00:00+00:00",
        "completed_at": f"{day}T{i % 24:02d}:00:00+00:00",
        "completion_s": seconds,
        "batches": [{"id": f"batch_{i:06d}", "model": model, "seconds": seconds}],
        "written_at": f"{day}T{i % 24:02d}:00:00+00:00",
    }


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--dags", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from batch_provider.core.run_index import INDEX_DIR, RunIndexReader, write_entry

    base = Path(tempfile.mkdtemp(prefix="bp-ui-bench-"))
    index = base / INDEX_DIR
    start = time.perf_counter()
    for i in range(args.runs):
        write_entry(index, f"{i:024x}", entry(i, args.dags))
    print(f"wrote {args.runs} index entries in {time.perf_counter() - start:.1f} s under {index}")
    first = timed(lambda: RunIndexReader(index).entries())
    print(f"first read, no segment (opens every entry once): {first:.0f} ms")

    os.environ["BATCH_PROVIDER_UI_RUN_PATHS"] = f"file://{base}"
    from fastapi.testclient import TestClient

    from batch_provider.ui import app as ui

    allowed = {f"dag_{d:03d}" for d in range(args.dags)}

    def client() -> TestClient:
        ui._reader.cache_clear()  # a new API-server process: nothing in memory
        app = ui.create_app()
        app.dependency_overrides[ui.readable_dag_ids] = lambda: allowed
        return TestClient(app)

    c = client()

    def get(path: str, **params: Any) -> None:
        r = c.get(path, params=params)
        assert r.status_code == 200, r.text

    cold = timed(lambda: get("/api/runs"))
    total = c.get("/api/runs").json()["total"]
    assert total == args.runs, total
    print(f"cold request (segment + listing, {total} runs): {cold:.0f} ms")
    for label, params in (
        ("warm /api/runs, all runs", {}),
        ("warm /api/runs, provider+cost centre filter", {"provider": "anthropic", "cost_centre": "research"}),
        ("warm /api/runs, page 40", {"page": 40}),
    ):
        samples = sorted(timed(lambda p=params: get("/api/runs", **p)) for _ in range(args.repeat))
        p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
        print(f"{label}: median {statistics.median(samples):.0f} ms, p95 {p95:.0f} ms")
    def uncached(params: dict[str, Any]) -> None:
        ui._query.cache_clear()  # a filter not asked before, or an index that just changed
        get("/api/runs", **params)

    samples = sorted(timed(lambda: uncached({"provider": "openai"})) for _ in range(args.repeat))
    median = statistics.median(samples)
    print(f"uncached /api/runs (filter, totals, charts computed afresh): median {median:.0f} ms")
    csv_ms = timed(lambda: get("/api/runs.csv"))
    print(f"CSV export of {args.runs} runs: {csv_ms:.0f} ms")


if __name__ == "__main__":
    main()
