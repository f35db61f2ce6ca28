"""Vertex AI's synchronous endpoint ``POST /{v1|v1beta1}/projects/{project}/locations/{location}``
``/publishers/google/models/{model}:generateContent``.

The answer is the ``response`` a batch prediction line with the same request and model gets (the
Gemini face's generator, :func:`..gemini.outputs.generate`, with the model id as the Vertex batch
face passes it). Rate limits, latency, counts and ``invalid_output`` draws are
:mod:`..sync_limits`' (per bearer token); token check and server-wide faults the Vertex face's
own (:func:`.routes.vertex_route`). A request's ``labels`` are accepted and do not change the
answer, as on a batch line.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import models
from ..gemini.files import GeminiError, invalid
from ..gemini.outputs import generate, request_problem
from ..gemini.routes import _json
from ..sync_limits import admit, attach, invalid_kind, retry_headers
from .create import PUBLISHER_PREFIX
from .routes import vertex_route
from .state import VertexJobs

GENERATE = "/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent"


@vertex_route("POST", GENERATE)
async def generate_content(request: Request, jobs: VertexJobs) -> Response:
    project, location = request.path_params["project"], request.path_params["location"]
    model = request.path_params["model"]
    if not models.serves(jobs.cfg, "gemini", model):
        raise GeminiError(
            404,
            "NOT_FOUND",
            f"Publisher Model `projects/{project}/locations/{location}/{PUBLISHER_PREFIX}{model}` was not "
            "found or your project does not have access to it.",
        )
    body = await _json(request)
    if not isinstance(body, dict):
        raise invalid("the request body must be a GenerateContentRequest object")
    problem = request_problem(body)
    if problem:
        raise invalid(problem)
    counted = {"model": PUBLISHER_PREFIX + model, **body}
    spoil = invalid_kind(jobs.store, counted)
    answer = await asyncio.to_thread(generate, body, model, jobs.cfg.seed, None, spoil)
    wait = await admit(request, int(answer["usageMetadata"].get("totalTokenCount") or 0))
    if wait is not None:
        err = GeminiError(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource exhausted. Please try again later.",
            headers=retry_headers(wait),
        )
        err.details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait:.3g}s"}]
        raise err
    attach(jobs.store).count(counted)
    return JSONResponse(answer)


ROUTES: list[Any] = [*generate_content]
