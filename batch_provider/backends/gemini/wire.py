"""Gemini Developer API wire format: request translation, batch states, result lines, display names.

Pure functions only (no HTTP); :mod:`.backend` does the calls.

Invariants:
- A native line is ``{"key": <custom_id>, "request": <GenerateContentRequest>}``, exactly the line
  format of an uploaded batch input file, so a part file is uploaded as is. Inline mode wraps each
  line as ``{"request": ..., "metadata": {"key": ...}}`` (the API echoes ``metadata`` on each
  inlined response).
- The model is never written into the line: it is the batch's (``models/{model}:batchGenerateContent``)
  and the line's ``group``.
- ``Usage.input_tokens`` excludes cached prompt tokens (``promptTokenCount`` counts them), and
  ``output_tokens`` includes thinking tokens (billed as output).
- A display name holds space-separated ``name=value`` tags, ``bp_run`` and ``bp_chunk`` first, so
  :func:`tags_of_display_name` reads back exactly the tags :func:`display_name` kept.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Mapping
from typing import Any

from batch_provider.backends.wire import (
    counts_of_totals,
    failed,
    parse_timestamp,
    string_field_reader,
    succeeded,
    usage,
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

PROVIDER = "gemini"
DISPLAY_NAME_MAX = 128
"""Assumed limit of ``displayName`` (Google's resource display names are usually 128 characters)."""
_WHITESPACE = re.compile(r"\s+")

_STATES: dict[str, tuple[BatchStatus, BatchEnding | None]] = {
    "PENDING": (BatchStatus.PENDING, None),
    "QUEUED": (BatchStatus.PENDING, None),
    "RUNNING": (BatchStatus.RUNNING, None),
    "UPDATING": (BatchStatus.RUNNING, None),
    "PAUSED": (BatchStatus.RUNNING, None),
    "CANCELLING": (BatchStatus.FINALIZING, None),
    "SUCCEEDED": (BatchStatus.ENDED, BatchEnding.COMPLETED),
    "PARTIALLY_SUCCEEDED": (BatchStatus.ENDED, BatchEnding.COMPLETED),
    "FAILED": (BatchStatus.ENDED, BatchEnding.FAILED),
    "CANCELLED": (BatchStatus.ENDED, BatchEnding.CANCELLED),
    "EXPIRED": (BatchStatus.ENDED, BatchEnding.EXPIRED),
}
GRPC_CODES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
_RETRYABLE_STATUSES = frozenset(
    {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN"}
)


# ----------------------------------------------------------------------------- translation


def _part(part: Any, custom_id: str) -> dict[str, Any]:
    if not isinstance(part, ImagePart):
        return {"text": part.text}
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    assert part.url is not None
    mime = part.media_type or mimetypes.guess_type(part.url)[0]
    if not mime:
        raise RequestRejected(
            custom_id, "messages", f"image URL {part.url[:80]!r} needs 'media_type' (Gemini fileData)"
        )
    return {"fileData": {"mimeType": mime, "fileUri": part.url}}


def _content(message: Message, custom_id: str) -> dict[str, Any]:
    role = "model" if message.role == "assistant" else "user"
    if isinstance(message.content, str):
        return {"role": role, "parts": [{"text": message.content}]}
    return {"role": role, "parts": [_part(p, custom_id) for p in message.content]}


def _merge(body: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """``extra`` over ``body``; nested objects (``generationConfig``) are merged one level deep."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value


def generate_content_request(request: LLMRequest) -> tuple[dict[str, Any], str | None]:
    """(GenerateContentRequest body, model) for one request; raises ``RequestRejected``."""
    cid = request.custom_id
    if request.kind is RequestKind.EMBEDDING:
        raise RequestRejected(cid, "kind", "the Gemini backend sends generateContent requests only")
    if request.native is not None:
        body = dict(request.native)
        model = body.pop("model", None) or request.model
        if request.max_tokens is not None:
            config = dict(body.get("generationConfig") or {})
            config.setdefault("maxOutputTokens", request.max_tokens)
            body["generationConfig"] = config
    else:
        model = request.model
        contents = [_content(m, cid) for m in request.messages]
        if not contents and isinstance(request.input, str) and request.input:
            contents = [{"role": "user", "parts": [{"text": request.input}]}]
        body = {"contents": contents}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": text} for text in request.system_blocks()]}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.stop:
            config["stopSequences"] = request.stop
        if request.response_schema is not None:
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = request.response_schema
        if config:
            body["generationConfig"] = config
    _merge(body, request.extra)
    if isinstance(body.get("model"), str):
        model = body.pop("model")
    if not body.get("contents"):
        raise RequestRejected(cid, "messages", "no messages given (Gemini 'contents' is empty)")
    max_out = (body.get("generationConfig") or {}).get("maxOutputTokens")
    if max_out is not None and (not isinstance(max_out, int) or max_out < 1):
        raise RequestRejected(cid, "max_tokens", f"must be at least 1, got {max_out!r}")
    return body, (str(model).removeprefix("models/") if model else None)


key_of_line = string_field_reader("key")
"""The ``key`` of a native line, read from its fixed prefix when possible."""


def inline_request(line: bytes) -> bytes:
    """A native line as one entry of ``inputConfig.requests.requests``."""
    decoded = json.loads(line)
    entry = {"request": decoded["request"], "metadata": {"key": decoded["key"]}}
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()


def wants_json(line: bytes) -> bool:
    if b"application/json" not in line:
        return False
    config = (json.loads(line).get("request") or {}).get("generationConfig") or {}
    return config.get("responseMimeType") == "application/json"


# ----------------------------------------------------------------------------- display names


def clean_tag(value: str) -> str:
    """A tag name or value as written in a display name (whitespace becomes ``_``)."""
    return _WHITESPACE.sub("_", str(value))


def display_name(tags: Mapping[str, str], limit: int = DISPLAY_NAME_MAX) -> str:
    """``bp_run=… bp_chunk=… other=…``: the identifying tags first; any other tag only while the
    name stays within ``limit`` characters (a tag that does not fit is left out, never cut)."""
    ordered = sorted(tags.items(), key=lambda kv: (kv[0] not in ("bp_run", "bp_chunk"), kv[0] != "bp_run"))
    out = ""
    for key, value in ordered:
        token = f"{clean_tag(key).replace('=', '_')}={clean_tag(value)}"
        candidate = f"{out} {token}" if out else token
        if len(candidate) > limit:
            if key in ("bp_run", "bp_chunk"):
                raise ValueError(f"tag {key}={value!r} does not fit in a {limit}-character display name")
            continue
        out = candidate
    return out or "batch-provider"


def tags_of_display_name(name: str | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for token in (name or "").split():
        key, sep, value = token.partition("=")
        if sep:
            tags[key] = value
    return tags


# ----------------------------------------------------------------------------- batch objects


def batch_of(operation: dict[str, Any]) -> dict[str, Any]:
    """The ``GenerateContentBatch`` of an operation (``metadata``), or the object itself."""
    metadata = operation.get("metadata")
    if isinstance(metadata, dict) and ("state" in metadata or "model" in metadata):
        return {**metadata, "name": metadata.get("name") or operation.get("name")}
    return operation


def native_state(batch: dict[str, Any]) -> str:
    return str(batch.get("state") or "BATCH_STATE_UNSPECIFIED")


def _short_state(native: str) -> str:
    return native.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _count(stats: dict[str, Any], name: str) -> int:
    return _int(stats.get(name))


def state_of(operation: dict[str, Any]) -> BatchState:
    """The normalised state of a batch operation (or of a bare ``GenerateContentBatch``)."""
    batch = batch_of(operation)
    native = native_state(batch)
    status, ending = _STATES.get(_short_state(native), (BatchStatus.RUNNING, None))
    stats = batch.get("batchStats") or {}
    counts = counts_of_totals(
        _count(stats, "requestCount"),
        _count(stats, "successfulRequestCount"),
        _count(stats, "failedRequestCount"),
        status,
        ending,
    )
    error = operation.get("error") or batch.get("error") or {}
    message = str(error.get("message") or "") or None if isinstance(error, dict) else None
    return BatchState(
        batch_id=str(batch.get("name") or operation.get("name")),
        status=status,
        ending=ending,
        native_status=native,
        counts=counts,
        error_message=message,
        retryable=ending is BatchEnding.FAILED
        and isinstance(error, dict)
        and _status_name(error, _int(error.get("code"))) == "RESOURCE_EXHAUSTED",
        created_at=parse_timestamp(batch.get("createTime")),
        ended_at=parse_timestamp(batch.get("endTime")) if status is BatchStatus.ENDED else None,
    )


# ----------------------------------------------------------------------------- results


def _finish_reason(candidate: dict[str, Any]) -> str | None:
    reason = candidate.get("finishReason")
    return str(reason).lower() if reason else None


def _status_name(error: dict[str, Any], code: int) -> str:
    """The canonical status: given as ``status`` (REST envelopes) or from a gRPC ``code``."""
    if error.get("status"):
        return str(error["status"])
    return GRPC_CODES.get(code, "") if 0 < code < 100 else ""


def error_record(key: str, batch_id: str, error: Any, raw: dict[str, Any], model: str | None) -> ResultRecord:
    """An item error: a ``google.rpc.Status`` (gRPC ``code``, ``message``), or an HTTP-style
    ``{"code": 500, "status": "INTERNAL"}``; both are read."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    try:
        code = int(error.get("code") or 0)
    except (TypeError, ValueError):
        code = 0
    status = _status_name(error, code)
    http_retryable = code >= 100 and (code in (408, 429) or code >= 500)
    return failed(
        key,
        PROVIDER,
        batch_id,
        status=ItemStatus.ERRORED,
        type=status or (f"http_{code}" if code else "request_error"),
        message=str(error.get("message") or status or "the request failed"),
        retryable=status in _RETRYABLE_STATUSES or http_retryable,
        code=str(code) if code else None,
        raw=raw,
        model=model,
    )


def response_record(key: str, batch_id: str, response: dict[str, Any], model: str | None) -> ResultRecord:
    """A ``GenerateContentResponse`` as a record; a response without candidates (a blocked
    prompt) is an error, not retryable."""
    candidates = response.get("candidates") or []
    raw_usage = response.get("usageMetadata") or {}
    model = str(response.get("modelVersion") or model or "") or None
    if not candidates:
        feedback = response.get("promptFeedback") or {}
        reason = str(feedback.get("blockReason") or "NO_CANDIDATES")
        return failed(
            key,
            PROVIDER,
            batch_id,
            status=ItemStatus.ERRORED,
            type="blocked",
            message=f"the response has no candidates ({reason})",
            retryable=False,
            code=reason,
            raw=response,
            model=model,
        )
    first = candidates[0]
    parts = (first.get("content") or {}).get("parts") or []
    text = "".join(p.get("text") or "" for p in parts if isinstance(p, dict) and not p.get("thought"))
    cached = int(raw_usage.get("cachedContentTokenCount") or 0)
    prompt = int(raw_usage.get("promptTokenCount") or 0) + int(raw_usage.get("toolUsePromptTokenCount") or 0)
    output = int(raw_usage.get("candidatesTokenCount") or 0) + int(raw_usage.get("thoughtsTokenCount") or 0)
    return succeeded(
        key,
        PROVIDER,
        batch_id,
        output_text=text,
        finish_reason=_finish_reason(first),
        usage=usage(max(0, prompt - cached), output, cached),
        raw=response,
        model=model,
    )


def record_of(line: dict[str, Any], batch_id: str, model: str | None = None) -> ResultRecord:
    """One results-file line (``{"key", "response" | "error"}``) or one inlined response
    (``{"metadata": {"key"}, "response" | "error"}``) as a record."""
    key = line.get("key")
    if key is None:
        key = (line.get("metadata") or {}).get("key")
    key = str(key)
    if line.get("error") is not None or not isinstance(line.get("response"), dict):
        return error_record(key, batch_id, line.get("error") or {"message": "no response"}, line, model)
    return response_record(key, batch_id, line["response"], model)
