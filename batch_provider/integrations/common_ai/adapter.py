"""A common-ai ``BatchAdapter`` on top of one of our backends (Bedrock, Gemini, Vertex, any other).

common-ai owns the task: identity key, intent and state files, polling, result landing and
validation. This adapter only translates: common-ai's requests to :class:`LLMRequest`, one batch
to one :class:`Chunk` through the backend's ``encode`` / ``submit``, our states and records back
to common-ai's ``BatchState`` / ``RawResultItem``. A subclass names the backend and how to build
it from the connection (see :mod:`.connection`), so a new provider is a few lines.

Invariants:
- A task-wide mistake (over the provider's limits, a request the backend cannot encode, fewer
  records than a Bedrock job takes, two models in one batch) raises common-ai's
  ``LLMBatchInputError`` family from ``validate_requests``, before any provider call.
- **Never pay twice.** Every batch is tagged with common-ai's idempotency key and the input
  fingerprint plus a generation number (``bp_run`` / ``bp_chunk``; on Bedrock they also make the
  job's ``clientRequestToken``). ``submit`` first looks for a batch with those tags: a live or
  finished one is adopted instead of paying again; one that failed, was cancelled or expired
  (common-ai resubmits only after clearing such a batch) moves to the next generation, so
  Bedrock's token de-duplication cannot hand back the dead job. ``find_orphaned_batch`` reads the
  same tags, so a crash between create and common-ai's state write re-attaches.
- custom_ids are common-ai's ``<key16>-<index>``; results are streamed a page at a time (memory
  bounded by the page), duplicates are left to common-ai's merge, which counts them. The
  translation itself (requests, statuses, result items) is in :mod:`.translate`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from airflow.providers.common.ai.batch.base import (
    BatchAdapter,
    BatchRequest,
    BatchState,
    ExtractedOutput,
    RawResultItem,
    SubmitResult,
)
from airflow.providers.common.ai.exceptions import (
    LLMBatchInputError,
    LLMBatchJobError,
    LLMBatchLimitExceededError,
    LLMBatchModelMismatchError,
)

from batch_provider.backends.registry import create_backend
from batch_provider.core.contract import BatchBackend, Chunk
from batch_provider.core.errors import RequestRejected
from batch_provider.core.limits import ProviderLimits
from batch_provider.core.models import BatchEnding, BatchRef, Provider, ResultRecord
from batch_provider.integrations.common_ai.connection import (
    batch_handle,
    fetch_connection,
    running_task_conn_id,
    split_handle,
)
from batch_provider.integrations.common_ai.runner import LoopThread
from batch_provider.integrations.common_ai.translate import ENDING_STATUS, llm_requests, raw_item

LOOKBACK = timedelta(days=30)
"""How far back ``submit`` looks for a batch of the same key and input before creating one."""
MAX_GENERATIONS = 50
"""Resubmissions of one input by one task instance after failed/cancelled/expired batches."""
ORPHAN_SLACK = timedelta(minutes=5)
"""Clock skew allowed between common-ai's intent time and the provider's creation time."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DEAD_ENDINGS = frozenset({BatchEnding.FAILED, BatchEnding.CANCELLED, BatchEnding.EXPIRED})


def tags_for(idempotency_key: str, input_fingerprint: str, generation: int) -> dict[str, str]:
    """The tags naming one submission of one input by one task instance."""
    return {"bp_run": idempotency_key, "bp_chunk": f"{input_fingerprint[:16]}:{generation}"}


