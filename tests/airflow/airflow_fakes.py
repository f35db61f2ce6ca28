"""An in-memory backend whose batches follow a script of states, for tests without HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from batch_provider.core.contract import BatchBackend, Chunk, EncodedRequest
from batch_provider.core.errors import ProviderUnavailableError
from batch_provider.core.limits import OPENAI_LIMITS
from batch_provider.core.models import (
    BatchCounts,
    BatchEnding,
    BatchRef,
    BatchState,
    BatchStatus,
    LLMRequest,
    Provider,
    ResultRecord,
)


def state(
    batch_id: str, status: str, ending: str | None = None, total: int = 10, done: int = 0
) -> BatchState:
    return BatchState(
        batch_id=batch_id,
        status=BatchStatus(status),
        ending=BatchEnding(ending) if ending else None,
        native_status=ending or status,
        counts=BatchCounts(total=total, succeeded=done, processing=total - done),
    )


class ScriptedBackend(BatchBackend):
    """``status`` walks each batch through ``polls_to_end`` running polls, then ``ending``.
    ``flaky`` batch ids fail their first poll with a retryable error."""

    provider: ClassVar[Provider] = Provider.OPENAI
    instances: ClassVar[list[ScriptedBackend]] = []

    def __init__(self, api_key: str = "", base_url: str | None = None, **options: Any):
        self.limits = OPENAI_LIMITS
        self.api_key = api_key
        self.base_url = base_url
        self.options = options
        self.polls: dict[str, int] = {}
        self.cancelled: list[str] = []
        self.closed = False
        self.polls_to_end = options.get("polls_to_end", 2)
        self.ending = options.get("ending", "completed")
        self.flaky = set(options.get("flaky", ()))
        ScriptedBackend.instances.append(self)

    def encode(self, request: LLMRequest) -> EncodedRequest:  # pragma: no cover - unused here
        raise NotImplementedError

    def custom_id_of(self, line: bytes) -> str:  # pragma: no cover
        raise NotImplementedError

    async def submit(self, chunk: Chunk, *, tags: Mapping[str, str]) -> BatchRef:  # pragma: no cover
        raise NotImplementedError

    async def find(self, *, tags: Mapping[str, str], created_after: datetime) -> list[BatchRef]:
        return []

    async def status(self, batch_id: str) -> BatchState:
        n = self.polls[batch_id] = self.polls.get(batch_id, 0) + 1
        if batch_id in self.flaky and n == 1:
            raise ProviderUnavailableError("503 from the fake", status_code=503)
        if batch_id in self.cancelled:
            return state(batch_id, "ended", "cancelled", done=3)
        if n > self.polls_to_end:
            return state(batch_id, "ended", self.ending, done=10)
        return state(batch_id, "running", done=min(9, n * 3))

    async def cancel(self, batch_id: str) -> BatchState:
        self.cancelled.append(batch_id)
        return state(batch_id, "ended", "cancelled", done=3)

    def results(self, ref: BatchRef) -> AsyncIterator[ResultRecord]:  # pragma: no cover
        raise NotImplementedError

    async def aclose(self) -> None:
        self.closed = True


def now() -> datetime:
    return datetime.now(UTC)
