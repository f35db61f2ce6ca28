"""Helpers for the Vertex backend tests: a backend on the emulator and its GCS, rows, waiting and
accounting checks. Jobs are counted by listing them through the API (the emulator's own view)."""

from __future__ import annotations

from typing import Any

import httpx
from run_support import assert_accounted as assert_accounted
from run_support import read_lines as read_lines
from run_support import wait_all as wait_all

from batch_provider.backends.transport import TransportPolicy
from batch_provider.backends.vertex import VertexBackend
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.submission import submit_run

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
