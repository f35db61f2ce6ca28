"""Provider-neutral data model shared by every backend and by the Airflow layer.

Invariants:
- A ``custom_id`` identifies one request within one run; every submitted ``custom_id`` ends as
  exactly one :class:`ResultRecord` (succeeded, errored, expired, cancelled or rejected).
- Nothing here knows a provider's wire format: backends translate to and from these models.
- Every model serialises to plain JSON (``model_dump(mode="json")``) so it can cross XCom, trigger
  kwargs and JSONL files without custom encoders.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, model_validator


class Provider(StrEnum):
    OPENAI = "openai"
    OPENAI_COMPATIBLE = "openai_compatible"
    ANTHROPIC = "anthropic"
    BEDROCK = "bedrock"
    GEMINI = "gemini"
    VERTEX = "vertex"


class RequestKind(StrEnum):
    CHAT = "chat"
    EMBEDDING = "embedding"


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image given either by URL or inline as base64 ``data`` with its ``media_type``."""

    type: Literal["image"] = "image"
    url: str | None = None
    media_type: str | None = None
    data: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImagePart:
        if (self.url is None) == (self.data is None):
            raise ValueError("an image part needs exactly one of 'url' or 'data' (base64)")
        if self.data is not None and not self.media_type:
            raise ValueError("an inline image part needs 'media_type', e.g. 'image/png'")
        return self


ContentPart = TextPart | ImagePart


class Message(BaseModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        """The message's text, image parts left out."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class LLMRequest(BaseModel):
    """One provider-neutral request.

    Either the neutral fields (``system``, ``messages`` / ``input``, ``max_tokens`` …) describe the
    request, or ``native`` carries a body already in the target provider's format (an OpenAI
    ``body`` or an Anthropic ``params``), which backends send as given after filling ``model`` and
    ``max_tokens`` when absent. ``extra`` is merged into the native body last, so it can set any
    provider option the neutral fields do not cover.
    """

    model_config = ConfigDict(extra="forbid")

    custom_id: str
    model: str | None = None
    kind: RequestKind = RequestKind.CHAT
    system: str | list[TextPart] | None = None
    """The system prompt: a string, or text blocks (kept as blocks where the provider takes them,
    joined by a blank line where it takes one string)."""
    cache_system_prompt: bool | None = None
    """Ask the provider to cache the system prompt: Anthropic (and Anthropic models on Bedrock)
    get ``cache_control`` on its last block, Bedrock Converse a ``cachePoint`` after it; OpenAI and
    Gemini cache a shared prompt prefix by themselves, and the system prompt is sent first. None
    (not False) by default, so requests without it keep their result-cache keys."""
    messages: list[Message] = Field(default_factory=list)
    input: str | list[str] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    response_schema: dict[str, Any] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    native: dict[str, Any] | None = None
    endpoint: str | None = None
    """OpenAI-wire endpoint (``/v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``).
    Default: derived from ``kind``. Ignored by providers with a single endpoint."""

    @property
    def row(self) -> int | None:
        """1-based input row, when the request came from a file or list (:meth:`at_row`); never
        serialised, so it affects neither fingerprints nor cache keys."""
        private = self.__pydantic_private__
        return private.get("_row") if private else None

    def at_row(self, row: int) -> LLMRequest:
        """This request, remembering the input row it came from (for rejects).

        The row is kept in pydantic's private-state slot, set here only: a declared private
        attribute would make pydantic run a Python hook for every request it validates, one per
        input row. Copies, pickles and equality carry that slot as they carry private attributes."""
        object.__setattr__(self, "__pydantic_private__", {"_row": row})
        return self

    def system_blocks(self) -> list[str]:
        """The system prompt's texts, one per block (empty blocks left out)."""
        if not self.system:
            return []
        if isinstance(self.system, str):
            return [self.system]
        return [block.text for block in self.system if block.text]

    def system_text(self) -> str | None:
        """The system prompt as one string (blocks joined by a blank line), or None."""
        return "\n\n".join(self.system_blocks()) or None

    def prompt_text(self) -> str:
        """All prompt text (system, messages, input, native body) for length-based estimates."""
        parts: list[str] = []
        if self.system:
            parts.extend(self.system_blocks())
        parts.extend(m.text() for m in self.messages)
        if isinstance(self.input, str):
            parts.append(self.input)
        elif self.input:
            parts.extend(self.input)
        if self.native is not None and not parts:
            import json

            parts.append(json.dumps(self.native, ensure_ascii=False))
        return "\n".join(parts)


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


