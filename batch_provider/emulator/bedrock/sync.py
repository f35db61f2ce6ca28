"""Bedrock Runtime's synchronous endpoints ``POST /model/{modelId}/invoke`` (``InvokeModel``) and
``POST /model/{modelId}/converse`` (``Converse``).

``InvokeModel``'s body is a model's native request, the ``modelInput`` of a batch record; the
answer is the ``modelOutput`` a job's record with that ``modelInput`` and model gets
(:func:`.outputs.model_output`, the family read from the model id as for an ``InvokeModel`` job),
with the token counts in the ``X-Amzn-Bedrock-Input-Token-Count`` / ``-Output-Token-Count``
headers as Bedrock sends them. ``Converse``'s body is a Converse request, the ``modelInput`` of a
``Converse`` job's record, and its answer that record's ``modelOutput`` with ``metrics``. No
prompt cache is shared between calls (a job's records share one).

Rate limits, latency, counts and ``invalid_output`` draws are :mod:`..sync_limits`', per AWS access
key id (read from the SigV4 ``Authorization`` header's ``Credential=``; a bearer API key is its own
key). Auth, server-wide faults and the AWS error shape are the Bedrock face's
(:func:`.routes.bedrock_route`). Refusals as Bedrock gives them: an unknown model or a body the
model cannot take is a 400 ``ValidationException``; over the limits a 429 ``ThrottlingException``
(``x-amzn-ErrorType: ThrottlingException:...``, with ``Retry-After``), which botocore maps.

A model id may be an inference profile or an ARN; botocore URL-encodes it in the path and the
route takes it whole (slashes included).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import models
from ..sync_limits import admit, api_key, attach, invalid_kind, retry_headers
from .outputs import family, model_output, record_problem
from .routes import _body, bedrock_route
from .state import BedrockJobs
from .wire import BedrockError, validation

INVOKE = "/model/{model:path}/invoke"
CONVERSE = "/model/{model:path}/converse"
THROTTLED = "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def access_key(request: Request) -> str:
    """The AWS access key id a SigV4-signed request names, else its bearer/API key."""
    found = _CREDENTIAL.search(request.headers.get("authorization", ""))
    return found.group(1) if found else api_key(request)


def token_counts(output: dict[str, Any]) -> tuple[int, int]:
    """(input, output) tokens of a ``modelOutput`` of any family (cache reads and writes count as
    input)."""
    usage = output.get("usage")
    if isinstance(usage, dict) and "input_tokens" in usage:  # Anthropic Messages
        spent = sum(
            int(usage.get(k) or 0) for k in ("cache_creation_input_tokens", "cache_read_input_tokens")
        )
        return int(usage["input_tokens"]) + spent, int(usage.get("output_tokens") or 0)
    if isinstance(usage, dict):  # Nova / Converse
        spent = sum(int(usage.get(k) or 0) for k in ("cacheWriteInputTokens", "cacheReadInputTokens"))
        return int(usage.get("inputTokens") or 0) + spent, int(usage.get("outputTokens") or 0)
    return int(output.get("prompt_token_count") or 0), int(output.get("generation_token_count") or 0)


async def answer(request: Request, jobs: BedrockJobs, kind: str) -> tuple[dict[str, Any], int, int]:
    """(modelOutput, input tokens, output tokens) of this call, admitted and counted; raises the
    refusal Bedrock gives."""
    model_id = request.path_params["model"]
    if not models.serves(jobs.cfg, "bedrock", model_id):
        raise validation(models.BEDROCK_MESSAGE)
    body = await _body(request)
    problem = record_problem(kind, body)
    if problem:
        raise validation(f"Malformed input request: {problem}, please reformat your input and try again.")
    counted = {"model": model_id, **body}
    spoil = invalid_kind(jobs.store, counted)
    output = model_output(kind, model_id, body, jobs.cfg.seed, None, spoil)
    tokens_in, tokens_out = token_counts(output)
    wait = await admit(request, tokens_in + tokens_out, key=access_key(request))
    if wait is not None:
        raise BedrockError(
            429, THROTTLED, "Too many requests, please wait before trying again.", headers=retry_headers(wait)
        )
    attach(jobs.store).count(counted)
    return output, tokens_in, tokens_out


def latency_ms(jobs: BedrockJobs) -> int:
    return int(attach(jobs.store).settings.latency_seconds * 1000)


@bedrock_route("POST", INVOKE)
async def invoke_model(request: Request, jobs: BedrockJobs) -> Response:
    kind = family(request.path_params["model"], "InvokeModel")
    output, tokens_in, tokens_out = await answer(request, jobs, kind)
    return JSONResponse(
        output,
        headers={
            "X-Amzn-Bedrock-Input-Token-Count": str(tokens_in),
            "X-Amzn-Bedrock-Output-Token-Count": str(tokens_out),
            "X-Amzn-Bedrock-Invocation-Latency": str(latency_ms(jobs)),
        },
    )


@bedrock_route("POST", CONVERSE)
async def converse(request: Request, jobs: BedrockJobs) -> Response:
    output, _, _ = await answer(request, jobs, "converse")
    return JSONResponse({**output, "metrics": {"latencyMs": latency_ms(jobs)}})


ROUTES: list[Any] = [invoke_model, converse]
