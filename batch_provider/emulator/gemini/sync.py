"""Gemini's synchronous endpoint ``POST /v1beta/models/{model}:generateContent``.

The answer is the ``GenerateContentResponse`` a batch request with the same body and model gets
(:func:`.outputs.generate`, model named ``models/<id>`` as the batch face names it). Rate
limits, latency and counts are :mod:`.sync_limits`'; key check and server-wide faults the Gemini
face's own (:func:`.gemini_routes.gemini_route`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import models
from ..sync_limits import admit, attach, invalid_kind, retry_headers
from .files import GeminiError, invalid
from .outputs import generate, request_problem
from .routes import V, _json, gemini_route
from .state import GeminiBatches


@gemini_route("POST", V + "/models/{model}:generateContent")
async def generate_content(request: Request, batches: GeminiBatches) -> Response:
    model = request.path_params["model"]
    if not models.serves(batches.cfg, "gemini", model):
        raise GeminiError(404, "NOT_FOUND", models.gemini_message(model))
    body = await _json(request)
    problem = request_problem(body)
    if problem:
        raise invalid(problem)
    name = model if model.startswith("models/") else f"models/{model}"
    spoil = invalid_kind(batches.store, {"model": name, **body})
    answer = await asyncio.to_thread(generate, body, name, batches.cfg.seed, None, spoil)
    usage = answer["usageMetadata"]
    wait = await admit(request, int(usage.get("totalTokenCount") or 0))
    if wait is not None:
        err = GeminiError(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
            headers=retry_headers(wait),
        )
        err.details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait:.3g}s"}]
        raise err
    attach(batches.store).count({"model": name, **body})
    return JSONResponse(answer)


ROUTES: list[Any] = [generate_content]