class ItemStatus(StrEnum):
    SUCCEEDED = "succeeded"
    ERRORED = "errored"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    INVALID_OUTPUT = "invalid_output"
    """Answered, but the answer is not JSON or does not validate against the output type."""


class ResultError(BaseModel):
    """Why an item did not succeed. ``retryable`` says whether resending the same request as is
    can succeed (rate limits, server errors, expiry, cancel); invalid requests are not retryable."""

    type: str
    message: str
    retryable: bool
    code: str | None = None
    field: str | None = None
    details: list[str] | None = None
    """Every validation error of an ``invalid_output`` answer (``field: why``)."""


class ResultRecord(BaseModel):
    custom_id: str
    status: ItemStatus
    output_text: str | None = None
    parsed: Any = None
    embedding: list[float] | None = None
    finish_reason: str | None = None
    raw: SkipValidation[dict[str, Any] | None] = None
    """The provider's whole answer, as decoded (kept by reference, not validated: it is dropped
    unless ``keep_raw``, and copying every answer's body cost a tenth of a collect)."""
    error: ResultError | None = None
    usage: Usage = Field(default_factory=Usage)
    model: str | None = None
    batch_id: str | None = None
    provider: str | None = None
    attempt: int = 1
    row: int | None = None
    """1-based input row the request came from, when known (set on rejects)."""
    cached: bool = False
    """Served from the result cache: not sent, not paid for in this run."""

    @property
    def retryable(self) -> bool:
        return self.status is not ItemStatus.SUCCEEDED and self.error is not None and self.error.retryable

    def json_line(self) -> bytes:
        """The record as one results-file line (newline included), ``None`` fields left out."""
        return _RECORD_SERIALIZER.to_json(self, exclude_none=True) + b"\n"


_RECORD_SERIALIZER = ResultRecord.__pydantic_serializer__


def assign(model: BaseModel, name: str, value: Any) -> None:
    """Set field ``name`` of ``model`` exactly as pydantic's own assignment does for a model
    without ``validate_assignment`` (value stored unvalidated, field marked as set), minus its
    per-call dispatch: collect assigns a few fields on every record of a run."""
    model.__dict__[name] = value
    model.__pydantic_fields_set__.add(name)


class RejectedRow(BaseModel):
    """An input row that cannot become a paid request, and why; it lands in ``rejects.jsonl``."""

    row: int | None = None
    custom_id: str | None = None
    field: str | None = None
    reason: str

    def to_record(self) -> ResultRecord:
        custom_id = self.custom_id or (f"row-{self.row}" if self.row is not None else "unknown")
        return ResultRecord(
            custom_id=custom_id,
            status=ItemStatus.REJECTED,
            row=self.row,
            error=ResultError(type="invalid_input", message=self.reason, retryable=False, field=self.field),
        )


class BatchStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    FINALIZING = "finalizing"
    ENDED = "ended"


class BatchEnding(StrEnum):
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"


class BatchRef(BaseModel):
    """A batch this code created. Small and JSON-safe: it travels in XCom and trigger kwargs."""

    provider: Provider
    batch_id: str
    input_file_id: str | None = None
    chunk_index: int
    request_count: int
    created_at: datetime
    model: str | None = None
    endpoint: str | None = None


class BatchCounts(BaseModel):
    total: int = 0
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    expired: int = 0
    cancelled: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.errored + self.expired + self.cancelled


class BatchState(BaseModel):
    """A batch's state, normalised. ``ending`` is set exactly when ``status`` is ``ended``.

    Expiry stays distinct from failure: an expired batch has partial results worth collecting,
    and its unanswered items are retryable. ``retryable`` on a failed batch says whether
    resubmitting the same input unchanged can succeed (an enqueued-token limit, not a bad file).
    """

    batch_id: str
    status: BatchStatus
    ending: BatchEnding | None = None
    native_status: str
    counts: BatchCounts = Field(default_factory=BatchCounts)
    error_message: str | None = None
    retryable: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    """When processing started, where the provider says (OpenAI ``in_progress_at``); else None."""
    ended_at: datetime | None = None
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _ending_iff_ended(self) -> BatchState:
        if (self.status is BatchStatus.ENDED) != (self.ending is not None):
            raise ValueError("'ending' must be set exactly when status is 'ended'")
        return self

    @property
    def is_terminal(self) -> bool:
        return self.status is BatchStatus.ENDED
