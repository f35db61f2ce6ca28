"""Gemini Developer API batch mode backend (``models/{model}:batchGenerateContent``).

Wire format: Gemini batch mode as the ``google-genai`` SDK calls it. Paths carry the API version
(``v1beta/...``) under a base URL without it (``https://generativelanguage.googleapis.com``).
Translation, states and result lines live in :mod:`.wire`.

Decisions:
- **Inline or file.** A chunk whose inline body would stay within ``inline_max_bytes`` (default
  20,000,000, under the documented ~20 MB) is sent inline (``inputConfig.requests``); a larger one
  is uploaded as a JSONL file (resumable upload protocol, one ``upload, finalize`` call) and
  referenced by ``inputConfig.fileName``. ``inline_max_bytes=0`` always uploads.
- **Tags in the display name.** Gemini keeps no labels, so ``bp_run`` and ``bp_chunk`` (and other
  tags while they fit in 128 characters) are written into ``displayName`` as ``name=value``
  tokens; :meth:`find` lists batches and matches them, hence ``keeps_tags = True``.
- A create whose connection broke after sending is retried only after listing batches for one
  with the same display name, which is adopted instead (no second paid batch).
- **States.** ``BATCH_STATE_*`` and ``JOB_STATE_*`` both map: PENDING → pending, RUNNING →
  running, SUCCEEDED → completed, FAILED → failed, CANCELLED → cancelled (finished requests
  keep their results), EXPIRED → expired (results present are kept; the rest become ``expired``).
- **Part files are upload files**: each line is ``{"key": custom_id, "request": {...}}``, so file
  mode uploads the part file byte for byte; inline mode rewraps each line as
  ``{"request": ..., "metadata": {"key": ...}}`` and joins results on the echoed ``metadata.key``.
- **Item errors** (``google.rpc.Status``: gRPC ``code`` and ``message``; an HTTP-style ``code`` with
  ``status`` is read too) are retryable for RESOURCE_EXHAUSTED, UNAVAILABLE, INTERNAL,
  DEADLINE_EXCEEDED, ABORTED, UNKNOWN and any 408/429/5xx code.
- ``api_version`` defaults to ``v1beta``, where the batch API is documented (``google-genai``
  3.x defaults to ``v1`` for other calls).
- The API key travels only in the ``x-goog-api-key`` header, never in a URL. A resumable upload
  URL the server names is always sent to this backend's own host.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx2

from batch_provider.backends.gemini import wire as gw
from batch_provider.backends.http_backend import HttpBatchBackend
from batch_provider.backends.transport import ErrorInfo, TransportPolicy
from batch_provider.backends.wire import (
    check_custom_id,
    check_max_tokens,
    check_size,
    encode_line,
    parse_timestamp,
    read_blocks,
    stream_records,
)
from batch_provider.core.contract import Chunk, EncodedRequest
from batch_provider.core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RequestRejected,
)
from batch_provider.core.limits import ProviderLimits
from batch_provider.core.models import BatchRef, BatchState, LLMRequest, Provider, ResultRecord

DEFAULT_INLINE_MAX_BYTES = 20_000_000
_INLINE_PER_LINE = 16
"""``{"request":…,"metadata":{"key":…}}`` is this many bytes longer than ``{"key":…,"request":…}``."""
_INLINE_FRAME = 256
_LIST_PAGE = 100


def _quota_exhausted(response: httpx2.Response, info: ErrorInfo) -> bool:
    """A 429 with neither ``retry-after`` nor a ``RetryInfo`` detail is a quota that waiting a few
    seconds does not clear (Google sends RetryInfo with per-minute limits)."""
    if "retry-after" in response.headers or "retry-after-ms" in response.headers:
        return False
    with contextlib.suppress(ValueError, httpx2.ResponseNotRead):
        details = (response.json().get("error") or {}).get("details") or []
        if any("RetryInfo" in str(d.get("@type", "")) for d in details if isinstance(d, dict)):
            return False
    return True


async def _inline_body(chunk: Chunk, name: str) -> AsyncIterator[bytes]:
    """The create body with every line of the part file as an inlined request, streamed."""
    head = {"batch": {"displayName": name, "inputConfig": {"requests": {"requests": []}}}}
    opening, _, closing = json.dumps(head, separators=(",", ":")).partition("[]")
    yield opening.encode() + b"["
    first = True
    carry = b""
    async for block in read_blocks(chunk.path):
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        out = [gw.inline_request(line.rstrip(b"\r")) for line in lines if line.strip()]
        if out:
            yield (b"" if first else b",") + b",".join(out)
            first = False
    if carry.strip():
        yield (b"" if first else b",") + gw.inline_request(carry.rstrip(b"\r"))
    yield b"]" + closing.encode()


def _batch_path(batch_id: str) -> str:
    return batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


class GeminiBackend(HttpBatchBackend):
    """Gemini batch mode on one pooled ``httpx2.AsyncClient``; the key lives only in its
    ``x-goog-api-key`` header.

    Options:
        api_key: the Gemini API key.
        base_url: API root without the version (default ``https://generativelanguage.googleapis.com``;
            the emulator's URL in tests).
        api_version: ``v1beta`` (the version batch mode is served under).
        inline_max_bytes: the largest inline create body; larger chunks are uploaded as a file
            (0: always upload).
        policy / limits / client: transport policy, lowered limits, a caller-owned HTTP client.
    """

    provider: ClassVar[Provider] = Provider.GEMINI
    keeps_tags: ClassVar[bool] = True
    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com"
    body_overhead_bytes: ClassVar[int] = 0

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        api_version: str = "v1beta",
        inline_max_bytes: int | str = DEFAULT_INLINE_MAX_BYTES,
        policy: TransportPolicy | None = None,
        limits: ProviderLimits | None = None,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("a Gemini backend needs api_key (sent in the x-goog-api-key header)")
        self.inline_max_bytes = int(inline_max_bytes)  # a connection extra arrives as text
        if self.inline_max_bytes < 0:
            raise ValueError("inline_max_bytes must be >= 0")
        self.api_version = str(api_version).strip("/")
        super().__init__(
            base_url,
            credential_headers={"x-goog-api-key": api_key},
            policy=policy,
            limits=limits,
            client=client,
            quota_exhausted=_quota_exhausted,
        )

    def _v(self, path: str) -> str:
        return f"{self.api_version}/{path}"

    # ----------------------------------------------------------------- translation

    def encode(self, request: LLMRequest) -> EncodedRequest:
        check_custom_id(request, self.limits)
        check_max_tokens(request)
        body, model = gw.generate_content_request(request)
        if not model:
            raise RequestRejected(request.custom_id, "model", "no model given")
        line = encode_line({"key": request.custom_id, "request": body})
        check_size(request.custom_id, line, self.limits)
        return EncodedRequest(custom_id=request.custom_id, line=line, group=model, model=model)

    def custom_id_of(self, line: bytes) -> str:
        return gw.key_of_line(line)

    def wants_json(self, line: bytes) -> bool:
        """Whether the encoded request asked for JSON output (its text is parsed as JSON)."""
        return gw.wants_json(line)

    def inline_size(self, chunk: Chunk) -> int:
        """Bytes of the inline create body for ``chunk`` (an upper bound)."""
        return chunk.byte_size + chunk.request_count * _INLINE_PER_LINE + _INLINE_FRAME

    def sends_inline(self, chunk: Chunk) -> bool:
        return self.inline_size(chunk) <= self.inline_max_bytes

    # ----------------------------------------------------------------- operations

    async def submit(self, chunk: Chunk, *, tags: Mapping[str, str]) -> BatchRef:
        if not chunk.model:
            raise ValueError("a Gemini chunk needs its model")
        name = gw.display_name(tags)
        input_file: str | None = None
        if self.sends_inline(chunk):

            def content() -> AsyncIterator[bytes]:
                return _inline_body(chunk, name)

        else:
            input_file = await self._upload(chunk, name)
            payload = json.dumps(
                {"batch": {"displayName": name, "inputConfig": {"fileName": input_file}}}
            ).encode()

            async def content() -> AsyncIterator[bytes]:
                yield payload

        async def adopt_existing() -> httpx2.Response | None:
            async for operation in self._list_operations():
                if gw.batch_of(operation).get("displayName") == name:
                    return httpx2.Response(200, json=operation)
            return None

        # Only a name carrying the chunk's identity can tell its batch apart from others.
        identified = bool(tags.get("bp_run") and tags.get("bp_chunk"))

        response = await self._http.request(
            "POST",
            self._v(f"{_model_path(chunk.model)}:batchGenerateContent"),
            operation="create batch",
            content=content,
            headers={"content-type": "application/json"},
            idempotent=False,
            recover=adopt_existing if identified else None,
        )
        operation = response.json()
        return self._ref(
            operation,
            chunk_index=chunk.index,
            request_count=chunk.request_count,
            model=chunk.model,
            input_file=input_file,
        )

    async def _upload(self, chunk: Chunk, name: str) -> str:
        """Resumable upload of the part file as is; returns the ``files/…`` name."""
        start = await self._http.request(
            "POST",
            f"upload/{self.api_version}/files",
            operation="start upload",
            json_body={"file": {"displayName": name[:128], "mimeType": "application/jsonl"}},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(chunk.byte_size),
                "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            },
        )
        upload_url = start.headers.get("x-goog-upload-url")
        if not upload_url:
            raise InvalidRequestError(
                "gemini start upload: the answer named no x-goog-upload-url", provider="gemini"
            )

        async def data() -> Any:
            async for block in read_blocks(chunk.path):
                yield block

        # Re-sending the same bytes at offset 0 with "finalize" is harmless: the upload either
        # finalizes once or answers with the file it already made.
        done = await self._http.request(
            "POST",
            self._same_host(upload_url),
            operation="upload batch input",
            content=data,
            headers={
                "X-Goog-Upload-Command": "upload, finalize",
                "X-Goog-Upload-Offset": "0",
                "content-length": str(chunk.byte_size),
                "content-type": "application/jsonl",
            },
        )
        upload_status = done.headers.get("x-goog-upload-status", "final")
        if upload_status != "final":
            raise InvalidRequestError(
                f"gemini upload batch input: the upload is {upload_status!r}, not finalized",
                provider="gemini",
            )
        return str(done.json()["file"]["name"])

    def _same_host(self, url: str) -> str:
        """``url`` with this backend's scheme and host, so the key never goes elsewhere."""
        base = urlsplit(self._http.base_url)
        target = urlsplit(url)
        return urlunsplit((base.scheme, base.netloc, target.path, target.query, ""))

    async def _list_operations(self) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            params: dict[str, Any] = {"pageSize": _LIST_PAGE}
            if token:
                params["pageToken"] = token
            page = await self._http.json("GET", self._v("batches"), operation="list batches", params=params)
            for operation in page.get("operations") or page.get("batches") or []:
                yield operation
            token = page.get("nextPageToken")
            if not token:
                return

    async def find(self, *, tags: Mapping[str, str], created_after: datetime) -> list[BatchRef]:
        """Batches created since ``created_after`` whose display name carries every tag of ``tags``
        (the list's order is not relied on: every page is read)."""
        found: list[BatchRef] = []
        chunk_tag = tags.get("bp_chunk", "")
        parts = chunk_tag.split(":")
        index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        async for operation in self._list_operations():
            batch = gw.batch_of(operation)
            created = parse_timestamp(batch.get("createTime"))
            if created is not None and created < created_after:
                continue
            named = gw.tags_of_display_name(batch.get("displayName"))
            if all(named.get(key) == gw.clean_tag(value) for key, value in tags.items()):
                state = gw.state_of(operation)
                found.append(self._ref(operation, chunk_index=index, request_count=state.counts.total))
        return found

    def _ref(
        self,
        operation: dict[str, Any],
        *,
        chunk_index: int,
        request_count: int,
        model: str | None = None,
        input_file: str | None = None,
    ) -> BatchRef:
        batch = gw.batch_of(operation)
        source = batch.get("inputConfig") or {}
        return BatchRef(
            provider=self.provider,
            batch_id=str(batch.get("name") or operation.get("name")),
            input_file_id=input_file or source.get("fileName"),
            chunk_index=chunk_index,
            request_count=request_count,
            created_at=parse_timestamp(batch.get("createTime")) or datetime.now(UTC),
            model=model or str(batch.get("model") or "").removeprefix("models/") or None,
        )

    async def _operation(self, batch_id: str) -> dict[str, Any]:
        return await self._http.json("GET", self._v(_batch_path(batch_id)), operation="get batch")

    async def status(self, batch_id: str) -> BatchState:
        return gw.state_of(await self._operation(batch_id))

    async def cancel(self, batch_id: str) -> BatchState:
        try:
            await self._http.request(
                "POST", self._v(f"{_batch_path(batch_id)}:cancel"), operation="cancel batch", json_body={}
            )
        except (InvalidRequestError, ConflictError) as refusal:
            return await self._state_if_ended(batch_id, refusal)
        return await self.status(batch_id)

    async def delete_batch(self, batch_id: str) -> None:
        """Delete the batch (and with it its inlined results); a batch already gone is fine."""
        with contextlib.suppress(NotFoundError):
            await self._http.request("DELETE", self._v(_batch_path(batch_id)), operation="delete batch")

    async def results(self, ref: BatchRef) -> AsyncIterator[ResultRecord]:
        operation = await self._operation(ref.batch_id)
        batch = gw.batch_of(operation)
        output = batch.get("output") or (operation.get("response") or {})
        inlined = (output.get("inlinedResponses") or {}).get("inlinedResponses")
        if inlined is not None:
            seen: set[str] = set()
            for item in inlined:
                record = gw.record_of(item, ref.batch_id, ref.model)
                if record.custom_id not in seen:
                    seen.add(record.custom_id)
                    yield record
            return
        file_name = output.get("responsesFile")
        if not file_name:
            return
        async for record in stream_records(
            self._http,
            f"download/{self.api_version}/{file_name}:download?alt=media",
            operation="download results",
            to_record=lambda line: gw.record_of(line, ref.batch_id, ref.model),
            seen=set(),
        ):
            yield record

    async def delete_input(self, ref: BatchRef) -> None:
        if not ref.input_file_id or not ref.input_file_id.startswith("files/"):
            return
        # Google answers 403 "may not exist" for a file it already removed (files live 48 h).
        with contextlib.suppress(NotFoundError, AuthenticationError):
            await self._http.request("DELETE", self._v(ref.input_file_id), operation="delete input file")
