"""Bedrock HTTP face: the four model-invocation-job operations, rest-json.

Routes (botocore's ``bedrock`` client paths, none under ``/v1``)::

    POST /model-invocation-job                      CreateModelInvocationJob
    GET  /model-invocation-job/{jobIdentifier}      GetModelInvocationJob (job id or URL-encoded ARN)
    POST /model-invocation-job/{jobIdentifier}/stop StopModelInvocationJob
    GET  /model-invocation-jobs                     ListModelInvocationJobs
    POST /listTagsForResource                       ListTagsForResource (job ARNs)
    GET|POST /_emu/bedrock                          settings (min_records, s3_endpoint, ...), job count
    POST /model/{modelId}/invoke                    Bedrock Runtime InvokeModel (:mod:`.sync`)
    POST /model/{modelId}/converse                  Bedrock Runtime Converse (:mod:`.sync`)

Errors are AWS-shaped: the status, ``x-amzn-ErrorType: <Name>``, ``x-amzn-RequestId`` and
``{"message": ...}``. SigV4 signatures are never checked; unsigned requests are accepted unless
``require_authorization`` is set, then a missing ``Authorization`` header is a 403
``UnrecognizedClientException``. Server-wide faults (``POST /_emu/faults``) apply here too: ``429``
→ ``ThrottlingException``, ``quota`` → ``ServiceQuotaExceededException``, 500/502/504 →
``InternalServerException``, 503/529 → ``ServiceUnavailableException``, ``reset`` drops the
connection before the request takes effect, and ``drop`` lets the request take effect, then answers
500 ``InternalServerException`` (a lost answer: botocore reads a JSON body cut short as an empty
success, so cutting the body would hide the case a retried create must survive).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..control import settings_route
from ..store import Store
from ..web import inject_fault
from .state import BedrockJobs, attach
from .wire import BedrockError, parse_time, validation

Handler = Callable[[Request, BedrockJobs], Awaitable[Response]]


def _error(err: BedrockError) -> Response:
    return JSONResponse(
        {"message": err.message},
        status_code=err.status,
        headers={**err.headers, "x-amzn-ErrorType": err.name, "x-amzn-RequestId": str(uuid.uuid4())},
    )


def _fault_error(kind: str) -> BedrockError:
    if kind in ("429", "429_long"):
        return BedrockError(429, "ThrottlingException", "Too many requests, please wait before trying again.")
    if kind == "quota":
        return BedrockError(400, "ServiceQuotaExceededException", "Service quota exceeded (emulated fault).")
    if kind in ("503", "529"):
        return BedrockError(503, "ServiceUnavailableException", "Service unavailable (emulated fault).")
    return BedrockError(500, "InternalServerException", f"Internal server error (emulated {kind} fault).")


def _fault_response(kind: str, retry_after: float) -> Response:
    return _error(_fault_error(kind))


def jobs_of(store: Store) -> BedrockJobs:
    return attach(store)


def bedrock_route(method: str, path: str) -> Callable[[Handler], Route]:
    """A Bedrock route: counts the call, checks auth, injects faults, renders errors."""
    label = f"{method} {path}"

    def deco(fn: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            store: Store = request.app.state.store
            jobs = jobs_of(store)
            store.stats.requests[label] += 1
            if jobs.settings.require_authorization and not request.headers.get("authorization"):
                return _error(
                    BedrockError(403, "UnrecognizedClientException", "Missing Authorization header.")
                )
            kind, early = inject_fault(store, method, request, _fault_response)
            if early is not None:
                return early
            try:
                response = await fn(request, jobs)
            except BedrockError as err:
                response = _error(err)
            if kind == "drop":
                lost = "The request was processed but its answer was lost (emulated drop fault)."
                return _error(BedrockError(500, "InternalServerException", lost))
            response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
            return response

        return Route(path, endpoint, methods=[method], name=f"bedrock {label}")

    return deco


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise validation("The request body is not valid JSON.") from None


@bedrock_route("POST", "/model-invocation-job")
async def create_job(request: Request, jobs: BedrockJobs) -> Response:
    job, _ = await jobs.create(await _body(request))
    return JSONResponse({"jobArn": job.job_arn})


@bedrock_route("GET", "/model-invocation-job/{job:path}")
async def get_job(request: Request, jobs: BedrockJobs) -> Response:
    job = jobs.get(request.path_params["job"])
    view = await jobs.settle(job)
    return JSONResponse(jobs.describe(job, view))


@bedrock_route("POST", "/model-invocation-job/{job:path}/stop")
async def stop_job(request: Request, jobs: BedrockJobs) -> Response:
    job = jobs.get(request.path_params["job"])
    await jobs.stop(job)
    return JSONResponse({})


@bedrock_route("GET", "/model-invocation-jobs")
async def list_jobs(request: Request, jobs: BedrockJobs) -> Response:
    q = request.query_params
    try:
        after = parse_time(q["submitTimeAfter"]) if q.get("submitTimeAfter") else None
        before = parse_time(q["submitTimeBefore"]) if q.get("submitTimeBefore") else None
        limit = int(q.get("maxResults", "1000"))
        offset = int(q.get("nextToken") or 0)
    except ValueError as exc:
        raise validation(f"Invalid query parameter: {exc}") from None
    if not 1 <= limit <= 1000:
        raise validation("Value at 'maxResults' failed to satisfy constraint: 1..1000")
    if q.get("sortOrder", "Descending") not in ("Ascending", "Descending"):
        raise validation("Value at 'sortOrder' failed to satisfy constraint")
    matching = jobs.listed(
        after=after,
        before=before,
        status=q.get("statusEquals"),
        name_contains=q.get("nameContains"),
        descending=q.get("sortOrder", "Descending") == "Descending",
    )
    page = matching[offset : offset + limit]
    summaries = [jobs.describe(job, await jobs.settle(job)) for job in page]
    body: dict[str, Any] = {"invocationJobSummaries": summaries}
    if offset + limit < len(matching):
        body["nextToken"] = str(offset + limit)
    return JSONResponse(body)


@bedrock_route("POST", "/listTagsForResource")
async def list_tags(request: Request, jobs: BedrockJobs) -> Response:
    arn = str((await _body(request)).get("resourceARN") or "")
    return JSONResponse({"tags": jobs.get(arn).tags})


ROUTES = [
    create_job,
    list_jobs,
    stop_job,
    get_job,
    list_tags,
    settings_route("/_emu/bedrock", jobs_of, "jobs"),
]
