"""OpenAI Batch API wire format: request translation, batch states, result lines.

Pure functions only (no HTTP); :mod:`.backend` does the calls.

Invariants:
- A native line is ``{"custom_id", "method": "POST", "url": <endpoint>, "body": <request body>}``;
  ``url`` keeps its ``/v1/...`` form and is one of :data:`BATCH_ENDPOINTS`. Only chat
  completions, responses and embeddings are built from neutral fields; any other endpoint needs a
  ``native`` body.
- Every body names its ``model``: a batch holds one model and one endpoint.
- Usage: ``input_tokens`` excludes cached prompt tokens (``prompt_tokens - cached_tokens``) so that
  ``Usage.total_tokens`` counts every token once, as for Anthropic.
- Per-item ``retryable``: HTTP 408/409/429/5xx and ``batch_expired`` / ``batch_cancelled`` lines
  are retryable; any other 4xx is not.
- A chat completion, the bulk of most runs, becomes a record from one flat dict validated in one
  call (no intermediate objects).
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from batch_provider.backends.wire import (
    counts_of_totals,
    failed,
    fill_missing,
    parse_timestamp,
    schema_name,
    succeeded,
    usage,
    validate_record,
)
from batch_provider.core.errors import RequestRejected
from batch_provider.core.models import (
    BatchEnding,
    BatchState,
    BatchStatus,
    ImagePart,
    ItemStatus,
    LLMRequest,
    Message,
    RequestKind,
    ResultRecord,
)
from batch_provider.core.output_type import strict_allowed

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT, RESPONSES, EMBEDDINGS)
BATCH_ENDPOINTS = (
    *ENDPOINTS,
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
"""Endpoints the Batch API accepts; native bodies may target any of them."""
_BATCH_ENDPOINT_SET = frozenset(BATCH_ENDPOINTS)
_EMBEDDING = RequestKind.EMBEDDING

_STATUS: dict[str, tuple[BatchStatus, BatchEnding | None]] = {
    "validating": (BatchStatus.PENDING, None),
    "in_progress": (BatchStatus.RUNNING, None),
    "finalizing": (BatchStatus.FINALIZING, None),
    "cancelling": (BatchStatus.FINALIZING, None),
    "completed": (BatchStatus.ENDED, BatchEnding.COMPLETED),
    "expired": (BatchStatus.ENDED, BatchEnding.EXPIRED),
    "cancelled": (BatchStatus.ENDED, BatchEnding.CANCELLED),
    "failed": (BatchStatus.ENDED, BatchEnding.FAILED),
}
_RETRYABLE_LINE_STATUSES = frozenset({408, 409, 429})
_UNRUN_CODES = {"batch_expired": ItemStatus.EXPIRED, "batch_cancelled": ItemStatus.CANCELLED}
_EMPTY: dict[str, Any] = {}  # read-only stand-in for a missing object


# ----------------------------------------------------------------------------- translation


def _image_url(part: ImagePart) -> str:
    return part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"


def _chat_content(message: Message) -> Any:
    if isinstance(message.content, str):
        return message.content
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
        else:
            parts.append({"type": "text", "text": part.text})
    return parts


def _responses_content(message: Message) -> Any:
    if isinstance(message.content, str):
        return message.content
    text_type = "output_text" if message.role == "assistant" else "input_text"
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            parts.append({"type": "input_image", "image_url": _image_url(part)})
        else:
            parts.append({"type": text_type, "text": part.text})
    return parts


def request_body(request: LLMRequest) -> tuple[str, dict[str, Any]]:
    """(endpoint, body) of one request, ``extra`` merged over the body; raises
    ``RequestRejected`` naming the field (endpoint, messages, input, stop or model)."""
    endpoint = request.endpoint or (EMBEDDINGS if request.kind is _EMBEDDING else CHAT)
    if endpoint not in _BATCH_ENDPOINT_SET:
        raise RequestRejected(
            request.custom_id,
            "endpoint",
            f"{endpoint!r} is not a Batch API endpoint; use one of {', '.join(BATCH_ENDPOINTS)}",
        )
    if request.native is not None:
        body = _native_body(request, endpoint)
    elif endpoint == CHAT:
        body = _chat_body(request)
    elif endpoint == RESPONSES:
        body = _responses_body(request)
    elif endpoint == EMBEDDINGS:
        body = _embeddings_body(request)
    else:
        raise RequestRejected(
            request.custom_id,
            "endpoint",
            f"{endpoint!r} needs a native body; known: {', '.join(ENDPOINTS)}",
        )
    if request.extra:
        body.update(request.extra)
    if not body.get("model"):
        raise RequestRejected(request.custom_id, "model", "no model given")
    return endpoint, body


def _native_body(request: LLMRequest, endpoint: str) -> dict[str, Any]:
    body = dict(request.native or {})
    fill_missing(body, "model", request.model)
    if endpoint == CHAT:
        if "max_tokens" not in body:
            fill_missing(body, "max_completion_tokens", request.max_tokens)
        if not body.get("messages"):
            raise RequestRejected(request.custom_id, "messages", "the native body has no messages")
    elif endpoint == RESPONSES:
        fill_missing(body, "max_output_tokens", request.max_tokens)
        if not body.get("input"):
            raise RequestRejected(request.custom_id, "input", "the native body has no input")
    elif endpoint == EMBEDDINGS and not body.get("input"):
        raise RequestRejected(request.custom_id, "input", "the native body has no input")
    return body


def _strict_if_allowed(schema: dict[str, Any]) -> dict[str, Any]:
    """``{"strict": True}`` when OpenAI's strict mode accepts the schema, else nothing (the
    default, non-strict; left out so bodies of such schemas stay as they were)."""
    return {"strict": True} if strict_allowed(schema) else {}


def _chat_body(request: LLMRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if isinstance(request.system, str) and request.system:
        messages.append({"role": "system", "content": request.system})
    elif request.system:  # blocks: text parts, the shared (cacheable) prefix first
        parts = [{"type": "text", "text": text} for text in request.system_blocks()]
        messages.append({"role": "system", "content": parts})
    messages.extend({"role": m.role, "content": _chat_content(m)} for m in request.messages)
    if not request.messages:
        if isinstance(request.input, str) and request.input:
            messages.append({"role": "user", "content": request.input})
        else:
            raise RequestRejected(request.custom_id, "messages", "no messages given")
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    fill_missing(body, "max_completion_tokens", request.max_tokens)
    fill_missing(body, "temperature", request.temperature)
    if request.stop:
        body["stop"] = request.stop
    if request.response_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": schema_name(request.response_schema),
                "schema": request.response_schema,
                **_strict_if_allowed(request.response_schema),
            },
        }
    return body


def _responses_body(request: LLMRequest) -> dict[str, Any]:
    if request.stop:
        raise RequestRejected(request.custom_id, "stop", "/v1/responses has no stop sequences")
    if request.messages:
        items: Any = [{"role": m.role, "content": _responses_content(m)} for m in request.messages]
    elif isinstance(request.input, str) and request.input:
        items = request.input
    else:
        raise RequestRejected(request.custom_id, "input", "no messages or input given")
    body: dict[str, Any] = {"model": request.model, "input": items}
    fill_missing(body, "instructions", request.system_text())
    fill_missing(body, "max_output_tokens", request.max_tokens)
    fill_missing(body, "temperature", request.temperature)
    if request.response_schema is not None:
        body["text"] = {
            "format": {
                "type": "json_schema",
                "name": schema_name(request.response_schema),
                "schema": request.response_schema,
                **_strict_if_allowed(request.response_schema),
            }
        }
    return body


def _embeddings_body(request: LLMRequest) -> dict[str, Any]:
    if not request.input:
        raise RequestRejected(request.custom_id, "input", "embeddings need a non-empty input")
    return {"model": request.model, "input": request.input}


def wants_json(line: bytes) -> bool:
    """Whether the native line asked for JSON-schema output (its text is parsed as JSON)."""
    if b'"json_schema"' not in line:
        return False
    body = json.loads(line).get("body") or {}
    fmt = (body.get("response_format") or {}).get("type") or (
        (body.get("text") or {}).get("format") or {}
    ).get("type")
    return fmt == "json_schema"


# ----------------------------------------------------------------------------- batch objects


def state_of(batch: dict[str, Any]) -> BatchState:
    """The normalised state of a native Batch object."""
    native = str(batch.get("status"))
    status, ending = _STATUS.get(native, (BatchStatus.RUNNING, None))
    raw_counts = batch.get("request_counts") or {}
    counts = counts_of_totals(
        int(raw_counts.get("total") or 0),
        int(raw_counts.get("completed") or 0),
        int(raw_counts.get("failed") or 0),
        status,
        ending,
    )
    errors = ((batch.get("errors") or {}).get("data")) or []
    codes = {str(e.get("code")) for e in errors}
    message = "; ".join(str(e.get("message") or e.get("code")) for e in errors[:3]) or None
    if message and len(errors) > 3:
        message += f" (and {len(errors) - 3} more)"
    return BatchState(
        batch_id=batch["id"],
        status=status,
        ending=ending,
        native_status=native,
        counts=counts,
        error_message=message,
        retryable=ending is BatchEnding.FAILED and codes == {"token_limit_exceeded"},
        created_at=parse_timestamp(batch.get("created_at")),
        ended_at=parse_timestamp(
            batch.get("completed_at")
            or batch.get("failed_at")
            or batch.get("expired_at")
            or batch.get("cancelled_at")
        ),
        expires_at=parse_timestamp(batch.get("expires_at")),
    )


# ----------------------------------------------------------------------------- results


def _vector(value: Any) -> list[float] | None:
    """An embedding as floats; ``encoding_format: base64`` gives little-endian float32 bytes."""
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return value


def record_of(line: dict[str, Any], batch_id: str, provider: str) -> ResultRecord:
    """One output- or error-file line as a record of ``provider`` (``openai`` or
    ``openai_compatible``: the wire format is the same)."""
    custom_id = str(line.get("custom_id"))
    response = line.get("response")
    if response is None:
        error = line.get("error") or {}
        code = str(error.get("code") or "unknown")
        return failed(
            custom_id,
            provider,
            batch_id,
            status=_UNRUN_CODES.get(code, ItemStatus.ERRORED),
            type=code,
            message=str(error.get("message") or code),
            retryable=code in _UNRUN_CODES,
            code=code,
            raw=line,
        )
    status_code = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    if not 200 <= status_code < 300:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        return failed(
            custom_id,
            provider,
            batch_id,
            status=ItemStatus.ERRORED,
            type=str(error.get("type") or f"http_{status_code}"),
            message=str(error.get("message") or f"HTTP {status_code}"),
            retryable=status_code >= 500 or status_code in _RETRYABLE_LINE_STATUSES,
            code=str(code) if code is not None else str(status_code),
            field=error.get("param"),
            raw=body if isinstance(body, dict) else None,
            model=None,
        )
    return _success(custom_id, provider, batch_id, body)


def _success(custom_id: str, provider: str, batch_id: str, body: dict[str, Any]) -> ResultRecord:
    kind = body.get("object")
    raw_usage = body.get("usage") or _EMPTY
    if kind == "list":  # embeddings
        vectors = [_vector(item.get("embedding")) for item in body.get("data") or []]
        return succeeded(
            custom_id,
            provider,
            batch_id,
            embedding=vectors[0] if len(vectors) == 1 else None,
            parsed=vectors if len(vectors) > 1 else None,
            usage=usage(raw_usage.get("prompt_tokens") or raw_usage.get("input_tokens") or 0),
            raw=body,
            model=body.get("model"),
        )
    if kind == "response":  # /v1/responses
        texts = [
            part.get("text") or ""
            for item in body.get("output") or []
            if item.get("type") == "message"
            for part in item.get("content") or []
            if part.get("type") == "output_text"
        ]
        cached = (raw_usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
        incomplete = (body.get("incomplete_details") or {}).get("reason")
        return succeeded(
            custom_id,
            provider,
            batch_id,
            output_text="".join(texts),
            finish_reason=incomplete or body.get("status"),
            usage=usage(
                (raw_usage.get("input_tokens") or 0) - cached, raw_usage.get("output_tokens"), cached
            ),
            raw=body,
            model=body.get("model"),
        )
    # Chat completions, the bulk of most runs: one flat dict validated in one call.
    choices = body.get("choices")
    choice = choices[0] if choices else _EMPTY
    message = choice.get("message") or _EMPTY
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    details = raw_usage.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") or 0) if details else 0
    return validate_record(
        {
            "custom_id": custom_id,
            "status": "succeeded",
            "provider": provider,
            "batch_id": batch_id,
            "output_text": content,
            "finish_reason": choice.get("finish_reason"),
            "raw": body,
            "model": body.get("model"),
            "usage": {
                "input_tokens": (raw_usage.get("prompt_tokens") or 0) - cached,
                "output_tokens": raw_usage.get("completion_tokens") or 0,
                "cache_read_tokens": cached,
            },
        }
    )
