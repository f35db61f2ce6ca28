"""The "LLM batches" page: a FastAPI app the Airflow API server mounts (``/llm-batches``).

Invariants:
- Every route but the static assets needs a logged-in user (Airflow's own ``get_user``: the
  session cookie of the UI or a bearer token); anonymous requests get 401.
- A user sees only runs of DAGs the auth manager lets them read (``get_authorized_dag_ids``,
  the path Airflow's own DAG listing uses); runs of DAGs Airflow does not know are hidden.
- Responses carry index entries only (figures, names, tags, batch ids): never a key.
"""

from __future__ import annotations

import os
import pathlib
from functools import cache, lru_cache
from typing import Annotated, Any
from urllib.parse import unquote, urlparse

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, Query
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from batch_provider.core.models import Provider
from batch_provider.core.run_index import INDEX_DIR, RunIndexReader
from batch_provider.links.batch import batch_url
from batch_provider.operators._common import as_storage_path, default_run_path
from batch_provider.ui import runs_query
from batch_provider.ui.runs_query import RunFilter

STATIC = pathlib.Path(__file__).parent / "static"
MAX_PAGE_SIZE = 500
CONSOLE_PROVIDERS = {
    p.value for p in (Provider.OPENAI, Provider.ANTHROPIC, Provider.GEMINI, Provider.VERTEX, Provider.BEDROCK)
}
"""Providers with a public console page per batch (an OpenAI-compatible service has none)."""


def index_paths() -> list[str]:
    """Run paths whose indexes the page reads: ``[batch_provider] ui_run_paths`` (comma-separated),
    else the default run path."""
    try:
        from airflow.configuration import conf

        value = conf.get("batch_provider", "ui_run_paths", fallback="") or ""
    except Exception:
        value = ""
    value = value or os.environ.get("BATCH_PROVIDER_UI_RUN_PATHS", "")
    paths = [p.strip() for p in value.split(",") if p.strip()]
    return paths or [default_run_path()]


@cache
def _reader(run_path: str) -> RunIndexReader:
    parsed = urlparse(run_path)
    if parsed.scheme in ("", "file"):  # local disk: plain paths list and read fastest
        local = unquote(parsed.path) if parsed.scheme else os.path.abspath(run_path)
        return RunIndexReader(pathlib.Path(local) / INDEX_DIR)
    return RunIndexReader(as_storage_path(run_path) / INDEX_DIR)


def readable_dag_ids(user: GetUserDep) -> set[str]:
    return get_auth_manager().get_authorized_dag_ids(user=user, method="GET")


def run_filter(
    dag_id: str = "",
    provider: str = "",
    model: str = "",
    cost_centre: str = "",
    date_from: str = "",
    date_to: str = "",
) -> RunFilter:
    return RunFilter(dag_id, provider, model, cost_centre, date_from[:10], date_to[:10])


ReadableDags = Annotated[set[str], Depends(readable_dag_ids)]
Filter = Annotated[RunFilter, Depends(run_filter)]


def _readers() -> list[RunIndexReader]:
    return [_reader(path) for path in index_paths()]


@lru_cache(maxsize=64)
def _query(versions: tuple[int, ...], allowed: frozenset[str], flt: RunFilter) -> dict[str, Any]:
    """Filtered rows, totals, charts and filter values of the readable runs; cached under the
    indexes' versions, so it is recomputed only when an index changed."""
    entries = [e for r in _readers() for e in r.latest if e.get("dag_id") in allowed]
    rows = runs_query.select(entries, flt)
    return {
        "rows": rows,
        "totals": runs_query.totals(rows),
        "charts": runs_query.charts(rows),
        "facets": runs_query.facets(entries),
    }


def query(allowed: set[str], flt: RunFilter) -> dict[str, Any]:
    readers = _readers()
    for r in readers:
        r.entries()  # one listing per index: picks up what collect and retry wrote since
    return _query(tuple(r.version for r in readers), frozenset(allowed), flt)


def with_links(entry: dict[str, Any]) -> dict[str, Any]:
    consoles = []
    if entry.get("provider") in CONSOLE_PROVIDERS:
        consoles = [batch_url(entry["provider"], b["id"]) for b in (entry.get("batches") or [])[:3]]
    return {**entry, "console_urls": consoles}


def create_app() -> FastAPI:
    app = FastAPI(title="LLM batches", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page(user: GetUserDep) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/runs")
    def runs(
        allowed: ReadableDags,
        flt: Filter,
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    ) -> dict[str, Any]:
        result = query(allowed, flt)
        rows = result["rows"]
        start = (page - 1) * page_size
        return {
            **result,
            "total": len(rows),
            "page": page,
            "page_size": page_size,
            "rows": [with_links(e) for e in rows[start : start + page_size]],
        }

    @app.get("/api/runs.csv")
    def runs_csv(allowed: ReadableDags, flt: Filter) -> StreamingResponse:
        rows = query(allowed, flt)["rows"]
        return StreamingResponse(
            runs_query.csv_lines(rows),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="llm-batches.csv"'},
        )

    return app


app = create_app()