class BackendBatchAdapter(BatchAdapter):
    """common-ai's adapter contract served by one of our backends.

    Subclasses set ``name`` (the ``model_id`` prefix), ``provider``, ``conn_types``, ``limits``
    and implement :meth:`backend_options`. ``needs_connection`` says whether the backend is built
    from the whole connection (then batch ids carry the connection id, see :mod:`.connection`)
    or from the key and host common-ai passes.
    """

    provider: ClassVar[Provider]
    limits: ClassVar[ProviderLimits]
    needs_connection: ClassVar[bool] = False
    allows_per_request_model = False

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: Any | None = None,
        conn_id: str | None = None,
    ) -> None:
        self._client = None  # no SDK client: backends own their HTTP pools, closed in close()
        self._api_key = api_key
        self._base_url = base_url.rstrip("/") if base_url else None
        self._conn_id = conn_id
        self._loop = LoopThread(f"common-ai-{self.name}")
        self._backends: dict[str | None, BatchBackend] = {}

    # ------------------------------------------------------------------ subclass hooks

    def backend_options(self, conn_id: str | None, conn: Any | None) -> dict[str, Any]:
        """Constructor options of the backend; ``conn`` is the fetched connection when
        ``needs_connection`` (else None: only the key and base URL are known)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ backend and connection

    def _conn_id_for(self, batch_id: str | None = None) -> str | None:
        if not self.needs_connection:
            return None
        from_handle = split_handle(batch_id)[0] if batch_id else None
        conn_id = from_handle or self._conn_id or running_task_conn_id()
        if conn_id is None:
            raise LLMBatchJobError(
                f"The {self.name!r} batch adapter needs its Airflow connection's id and found none: it "
                "reads it from the running task's llm_conn_id, or from the batch id "
                "('<conn_id>@<batch>'). Run it inside an LLMBatchOperator / @task.llm_batch task."
            )
        return conn_id

    def _backend(self, conn_id: str | None) -> BatchBackend:
        backend = self._backends.get(conn_id)
        if backend is None:
            conn = None
            if self.needs_connection and conn_id is not None:
                conn = fetch_connection(
                    conn_id, api_key=self._api_key, base_url=self._base_url, verify=self._conn_id is None
                )
            backend = create_backend(self.provider, **self.backend_options(conn_id, conn))
            self._backends[conn_id] = backend
        return backend

    def _handle(self, conn_id: str | None, native_id: str) -> str:
        return batch_handle(conn_id, native_id) if conn_id else native_id

    def _backend_for_batch(self, batch_id: str) -> tuple[BatchBackend, str]:
        conn_id = self._conn_id_for(batch_id)
        return self._backend(conn_id), split_handle(batch_id)[1] if conn_id else batch_id

    # ------------------------------------------------------------------ requests

    def build_output_directive(self, spec: Any) -> dict[str, Any]:
        """``{"response_schema": <schema>}`` for structured output: the backend turns it into the
        provider's own form (a forced tool on Bedrock, a response schema on Gemini and Vertex)."""
        return {"response_schema": spec.json_schema} if spec.is_structured else {}

    def _encoded_lines(
        self,
        backend: BatchBackend,
        requests: list[BatchRequest],
        *,
        model: str,
        idempotency_key: str,
        output_spec: Any,
        system_prompt: str = "",
        max_tokens: int = 1024,
        request_params: dict[str, Any] | None = None,
        **_unused: Any,
    ) -> Iterator[bytes]:
        """The encoded line of each request, in order; takes ``validate_requests`` / ``submit``'s
        keyword arguments (common-ai's options this adapter does not use are ignored)."""
        schema = self.build_output_directive(output_spec).get("response_schema")
        built = llm_requests(
            requests,
            resolve_model=self.resolve_request_model,
            model=model,
            idempotency_key=idempotency_key,
            schema=schema,
            system_prompt=system_prompt,
            max_tokens=max_tokens,
            request_params=request_params,
        )
        for index, request in enumerate(built):
            try:
                yield backend.encode(request).line
            except RequestRejected as exc:
                raise LLMBatchInputError(
                    f"Request {index} cannot be sent to {self.name}: field {exc.field!r}: {exc.reason}. "
                    "Fix that request (or its params) and run the task again; nothing was submitted."
                ) from None

    def validate_requests(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        output_spec: Any,
        idempotency_key: str,
        **kwargs: Any,
    ) -> None:
        self.check_custom_id_length(idempotency_key, len(requests))
        if len(requests) > self.max_requests:
            raise LLMBatchLimitExceededError(
                f"{self.name} accepts at most {self.max_requests} requests per batch; got {len(requests)}. "
                f"Split the input with .expand() so each task instance sends at most {self.max_requests}."
            )
        models = {
            self.resolve_request_model(r.get("model"), default_bare_model=model, request_index=i)
            for i, r in enumerate(requests)
        }
        if len(models) > 1:
            raise LLMBatchModelMismatchError(
                f"{self.name} runs one model per batch; these requests name {len(models)} "
                f"({sorted(models)!r}). Give every request the same model, or split them into tasks."
            )
        backend = self._backend(self._conn_id_for())
        minimum = int(getattr(backend, "min_records_per_job", backend.limits.min_requests_per_batch))
        if len(requests) < minimum:
            raise LLMBatchLimitExceededError(
                f"{self.name}: a batch job needs at least {minimum} requests, this one has {len(requests)}; "
                "nothing was submitted. Send more requests per task, or lower the connection's "
                "bedrock_min_records_per_job if the account's quota allows it."
            )
        total = 0
        lines = self._encoded_lines(
            backend, requests, model=model, idempotency_key=idempotency_key, output_spec=output_spec, **kwargs
        )
        for index, line in enumerate(lines):
            total += len(line) + 1
            if total > self.max_payload_bytes:
                raise LLMBatchLimitExceededError(
                    f"{self.name} accepts at most {self.max_payload_bytes} bytes per batch; the input "
                    f"reached {total} bytes at request {index}. Split the input with .expand()."
                )

    # ------------------------------------------------------------------ batches

    def submit(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        idempotency_key: str,
        input_fingerprint: str,
        output_spec: Any,
        **kwargs: Any,
    ) -> SubmitResult:
        conn_id = self._conn_id_for()
        backend = self._backend(conn_id)
        lines = self._encoded_lines(
            backend, requests, model=model, idempotency_key=idempotency_key, output_spec=output_spec, **kwargs
        )
        with tempfile.TemporaryDirectory(prefix="bp-common-ai-") as folder:
            path = Path(folder) / "part-00000.jsonl"
            count = size = 0
            with path.open("wb") as fh:
                for line in lines:
                    fh.write(line + b"\n")
                    count += 1
                    size += len(line) + 1
            chunk = Chunk(index=0, path=path, request_count=count, byte_size=size, group=model, model=model)
            ref = self._loop.run(self._create_once(backend, chunk, idempotency_key, input_fingerprint))
        return SubmitResult(
            batch_id=self._handle(conn_id, ref.batch_id), provider_input_ref=ref.input_file_id
        )

    async def _create_once(self, backend: BatchBackend, chunk: Chunk, key: str, fingerprint: str) -> BatchRef:
        since = datetime.now(UTC) - LOOKBACK
        for generation in range(MAX_GENERATIONS):
            tags = tags_for(key, fingerprint, generation)
            found = await backend.find(tags=tags, created_after=since)
            if not found:
                return await backend.submit(chunk, tags=tags)
            latest = max(found, key=lambda ref: ref.created_at)
            state = await backend.status(latest.batch_id)
            if state.ending not in _DEAD_ENDINGS:
                return latest  # this input's batch already exists: adopt it, never pay twice
        raise LLMBatchJobError(
            f"{self.name}: this task instance already submitted this input {MAX_GENERATIONS} times and every "
            "batch failed, was cancelled or expired; nothing new was submitted. Look at those batches."
        )

    def find_orphaned_batch(
        self, idempotency_key: str, input_fingerprint: str, not_before: str
    ) -> str | None:
        """The newest batch tagged with this key and input created since ``not_before`` (minus
        :data:`ORPHAN_SLACK`), over every generation; None when there is none."""
        conn_id = self._conn_id_for()
        backend = self._backend(conn_id)
        floor = datetime.fromisoformat(not_before) - ORPHAN_SLACK if not_before else _EPOCH

        async def newest() -> BatchRef | None:
            since = min(floor, datetime.now(UTC) - LOOKBACK)
            best: BatchRef | None = None
            for generation in range(MAX_GENERATIONS):
                found = await backend.find(
                    tags=tags_for(idempotency_key, input_fingerprint, generation), created_after=since
                )
                if not found:
                    break
                for ref in found:
                    if ref.created_at >= floor and (best is None or ref.created_at > best.created_at):
                        best = ref
            return best

        best = self._loop.run(newest())
        return self._handle(conn_id, best.batch_id) if best is not None else None

    def get_batch(self, batch_id: str) -> BatchState:
        backend, native = self._backend_for_batch(batch_id)
        state = self._loop.run(backend.status(native))
        status = ENDING_STATUS[state.ending] if state.ending is not None else "in_progress"
        counts = state.counts
        return BatchState(
            status=status,  # type: ignore[arg-type]
            counts={
                "succeeded": counts.succeeded,
                "errored": counts.errored,
                "expired": counts.expired,
                "cancelled": counts.cancelled,
            }
            if counts.total
            else None,
            error_message=state.error_message,
        )

    def cancel_batch(self, batch_id: str) -> None:
        backend, native = self._backend_for_batch(batch_id)
        self._loop.run(backend.cancel(native))

    def iter_results(self, batch_id: str) -> Iterator[RawResultItem]:
        backend, native = self._backend_for_batch(batch_id)
        ref = BatchRef(
            provider=self.provider,
            batch_id=native,
            chunk_index=0,
            request_count=0,
            created_at=datetime.now(UTC),
        )
        return (raw_item(record) for record in self._loop.iterate(backend.results(ref)))

    def extract_output(self, raw: RawResultItem, spec: Any) -> ExtractedOutput:
        record: ResultRecord = raw.raw
        if spec.is_structured and record.parsed is not None:
            return ExtractedOutput(kind="json_value", value=record.parsed)
        if record.output_text is None:
            return ExtractedOutput(kind="absent")
        return ExtractedOutput(kind="json_text" if spec.is_structured else "text", text=record.output_text)

    def close(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        try:
            for backend in backends:
                self._loop.run(backend.aclose())
        finally:
            self._loop.stop()

