"""Anthropic's synchronous endpoint ``POST /v1/messages``.

The message is the one a batch request with the same ``params`` gets
(:func:`.outputs.anthropic_message`), with ``service_tier: "standard"``. Rate limits, latency and
counts are :mod:`.sync_limits`'; auth and server-wide faults the Anthropic face's own.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import models, outputs
from ..errors import ApiError
from ..invalid_answers import corrupt_anthropic
from ..store import Store
from ..sync_limits import admit, attach, invalid_kind, retry_headers
from ..web import api_route, json_body
from .outputs import params_problem


@api_route("anthropic", "POST", "/v1/messages")
async def create_message(request: Request, store: Store) -> Response:
    params = await json_body(request)
    if not isinstance(params, dict):
        raise ApiError(400, "the request body must be a JSON object")
    problem = params_problem(params)
    if problem:
        raise ApiError(400, problem)
    if not models.serves(store.config, "anthropic", params["model"]):
        raise ApiError(404, f"model: {params['model']}", "not_found_error")
    message = outputs.anthropic_message(params, store.config.seed)
    corrupt_anthropic(message, invalid_kind(store, params))
    usage = message["usage"]
    wait = await admit(request, int(usage["input_tokens"]) + int(usage["output_tokens"]))
    if wait is not None:
        raise ApiError(
            429,
            "Number of request tokens has exceeded your per-minute rate limit.",
            "rate_limit_error",
            headers={**retry_headers(wait), "anthropic-ratelimit-requests-remaining": "0"},
        )
    usage["service_tier"] = "standard"
    attach(store).count(params)
    return JSONResponse(message)


ROUTES: list[Any] = [create_message]
