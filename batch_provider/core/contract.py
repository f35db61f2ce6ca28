"""The contract every provider backend fulfils.

A backend owns everything provider-specific: translating :class:`LLMRequest` to one native input
line, creating a batch from a chunk of such lines, mapping native states to :class:`BatchState`
and native result lines to :class:`ResultRecord`. Nothing outside its module knows a wire format.

Invariants:
- ``encode`` is pure and deterministic: the same request gives the same bytes, so a retried
  submit rebuilds byte-identical chunks and input fingerprints stay stable.
- ``submit`` creates at most one remote batch per call and tags it with ``tags`` where the
  provider keeps tags (OpenAI metadata, Bedrock job tags), so ``find`` can re-attach to it after a
  crash between "provider accepted" and "ledger written".
- ``results`` yields the records the provider returned, in the provider's order, possibly with
  the same ``custom_id`` twice after a restarted download; reconciliation is the caller's job.
- One backend instance holds one HTTP connection pool; reuse it for every call and close it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath
from typing import Any, ClassVar, Protocol

from batch_provider.core.limits import ProviderLimits
from batch_provider.core.models import BatchRef, BatchState, LLMRequest, Provider, ResultRecord


class ReadablePath(Protocol):
    """What backends need of a path: ``pathlib.Path`` and Airflow's ``ObjectStoragePath`` fit."""

    def open(self, mode: str = ...) -> Any: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class EncodedRequest:
    """One request in its provider's native input-line format (no trailing newline).

    ``group`` is the key requests must share to go into one batch (model and endpoint for OpenAI,
    model for Bedrock, empty for Anthropic).
    """

    custom_id: str
    line: bytes
    group: str
    model: str | None
    endpoint: str | None = None


@dataclass(frozen=True)
class Chunk:
    """A part file of native lines, ready to become one batch."""

    index: int
    path: ReadablePath | PurePath
    request_count: int
    byte_size: int
    group: str
    model: str | None
    endpoint: str | None = None


class BatchBackend(abc.ABC):
    provider: ClassVar[Provider]
    keeps_tags: ClassVar[bool] = False
    """True when ``find`` matches ``tags`` exactly (OpenAI metadata, Bedrock job tags)."""
    limits: ProviderLimits

    @abc.abstractmethod
    def encode(self, request: LLMRequest) -> EncodedRequest:
        """Translate one request; raise ``RequestRejected`` naming the field when it cannot be sent."""

    def encode_as(self, request: LLMRequest, custom_id: str) -> EncodedRequest:
        """``encode`` of ``request`` with ``custom_id`` (a wire id) in place of its own id: the same
        line, checks and ``RequestRejected`` as encoding a copy carrying that id. ``request`` is
        not changed. This default encodes such a copy; a backend whose encoding reads the id only
        to check it and to write it overrides this to skip the copy."""
        return self.encode(request.model_copy(update={"custom_id": custom_id}))

    @abc.abstractmethod
    def custom_id_of(self, line: bytes) -> str:
        """The custom_id of a native line this backend encoded (used to re-read part files)."""

    @abc.abstractmethod
    async def submit(self, chunk: Chunk, *, tags: Mapping[str, str]) -> BatchRef:
        """Upload the chunk (where the provider needs a file) and create one batch from it."""

    @abc.abstractmethod
    async def find(self, *, tags: Mapping[str, str], created_after: datetime) -> list[BatchRef]:
        """Batches created at or after ``created_after`` that carry ``tags`` (providers without
        tags: every batch created in that window; the caller matches them by request count and
        custom_ids)."""

    @abc.abstractmethod
    async def status(self, batch_id: str) -> BatchState: ...

    @abc.abstractmethod
    async def cancel(self, batch_id: str) -> BatchState:
        """Request cancellation; a batch that already ended is returned unchanged, not an error."""

    async def _state_if_ended(self, batch_id: str, refusal: Exception) -> BatchState:
        """After the provider refused a cancel as invalid in the batch's state: the batch's state
        when it has ended (what :meth:`cancel` returns then); otherwise ``refusal`` is raised."""
        state = await self.status(batch_id)
        if state.is_terminal:
            return state
        raise refusal

    @abc.abstractmethod
    def results(self, ref: BatchRef) -> AsyncIterator[ResultRecord]:
        """Every result line of an ended batch (successes and per-item errors), as records."""

    async def result_ids(self, ref: BatchRef) -> set[str]:
        """custom_ids present in the batch's results (used to match a batch found by listing)."""
        return {record.custom_id async for record in self.results(ref)}

    async def delete_input(self, ref: BatchRef) -> None:  # noqa: B027 - optional for providers without files
        """Delete the uploaded input file of an ended batch, where the provider keeps one."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> BatchBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
