"""Helpers for the Vertex backend tests: a backend on the emulator and its GCS, rows, waiting and
accounting checks. Jobs are counted by listing them through the API (the emulator's own view)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from batch_provider.backends.transport import TransportPolicy
from batch_provider.backends.vertex import VertexBackend
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches

MODEL = "gemini-2.5-flash"
PROJECT = "bp-test-project"
REGION = "us-central1"
BUCKET = "bp-vertex"
FAST_RETRY = TransportPolicy(backoff_base=0.05, backoff_cap=0.2, deadline=30.0)


def make_bucket(emu: Any, bucket: str = BUCKET) -> None:
    """Create ``bucket`` in the emulator's GCS (idempotent), through the GCS JSON API."""
    response = httpx.post(
        f"{emu.gcs_endpoint.rstrip('/')}/storage/v1/b", params={"project": PROJECT}, json={"name": bucket}
    )
    assert response.status_code in (200, 409), response.text


def backend_options(emu: Any, prefix: str = "runs") -> dict[str, Any]:
    return {
        "project": PROJECT,
        "region": REGION,
        "staging_uri": f"gs://{BUCKET}/{prefix}/input",
        "output_uri": f"gs://{BUCKET}/{prefix}/output",
        "anonymous": True,
        "base_url": emu.base_url,
        "gcs_endpoint": emu.gcs_endpoint,
    }


def backend_for(emu: Any, **options: Any) -> VertexBackend:
    options.setdefault("policy", FAST_RETRY)
    return VertexBackend(**{**backend_options(emu), **options})


def jobs_url(emu: Any) -> str:
    return f"{emu.base_url}/v1/projects/{PROJECT}/locations/{REGION}/batchPredictionJobs"


def listed_jobs(emu: Any) -> list[dict[str, Any]]:
    """Every job of the test project, through the API's list call."""
    jobs: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        params = {"pageSize": 1000, **({"pageToken": token} if token else {})}
        page = httpx.get(jobs_url(emu), params=params, headers={"authorization": "Bearer t"}).json()
        jobs.extend(page.get("batchPredictionJobs") or [])
        token = page.get("nextPageToken")
        if not token:
            return jobs


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
