"""Vertex AI batch prediction HTTP face: the aiplatform ``batchPredictionJobs`` routes, as
``google-genai`` (``vertexai=True``) and plain REST clients call them, under ``/v1`` and ``/v1beta1``.

Routes (``P`` = ``/{v1|v1beta1}/projects/{project}/locations/{location}/batchPredictionJobs``)::

    POST   P                  create (returns the job, JOB_STATE_PENDING)
    GET    P                  list (filter, pageSize ≤ 1000, pageToken; newest first)
    GET    P/{id}             get
    POST   P/{id}:cancel      cancel ({}; 400 FAILED_PRECONDITION once the job has ended)
    DELETE P/{id}             delete (a done long-running operation; 400 until the job has ended)
    GET|POST /_emu/vertex     settings (gcs_endpoint, expire_seconds, lines_per_file, ...)

Errors use Google's envelope ``{"error": {"code", "message", "status"}}``. Auth: any non-empty
``Authorization: Bearer`` token; without one, 401 UNAUTHENTICATED. Server-wide faults
(``POST /_emu/faults``) apply as on the Gemini face: 429 → RESOURCE_EXHAUSTED with
``retry-after``, 5xx → INTERNAL / UNAVAILABLE / DEADLINE_EXCEEDED, ``drop`` and ``reset``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..clock import rfc3339
from ..control import settings_route
from ..gemini.files import GeminiError, invalid
from ..gemini.routes import _json, google_endpoint
from . import filters
from .jobs import TERMINAL, VertexJob, View
from .state import VertexJobs, attach

Handler = Callable[[Request, VertexJobs], Awaitable[Response]]
VERSIONS = ("v1", "v1beta1")
JOBS = "/projects/{project}/locations/{location}/batchPredictionJobs"
MAX_CREATE_BYTES = 10 * 1024 * 1024


def _authorized(request: Request) -> bool:
    bearer = request.headers.get("authorization", "")
    return bearer[:7].lower() == "bearer " and bool(bearer[7:].strip())


_UNAUTHENTICATED = GeminiError(
    401,
    "UNAUTHENTICATED",
    "Request is missing required authentication credential. Expected OAuth 2 "
    "access token, login cookie or other valid authentication credential.",
)


def vertex_route(method: str, path: str) -> Callable[[Handler], list[Route]]:
    """One Vertex route per API version: counts the call, checks the token, injects faults,
    renders errors."""

    def deco(fn: Handler) -> list[Route]:
        routes = []
        for version in VERSIONS:
            label = f"{method} /{version}{path}"
            endpoint = google_endpoint(method, label, attach, _authorized, _UNAUTHENTICATED, fn)
            routes.append(Route(f"/{version}{path}", endpoint, methods=[method], name=f"vertex {label}"))
        return routes

    return deco


def _where(request: Request) -> tuple[str, str]:
    return request.path_params["project"], request.path_params["location"]


def _job(request: Request, jobs: VertexJobs) -> VertexJob:
    return jobs.get(*_where(request), request.path_params["job"])


async def _resource(jobs: VertexJobs, job: VertexJob) -> dict[str, Any]:
    view = await jobs.settle(job)
    return await asyncio.to_thread(jobs.resource, job, view)


@vertex_route("POST", JOBS)
async def create_job(request: Request, jobs: VertexJobs) -> Response:
    body = await _json(request, MAX_CREATE_BYTES)
    job = await jobs.create(*_where(request), body)
    return JSONResponse(await _resource(jobs, job))


def _page(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("pageSize") or "100"
    try:
        size = int(raw)
    except ValueError:
        raise invalid(f"pageSize must be an integer, got {raw!r}.") from None
    if size < 0:
        raise invalid("pageSize must not be negative.")
    return min(size or 100, 1000), request.query_params.get("pageToken") or None


@vertex_route("GET", JOBS)
async def list_jobs(request: Request, jobs: VertexJobs) -> Response:
    size, token = _page(request)
    try:
        keep = filters.parse(request.query_params.get("filter"))
    except filters.FilterError as exc:
        raise invalid(f"Invalid filter: {exc}") from None
    every = jobs.listed(*_where(request))
    start = 0
    if token is not None:
        ids = [j.id for j in every]
        if token not in ids:
            raise invalid(f"Invalid pageToken {token!r}.")
        start = ids.index(token) + 1

    def choose() -> tuple[list[VertexJob], bool]:
        """The page's jobs (the filter reads each job's view; plans may read input copies)."""
        now = jobs.store.clock.now()
        chosen: list[VertexJob] = []
        for job in every[start:]:
            if keep(_fields(job, jobs.view(job, now), now)):
                if len(chosen) == size:
                    return chosen, True
                chosen.append(job)
        return chosen, False

    chosen, more = await asyncio.to_thread(choose)
    body: dict[str, Any] = {"batchPredictionJobs": [await _resource(jobs, job) for job in chosen]}
    if more:
        body["nextPageToken"] = chosen[-1].id
    return JSONResponse(body)


def _fields(job: VertexJob, view: View, now: float) -> dict[str, Any]:
    """What the list filter sees of a job."""
    return {
        "display_name": job.display_name,
        "model_display_name": job.model.rsplit("/", 1)[-1],
        "state": view.state,
        "labels": job.labels,
        "create_time": job.created_at,
        "update_time": view.ended_at or now,
        "end_time": view.ended_at if view.state in TERMINAL else None,
    }


@vertex_route("POST", JOBS + "/{job}:cancel")
async def cancel_job(request: Request, jobs: VertexJobs) -> Response:
    job = _job(request, jobs)
    await asyncio.to_thread(jobs.cancel, job)
    return JSONResponse({})


@vertex_route("GET", JOBS + "/{job}")
async def get_job(request: Request, jobs: VertexJobs) -> Response:
    return JSONResponse(await _resource(jobs, _job(request, jobs)))


@vertex_route("DELETE", JOBS + "/{job}")
async def delete_job(request: Request, jobs: VertexJobs) -> Response:
    job = _job(request, jobs)
    await jobs.settle(job)
    await asyncio.to_thread(jobs.delete, job)
    now = jobs.store.clock.now()
    return JSONResponse(
        {
            "name": f"{job.parent}/operations/{job.id}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
                "genericMetadata": {"createTime": rfc3339(now), "updateTime": rfc3339(now)},
            },
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }
    )


ROUTES = [
    *create_job,
    *list_jobs,
    *cancel_job,
    *get_job,
    *delete_job,
    settings_route("/_emu/vertex", attach, "jobs"),
]
