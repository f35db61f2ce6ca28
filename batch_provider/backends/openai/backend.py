"""OpenAI Batch API backend (and OpenAI-compatible servers speaking the same wire format).

Wire format: the OpenAI Batch and Files APIs as the official SDK calls them.
Paths are relative to a base URL that includes ``/v1`` (the SDK convention),
while line ``url`` and batch ``endpoint`` values keep their ``/v1/...`` form. Translation, states
and result lines live in :mod:`.wire`.

Decisions:
- ``group`` is ``"<endpoint> <model>"``: one model and one endpoint per batch, as OpenAI requires.
- ``submit`` tags the batch with ``metadata = tags`` plus ``chunk_index`` (unless a tag already
  uses that key), so :meth:`find` can rebuild a :class:`BatchRef` after a crash.
- A create whose connection broke after sending is not blindly resent: the backend first lists
  recent batches for one made from the same uploaded file and adopts it.
- Usage and per-item ``retryable``: see :mod:`.wire`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, ClassVar

import httpx2

from batch_provider.backends.http_backend import HttpBatchBackend
from batch_provider.backends.openai import wire as ow
from batch_provider.backends.openai.wire import (
    BATCH_ENDPOINTS,
    CHAT,
    EMBEDDINGS,
    ENDPOINTS,
    RESPONSES,
)
from batch_provider.backends.transport import ErrorInfo, TransportPolicy
from batch_provider.backends.wire import (
    check_max_tokens,
    check_size,
    custom_id_of_line,
    encode_line,
    parse_timestamp,
    read_blocks,
    rejected_as,
    stream_records,
)
from batch_provider.core.contract import Chunk, EncodedRequest
from batch_provider.core.errors import ConflictError, InvalidRequestError, NotFoundError
from batch_provider.core.limits import ProviderLimits
from batch_provider.core.models import BatchRef, BatchState, LLMRequest, Provider, ResultRecord

__all__ = [
    "BATCH_ENDPOINTS",
    "CHAT",
    "EMBEDDINGS",
    "ENDPOINTS",
    "RESPONSES",
    "OpenAIBackend",
    "OpenAICompatibleBackend",
]

_LIST_PAGE = 100


def _quota_exhausted(response: httpx2.Response, info: ErrorInfo) -> bool:
    return "insufficient_quota" in (info.code or "", info.type or "")


class OpenAIBackend(HttpBatchBackend):
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
        self._provider_name = self.provider.value
        self.completion_window = completion_window
        headers: dict[str, str] = {}
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        super().__init__(
            base_url,
            credential_headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
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
            endpoint, body = ow.request_body(request)
        model = body["model"]
        line = encode_line({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})
        check_size(custom_id, line, self.limits)
        return EncodedRequest(
            custom_id=custom_id,
            line=line,
            group=f"{endpoint} {model}",
            model=str(model),
            endpoint=endpoint,
        )

    def custom_id_of(self, line: bytes) -> str:
        return custom_id_of_line(line)

    def wants_json(self, line: bytes) -> bool:
        """Whether the encoded request asked for JSON-schema output (its text is parsed as JSON)."""
        return ow.wants_json(line)

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
        return ow.state_of(batch)

    async def cancel(self, batch_id: str) -> BatchState:
        try:
            batch = await self._http.json("POST", f"batches/{batch_id}/cancel", operation="cancel batch")
        except (InvalidRequestError, ConflictError) as refusal:
            return await self._state_if_ended(batch_id, refusal)
        return self.state_of(batch)

    async def results(self, ref: BatchRef) -> AsyncIterator[ResultRecord]:
        batch = await self._batch(ref.batch_id)
        batch_id, provider, record_of = ref.batch_id, self._provider_name, ow.record_of
        seen: set[str] = set()
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if not file_id:
                continue
            async for record in stream_records(
                self._http,
                f"files/{file_id}/content",
                operation="download results",
                to_record=lambda line: record_of(line, batch_id, provider),
                seen=seen,
            ):
                yield record

    def record_of(self, line: dict[str, Any], batch_id: str) -> ResultRecord:
        """One output- or error-file line as a record."""
        return ow.record_of(line, batch_id, self._provider_name)

    async def delete_input(self, ref: BatchRef) -> None:
        if not ref.input_file_id:
            return
        with contextlib.suppress(NotFoundError):
            await self._http.request("DELETE", f"files/{ref.input_file_id}", operation="delete input file")


class OpenAICompatibleBackend(OpenAIBackend):
    """A server speaking the OpenAI Batch wire format (vLLM, gateways, the emulator): the same
    client with a mandatory ``base_url``; an empty ``api_key`` sends no Authorization header."""

    provider: ClassVar[Provider] = Provider.OPENAI_COMPATIBLE

    def __init__(self, api_key: str = "", base_url: str | None = None, **options: Any) -> None:
        if not base_url:
            raise ValueError("an OpenAI-compatible backend needs base_url, e.g. http://host:8000/v1")
        super().__init__(api_key, base_url, **options)
