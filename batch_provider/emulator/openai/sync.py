"""OpenAI's synchronous endpoints: ``POST /v1/chat/completions``, ``/v1/responses``,
``/v1/embeddings``.

An answer is exactly the ``response.body`` a batch line with the same body gets (the same
generator, :func:`.answers.openai_response`), so a row answered here or in a batch reads the same.
Rate limits, latency and counts are :mod:`..sync_limits`'; auth and server-wide faults the
OpenAI face's own (:func:`..web.api_route`).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import models
from ..errors import ApiError
from ..invalid_answers import corrupt_openai
from ..store import Store
from ..sync_limits import admit, attach, invalid_kind, retry_headers
from ..web import api_route, json_body
from . import answers


async def _answer(endpoint: str, request: Request, store: Store) -> Response:
    body = await json_body(request)
    if not isinstance(body, dict) or not body.get("model"):
        raise ApiError(400, "you must provide a model parameter", param="model")
    if endpoint == "/v1/embeddings" and body.get("input") in (None, "", []):
        raise ApiError(400, "'input' is a required property", param="input")
    if endpoint != "/v1/embeddings" and not (body.get("messages") or body.get("input")):
        raise ApiError(400, "'messages' is a required property", param="messages")
    cfg = store.config
    if not models.serves(cfg, "openai", body["model"]):
        raise ApiError(404, models.openai_message(str(body["model"])), code="model_not_found", param="model")
    answer, in_tok, out_tok = answers.openai_response(
        endpoint, body, cfg.seed, int(time.time()), cfg.embedding_dim
    )
    corrupt_openai(answer, invalid_kind(store, body))
    wait = await admit(request, in_tok + out_tok)
    if wait is not None:
        raise ApiError(
            429,
            f"Rate limit reached for requests on this key. Please try again in {wait:.3g}s.",
            "requests",
            code="rate_limit_exceeded",
            headers=retry_headers(wait),
        )
    attach(store).count(body)
    return JSONResponse(answer)


@api_route("openai", "POST", "/v1/chat/completions")
async def chat_completions(request: Request, store: Store) -> Response:
    return await _answer("/v1/chat/completions", request, store)


@api_route("openai", "POST", "/v1/responses")
async def responses(request: Request, store: Store) -> Response:
    return await _answer("/v1/responses", request, store)


@api_route("openai", "POST", "/v1/embeddings")
async def embeddings(request: Request, store: Store) -> Response:
    return await _answer("/v1/embeddings", request, store)


ROUTES: list[Any] = [chat_completions, responses, embeddings]
