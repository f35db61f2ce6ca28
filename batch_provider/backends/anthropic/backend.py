"""Anthropic Message Batches backend.

Wire format: the Anthropic Message Batches API as the official SDK calls it.
Paths are ``/v1/messages/batches...`` under a base URL without ``/v1``.

Decisions:
- Structured output uses ``params.output_format = {"type": "json_schema", "schema": ...}``; the
  answer arrives as JSON text that reconciliation parses (same path as OpenAI's json_schema).
- ``ended`` maps to an ending by the counts: ``cancelled`` when any request was canceled (and at
  least as many as expired), else ``expired`` when any request expired, else ``completed``. A
  cancel that came too late to stop anything therefore reads ``completed``.
- Anthropic keeps no tags: :meth:`find` returns every batch created in the window (with
  ``chunk_index=-1``); the caller matches them by request count and custom_ids.
- A create whose connection broke after sending is not resent (it might have created a batch
  nobody can tell apart); it raises ``ProviderUnavailableError`` and the caller's ledger recovers
  through :meth:`find`.
- The results URL is always requested on this backend's own base URL, so the key never travels to
  another host named in ``results_url``.
- Per-item ``retryable``: ``invalid_request_error`` (and auth/permission/not-found) no; ``api_error``,
  ``overloaded_error``, ``timeout_error``, ``rate_limit_error`` yes; ``canceled`` and ``expired`` yes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, ClassVar

import httpx2

from batch_provider.backends.http_backend import HttpBatchBackend
from batch_provider.backends.transport import ErrorInfo, TransportPolicy
from batch_provider.backends.wire import (
    anthropic_system,
    check_max_tokens,
    check_size,
    custom_id_of_line,
    encode_line,
    failed,
    fill_missing,
    joined_lines,
    parse_timestamp,
    rejected_as,
    stream_records,
    succeeded,
    usage,
)
from batch_provider.core.contract import Chunk, EncodedRequest
from batch_provider.core.errors import ConflictError, InvalidRequestError, RequestRejected
from batch_provider.core.limits import ProviderLimits
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

API_VERSION = "2023-06-01"
BATCHES = "v1/messages/batches"
_RETRYABLE_ERROR_TYPES = frozenset({"api_error", "overloaded_error", "timeout_error", "rate_limit_error"})
_STATUS = {
    "in_progress": BatchStatus.RUNNING,
    "canceling": BatchStatus.FINALIZING,
    "ended": BatchStatus.ENDED,
}
_LIST_PAGE = 100


def _quota_exhausted(response: httpx2.Response, info: ErrorInfo) -> bool:
    """A 429 without any retry-after is the spend cap, which does not clear by waiting."""
    return "retry-after" not in response.headers and "retry-after-ms" not in response.headers


def _content(message: Message) -> Any:
    if isinstance(message.content, str):
        return message.content
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            source = (
                {"type": "url", "url": part.url}
                if part.url is not None
                else {"type": "base64", "media_type": part.media_type, "data": part.data}
            )
            parts.append({"type": "image", "source": source})
        else:
            parts.append({"type": "text", "text": part.text})
    return parts


def ending_of(counts: BatchCounts) -> BatchEnding:
    """The ending of an ``ended`` batch, from its final counts (see the module docstring)."""
    if counts.cancelled and counts.cancelled >= counts.expired:
        return BatchEnding.CANCELLED
    if counts.expired:
        return BatchEnding.EXPIRED
    return BatchEnding.COMPLETED


class AnthropicBackend(HttpBatchBackend):
    """Anthropic Message Batches on one pooled ``httpx2.AsyncClient``. The API key lives only in
    the client's ``x-api-key`` header."""

    provider: ClassVar[Provider] = Provider.ANTHROPIC
    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    body_overhead_bytes: ClassVar[int] = 16
    """``{"requests":[`` and ``]}`` around the lines, counted against the byte limit."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        policy: TransportPolicy | None = None,
        limits: ProviderLimits | None = None,
        client: httpx2.AsyncClient | None = None,
        anthropic_version: str = API_VERSION,
        beta: list[str] | None = None,
    ) -> None:
        headers = {"anthropic-version": anthropic_version}
        if beta:
            headers["anthropic-beta"] = ",".join(beta)
        super().__init__(
            base_url,
            credential_headers={"x-api-key": api_key},
            headers=headers,
            policy=policy,
            limits=limits,
            client=client,
            quota_exhausted=_quota_exhausted,
        )

    # ----------------------------------------------------------------- translation

    def encode(self, request: LLMRequest) -> EncodedRequest:
        return self.encode_as(request, request.custom_id)

    def encode_as(self, request: LLMRequest, custom_id: str) -> EncodedRequest:
        """The line of ``request`` under ``custom_id``; the id is only checked and written, so no
        copy of the request is made (see :meth:`BatchBackend.encode_as`)."""
        with rejected_as(custom_id, self.limits):
            check_max_tokens(request)
            if request.kind is RequestKind.EMBEDDING:
                raise RequestRejected(custom_id, "kind", "Anthropic has no embeddings endpoint")
            params = self._native_params(request) if request.native is not None else self._params(request)
        params.update(request.extra)
        if not params.get("model"):
            raise RequestRejected(custom_id, "model", "no model given")
        max_tokens = params.get("max_tokens")
        if max_tokens is None:
            raise RequestRejected(custom_id, "max_tokens", "Anthropic requires max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestRejected(custom_id, "max_tokens", f"must be at least 1, got {max_tokens!r}")
        if not params.get("messages"):
            raise RequestRejected(custom_id, "messages", "no messages given")
        line = encode_line({"custom_id": custom_id, "params": params})
        check_size(custom_id, line, self.limits)
        return EncodedRequest(custom_id=custom_id, line=line, group="", model=str(params["model"]))

    def _native_params(self, request: LLMRequest) -> dict[str, Any]:
        params = dict(request.native or {})
        fill_missing(params, "model", request.model)
        fill_missing(params, "max_tokens", request.max_tokens)
        return params

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        messages = [{"role": m.role, "content": _content(m)} for m in request.messages]
        if not messages and isinstance(request.input, str) and request.input:
            messages.append({"role": "user", "content": request.input})
        params: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens}
        fill_missing(params, "system", anthropic_system(request))
        params["messages"] = messages
        fill_missing(params, "temperature", request.temperature)
        if request.stop:
            params["stop_sequences"] = request.stop
        if request.response_schema is not None:
            params["output_format"] = {"type": "json_schema", "schema": request.response_schema}
        return params

    def custom_id_of(self, line: bytes) -> str:
        return custom_id_of_line(line)

    def wants_json(self, line: bytes) -> bool:
        """Whether the encoded request asked for JSON-schema output (its text is parsed as JSON)."""
        if b'"json_schema"' not in line:
            return False
        params = json.loads(line).get("params") or {}
        return (params.get("output_format") or {}).get("type") == "json_schema"

    # ----------------------------------------------------------------- operations

    async def submit(self, chunk: Chunk, *, tags: Mapping[str, str]) -> BatchRef:
        """Streams ``{"requests":[line,line,...]}`` from the part file; ``tags`` are not kept."""

        async def body() -> Any:
            yield b'{"requests":['
            async for block in joined_lines(chunk.path, b","):
                yield block
            yield b"]}"

        response = await self._http.request(
            "POST",
            BATCHES,
            operation="create batch",
            content=body,
            headers={"content-type": "application/json"},
            idempotent=False,
        )
        batch = response.json()
        return self._ref(batch, chunk_index=chunk.index, request_count=chunk.request_count, model=chunk.model)

    def _ref(
        self, batch: dict[str, Any], *, chunk_index: int, request_count: int, model: str | None = None
    ) -> BatchRef:
        return BatchRef(
            provider=self.provider,
            batch_id=batch["id"],
            chunk_index=chunk_index,
            request_count=request_count,
            created_at=parse_timestamp(batch.get("created_at")) or datetime.now().astimezone(),
            model=model,
        )

    async def find(self, *, tags: Mapping[str, str], created_after: datetime) -> list[BatchRef]:
        found: list[BatchRef] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": _LIST_PAGE}
            if after:
                params["after_id"] = after
            page = await self._http.json("GET", BATCHES, operation="list batches", params=params)
            data = page.get("data") or []
            for batch in data:
                created = parse_timestamp(batch.get("created_at"))
                if created is not None and created < created_after:
                    return found
                counts = self.counts_of(batch)
                found.append(self._ref(batch, chunk_index=-1, request_count=counts.total))
            if not page.get("has_more") or not data:
                return found
            after = page.get("last_id") or data[-1]["id"]

    @staticmethod
    def counts_of(batch: dict[str, Any]) -> BatchCounts:
        raw = batch.get("request_counts") or {}
        processing = int(raw.get("processing") or 0)
        ok = int(raw.get("succeeded") or 0)
        err = int(raw.get("errored") or 0)
        canceled = int(raw.get("canceled") or 0)
        expired = int(raw.get("expired") or 0)
        return BatchCounts(
            total=processing + ok + err + canceled + expired,
            processing=processing,
            succeeded=ok,
            errored=err,
            cancelled=canceled,
            expired=expired,
        )

    def state_of(self, batch: dict[str, Any]) -> BatchState:
        """The normalised state of a native Message Batch object."""
        native = str(batch.get("processing_status"))
        status = _STATUS.get(native, BatchStatus.RUNNING)
        counts = self.counts_of(batch)
        return BatchState(
            batch_id=batch["id"],
            status=status,
            ending=ending_of(counts) if status is BatchStatus.ENDED else None,
            native_status=native,
            counts=counts,
            created_at=parse_timestamp(batch.get("created_at")),
            ended_at=parse_timestamp(batch.get("ended_at")),
            expires_at=parse_timestamp(batch.get("expires_at")),
        )

    async def status(self, batch_id: str) -> BatchState:
        return self.state_of(await self._http.json("GET", f"{BATCHES}/{batch_id}", operation="get batch"))

    async def cancel(self, batch_id: str) -> BatchState:
        try:
            batch = await self._http.json("POST", f"{BATCHES}/{batch_id}/cancel", operation="cancel batch")
        except (InvalidRequestError, ConflictError) as refusal:
            return await self._state_if_ended(batch_id, refusal)
        return self.state_of(batch)

    async def results(self, ref: BatchRef) -> AsyncIterator[ResultRecord]:
        seen: set[str] = set()
        async for record in stream_records(
            self._http,
            f"{BATCHES}/{ref.batch_id}/results",
            operation="download results",
            to_record=lambda line: self.record_of(line, ref.batch_id),
            seen=seen,
        ):
            yield record

    def record_of(self, line: dict[str, Any], batch_id: str) -> ResultRecord:
        """One results-stream line as a record."""
        custom_id = str(line.get("custom_id"))
        provider = self.provider.value
        result = line.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            message = result.get("message") or {}
            blocks = message.get("content") or []
            text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
            raw_usage = message.get("usage") or {}
            return succeeded(
                custom_id,
                provider,
                batch_id,
                output_text=text,
                finish_reason=message.get("stop_reason"),
                usage=usage(
                    raw_usage.get("input_tokens"),
                    raw_usage.get("output_tokens"),
                    raw_usage.get("cache_read_input_tokens"),
                    raw_usage.get("cache_creation_input_tokens"),
                ),
                raw=message,
                model=message.get("model"),
            )
        if kind == "errored":
            envelope = result.get("error") or {}
            inner = envelope.get("error") if isinstance(envelope.get("error"), dict) else envelope
            error_type = str(inner.get("type") or "unknown_error")
            return failed(
                custom_id,
                provider,
                batch_id,
                status=ItemStatus.ERRORED,
                type=error_type,
                message=str(inner.get("message") or error_type),
                retryable=error_type in _RETRYABLE_ERROR_TYPES,
                code=inner.get("error_code"),
                raw=result,
            )
        if kind in ("canceled", "expired"):
            status = ItemStatus.CANCELLED if kind == "canceled" else ItemStatus.EXPIRED
            return failed(
                custom_id,
                provider,
                batch_id,
                status=status,
                type=str(kind),
                message=f"request {kind} before it was processed",
                retryable=True,
                raw=result,
            )
        return failed(
            custom_id,
            provider,
            batch_id,
            status=ItemStatus.ERRORED,
            type="unknown_result",
            message=f"unknown result type {kind!r}",
            retryable=False,
            raw=result,
        )
