"""OpenAI Batch API backend (and OpenAI-compatible servers speaking the same wire format).

Wire format: spec §A. Paths are relative to a base URL that includes ``/v1`` (the SDK convention),
while line ``url`` and batch ``endpoint`` values keep their ``/v1/...`` form.

Decisions:
- ``group`` is ``"<endpoint> <model>"``: one model and one endpoint per batch, as OpenAI requires.
- ``submit`` tags the batch with ``metadata = tags`` plus ``chunk_index`` (unless a tag already
  uses that key), so :meth:`find` can rebuild a :class:`BatchRef` after a crash.
- A create whose connection broke after sending is not blindly resent: the backend first lists
  recent batches for one made from the same uploaded file and adopts it.
- Usage: ``input_tokens`` excludes cached prompt tokens (``prompt_tokens - cached_tokens``) so that
  ``Usage.total_tokens`` counts every token once, as for Anthropic.
- Per-item ``retryable``: HTTP 408/409/429/5xx and ``batch_expired`` / ``batch_cancelled`` lines
  are retryable; any other 4xx is not.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, ClassVar

import httpx2

from batch_provider.backends.base import BatchBackend, Chunk, EncodedRequest
from batch_provider.backends.errors import ConflictError, InvalidRequestError, NotFoundError, RequestRejected
from batch_provider.backends.transport import ErrorInfo, Transport, TransportPolicy
from batch_provider.backends.wire import (
    check_custom_id,
    check_max_tokens,
    check_size,
    custom_id_of_line,
    encode_line,
    failed,
    fill_missing,
    parse_timestamp,
    read_blocks,
    schema_name,
    stream_records,
    succeeded,
    usage,
    validate_record,
)
from batch_provider.core.limits import LIMITS, ProviderLimits
from batch_provider.core.models import (
    BatchCounts,
    BatchEnding,
    BatchRef,
    BatchState,
    BatchStatus,
    ImagePart,
    ItemStatus,
    LLMRequest,
    Message,
    Provider,
    RequestKind,
    ResultRecord,
)

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
_LIST_PAGE = 100
_EMPTY: dict[str, Any] = {}  # read-only stand-in for a missing object


def _quota_exhausted(response: httpx2.Response, info: ErrorInfo) -> bool:
    return "insufficient_quota" in (info.code or "", info.type or "")


def _vector(value: Any) -> list[float] | None:
    """An embedding as floats; ``encoding_format: base64`` gives little-endian float32 bytes."""
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return value


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


class OpenAIBackend(BatchBackend):
    """OpenAI Batch API on one pooled ``httpx2.AsyncClient``. The API key lives only in the
    client's ``Authorization`` header."""

    provider: ClassVar[Provider] = Provider.OPENAI
    keeps_tags: ClassVar[bool] = True
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"
    body_overhead_bytes: ClassVar[int] = 512
    """Upper bound of the multipart framing around the part file, counted against the byte limit."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        policy: TransportPolicy | None = None,
        limits: ProviderLimits | None = None,
        client: httpx2.AsyncClient | None = None,
        organization: str | None = None,
        project: str | None = None,
        completion_window: str = "24h",
    ) -> None:
        self.limits = limits or LIMITS[self.provider]
        self._provider_name = self.provider.value
        self.completion_window = completion_window
        headers: dict[str, str] = {}
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        credentials = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = Transport(
            provider=self.provider.value,
            base_url=base_url or self.default_base_url,
            credential_headers=credentials,
            headers=headers,
            policy=policy,
            client=client,
            quota_exhausted=_quota_exhausted,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._http.base_url!r})"

    # ----------------------------------------------------------------- translation

    def encode(self, request: LLMRequest) -> EncodedRequest:
        check_custom_id(request, self.limits)
        check_max_tokens(request)
        endpoint = request.endpoint or (EMBEDDINGS if request.kind is _EMBEDDING else CHAT)
        if endpoint not in _BATCH_ENDPOINT_SET:
            raise RequestRejected(
                request.custom_id,
                "endpoint",
                f"{endpoint!r} is not a Batch API endpoint; use one of {', '.join(BATCH_ENDPOINTS)}",
            )
        if request.native is not None:
            body = self._native_body(request, endpoint)
        elif endpoint == CHAT:
            body = self._chat_body(request)
        elif endpoint == RESPONSES:
            body = self._responses_body(request)
        elif endpoint == EMBEDDINGS:
            body = self._embeddings_body(request)
        else:
            raise RequestRejected(
                request.custom_id,
                "endpoint",
                f"{endpoint!r} needs a native body; known: {', '.join(ENDPOINTS)}",
            )
        if request.extra:
            body.update(request.extra)
        model = body.get("model")
        if not model:
            raise RequestRejected(request.custom_id, "model", "no model given")
        line = encode_line({"custom_id": request.custom_id, "method": "POST", "url": endpoint, "body": body})
        check_size(request.custom_id, line, self.limits)
        return EncodedRequest(
            custom_id=request.custom_id,
            line=line,
            group=f"{endpoint} {model}",
            model=str(model),
            endpoint=endpoint,
        )

    def _native_body(self, request: LLMRequest, endpoint: str) -> dict[str, Any]:
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

    def _chat_body(self, request: LLMRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
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
                },
            }
        return body

    def _responses_body(self, request: LLMRequest) -> dict[str, Any]:
        if request.stop:
            raise RequestRejected(request.custom_id, "stop", "/v1/responses has no stop sequences")
        if request.messages:
            items: Any = [{"role": m.role, "content": _responses_content(m)} for m in request.messages]
        elif isinstance(request.input, str) and request.input:
            items = request.input
        else:
            raise RequestRejected(request.custom_id, "input", "no messages or input given")
        body: dict[str, Any] = {"model": request.model, "input": items}
        fill_missing(body, "instructions", request.system)
        fill_missing(body, "max_output_tokens", request.max_tokens)
        fill_missing(body, "temperature", request.temperature)
        if request.response_schema is not None:
            body["text"] = {
                "format": {
                    "type": "json_schema",
                    "name": schema_name(request.response_schema),
                    "schema": request.response_schema,
                }
            }
        return body

    def _embeddings_body(self, request: LLMRequest) -> dict[str, Any]:
        if not request.input:
            raise RequestRejected(request.custom_id, "input", "embeddings need a non-empty input")
        return {"model": request.model, "input": request.input}

    def custom_id_of(self, line: bytes) -> str:
        return custom_id_of_line(line)

    def wants_json(self, line: bytes) -> bool:
        """Whether the encoded request asked for JSON-schema output (its text is parsed as JSON)."""
        if b'"json_schema"' not in line:
            return False
        body = json.loads(line).get("body") or {}
        fmt = (body.get("response_format") or {}).get("type") or (
            (body.get("text") or {}).get("format") or {}
        ).get("type")
        return fmt == "json_schema"

    # ----------------------------------------------------------------- operations

    async def submit(self, chunk: Chunk, *, tags: Mapping[str, str]) -> BatchRef:
        if not chunk.endpoint:
            raise ValueError("an OpenAI chunk needs its endpoint")
        uploaded = await self._upload(chunk)
        metadata = dict(tags)
        metadata.setdefault("chunk_index", str(chunk.index))
        payload = {
            "input_file_id": uploaded["id"],
            "endpoint": chunk.endpoint,
            "completion_window": self.completion_window,
            "metadata": metadata,
        }

        async def adopt_existing() -> httpx2.Response | None:
            async for batch in self._list_batches():
                if batch.get("input_file_id") == uploaded["id"]:
                    return httpx2.Response(200, json=batch)
                created = parse_timestamp(batch.get("created_at"))
                if created and uploaded.get("created_at") and created.timestamp() < uploaded["created_at"]:
                    return None
            return None

        response = await self._http.request(
            "POST",
            "batches",
            operation="create batch",
            json_body=payload,
            idempotent=False,
            recover=adopt_existing,
        )
        batch = response.json()
        batch.setdefault("model", None)
        batch["model"] = batch["model"] or chunk.model
        return self._ref(batch, chunk_index=chunk.index, request_count=chunk.request_count)

    async def _upload(self, chunk: Chunk) -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        filename = chunk.path.name.replace('"', "_") or "input.jsonl"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        async def body() -> Any:
            yield head
            async for block in read_blocks(chunk.path):
                yield block
            yield tail

        # A retried upload may leave an orphan file behind; that costs nothing and is never used.
        response = await self._http.request(
            "POST",
            "files",
            operation="upload batch input",
            content=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        return response.json()

    async def _list_batches(self) -> AsyncIterator[dict[str, Any]]:
        """Every batch, newest first, one page at a time."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": _LIST_PAGE}
            if after:
                params["after"] = after
            page = await self._http.json("GET", "batches", operation="list batches", params=params)
            data = page.get("data") or []
            for batch in data:
                yield batch
            if not page.get("has_more") or not data:
                return
            after = page.get("last_id") or data[-1]["id"]

    async def find(self, *, tags: Mapping[str, str], created_after: datetime) -> list[BatchRef]:
        found: list[BatchRef] = []
        floor = created_after.timestamp()
        async for batch in self._list_batches():
            created = batch.get("created_at")
            if created is not None and created < floor:
                break
            metadata = batch.get("metadata") or {}
            if all(metadata.get(key) == value for key, value in tags.items()):
                index = metadata.get("chunk_index")
                counts = batch.get("request_counts") or {}
                found.append(
                    self._ref(
                        batch,
                        chunk_index=int(index) if str(index).lstrip("-").isdigit() else -1,
                        request_count=int(counts.get("total") or 0),
                    )
                )
        return found

    def _ref(self, batch: dict[str, Any], *, chunk_index: int, request_count: int) -> BatchRef:
        return BatchRef(
            provider=self.provider,
            batch_id=batch["id"],
            input_file_id=batch.get("input_file_id"),
            chunk_index=chunk_index,
            request_count=request_count,
            created_at=parse_timestamp(batch.get("created_at")) or datetime.now().astimezone(),
            model=batch.get("model"),
            endpoint=batch.get("endpoint"),
        )

    async def _batch(self, batch_id: str) -> dict[str, Any]:
        return await self._http.json("GET", f"batches/{batch_id}", operation="get batch")

    async def status(self, batch_id: str) -> BatchState:
        return self.state_of(await self._batch(batch_id))

    def state_of(self, batch: dict[str, Any]) -> BatchState:
        """The normalised state of a native Batch object."""
        native = str(batch.get("status"))
        status, ending = _STATUS.get(native, (BatchStatus.RUNNING, None))
        raw_counts = batch.get("request_counts") or {}
        total = int(raw_counts.get("total") or 0)
        done_ok = int(raw_counts.get("completed") or 0)
        done_err = int(raw_counts.get("failed") or 0)
        unrun = max(0, total - done_ok - done_err)
        counts = BatchCounts(
            total=total,
            succeeded=done_ok,
            errored=done_err,
            processing=unrun if status is not BatchStatus.ENDED else 0,
            expired=unrun if ending is BatchEnding.EXPIRED else 0,
            cancelled=unrun if ending is BatchEnding.CANCELLED else 0,
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

    async def cancel(self, batch_id: str) -> BatchState:
        try:
            batch = await self._http.json("POST", f"batches/{batch_id}/cancel", operation="cancel batch")
        except (InvalidRequestError, ConflictError):
            state = await self.status(batch_id)
            if state.is_terminal:
                return state
            raise
        return self.state_of(batch)

    async def results(self, ref: BatchRef) -> AsyncIterator[ResultRecord]:
        batch = await self._batch(ref.batch_id)
        seen: set[str] = set()
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if not file_id:
                continue
            async for record in stream_records(
                self._http,
                f"files/{file_id}/content",
                operation="download results",
                to_record=lambda line: self.record_of(line, ref.batch_id),
                seen=seen,
            ):
                yield record

    def record_of(self, line: dict[str, Any], batch_id: str) -> ResultRecord:
        """One output- or error-file line as a record."""
        custom_id = str(line.get("custom_id"))
        provider = self._provider_name
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
        return self._success(custom_id, batch_id, body)

    def _success(self, custom_id: str, batch_id: str, body: dict[str, Any]) -> ResultRecord:
        kind = body.get("object")
        raw_usage = body.get("usage") or _EMPTY
        if kind == "list":  # embeddings
            vectors = [_vector(item.get("embedding")) for item in body.get("data") or []]
            return succeeded(
                custom_id,
                self._provider_name,
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
                self._provider_name,
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
                "provider": self._provider_name,
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

    async def delete_input(self, ref: BatchRef) -> None:
        if not ref.input_file_id:
            return
        with contextlib.suppress(NotFoundError):
            await self._http.request("DELETE", f"files/{ref.input_file_id}", operation="delete input file")

    async def aclose(self) -> None:
        await self._http.aclose()


class OpenAICompatibleBackend(OpenAIBackend):
    """A server speaking the OpenAI Batch wire format (vLLM, gateways, the emulator): the same
    client with a mandatory ``base_url``; an empty ``api_key`` sends no Authorization header."""

    provider: ClassVar[Provider] = Provider.OPENAI_COMPATIBLE

    def __init__(self, api_key: str = "", base_url: str | None = None, **options: Any) -> None:
        if not base_url:
            raise ValueError("an OpenAI-compatible backend needs base_url, e.g. http://host:8000/v1")
        super().__init__(api_key, base_url, **options)
