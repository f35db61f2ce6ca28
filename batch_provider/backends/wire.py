"""Helpers shared by the backends: deterministic line encoding, fast custom_id reads,
streaming part-file bodies, timestamp parsing, batch counts and lean record construction.

Invariant: one JSON codec (:mod:`batch_provider.core.jsonl`) encodes every native line and decodes
every result line, so a request's bytes, and hence its fingerprint, depend on the request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import msgspec

from batch_provider.backends.transport import Transport, TruncatedStreamError
from batch_provider.core.contract import ReadablePath
from batch_provider.core.errors import RequestRejected
from batch_provider.core.jsonl import aiter_line_blocks, dumps_line, loads
from batch_provider.core.limits import ProviderLimits
from batch_provider.core.models import (
    BatchCounts,
    BatchEnding,
    BatchStatus,
    ItemStatus,
    LLMRequest,
    ResultRecord,
)

READ_BLOCK = 1 << 20


def encode_line(value: dict[str, Any]) -> bytes:
    """The one byte encoding of a native line: compact, UTF-8, keys in insertion order."""
    return dumps_line(value)


def string_field_reader(key: str) -> Callable[[bytes], str]:
    """A reader of the top-level ``key`` of native lines (a custom_id, Gemini ``key``, Bedrock
    ``recordId``): a string value is decoded without building the rest of the line; any other value,
    or a line msgspec refuses, goes through :func:`loads` and ``str``."""
    decode = msgspec.json.Decoder(msgspec.defstruct("_Field", [(key, str)])).decode

    def read(line: bytes) -> str:
        try:
            return getattr(decode(line), key)
        except msgspec.DecodeError:
            return str(loads(line)[key])

    return read


custom_id_of_line = string_field_reader("custom_id")
"""The ``custom_id`` of a native line (the rest of the line is skipped, not built)."""


def check_custom_id(request: LLMRequest, limits: ProviderLimits) -> None:
    reason = limits.check_custom_id(request.custom_id)
    if reason is not None:
        raise RequestRejected(request.custom_id, "custom_id", reason)


@contextlib.contextmanager
def rejected_as(custom_id: str, limits: ProviderLimits) -> Iterator[None]:
    """Check ``custom_id`` against the provider's id rule, then run the block: a
    ``RequestRejected`` raised in it for another id (the request's own, when it is encoded under a
    wire id) is raised again naming ``custom_id``, with the same field and reason."""
    reason = limits.check_custom_id(custom_id)
    if reason is not None:
        raise RequestRejected(custom_id, "custom_id", reason)
    try:
        yield
    except RequestRejected as exc:
        if exc.custom_id == custom_id:
            raise
        raise RequestRejected(custom_id, exc.field, exc.reason) from None


def check_size(custom_id: str, line: bytes, limits: ProviderLimits) -> None:
    if len(line) > limits.max_bytes_per_request:
        raise RequestRejected(
            custom_id,
            "body",
            f"encoded request is {len(line):,} bytes, over the provider's limit of "
            f"{limits.max_bytes_per_request:,} bytes per request; shorten or split this row's text "
            "or images",
        )


def check_max_tokens(request: LLMRequest) -> None:
    if request.max_tokens is not None and request.max_tokens < 1:
        raise RequestRejected(
            request.custom_id, "max_tokens", f"must be at least 1, got {request.max_tokens}"
        )


def anthropic_system(request: LLMRequest) -> str | list[dict[str, Any]] | None:
    """The Messages API ``system`` of ``request``: a string, or text blocks; with
    ``cache_system_prompt`` always blocks, the last one carrying ``cache_control`` (the cache
    breakpoint: everything up to it, tools and system, is cached)."""
    texts = request.system_blocks()
    if not texts:
        return None
    if isinstance(request.system, str) and not request.cache_system_prompt:
        return request.system
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text} for text in texts]
    if request.cache_system_prompt:
        blocks[-1]["cache_control"] = {"type": "ephemeral"}
    return blocks


def fill_missing(body: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and key not in body:
        body[key] = value


def schema_name(schema: dict[str, Any]) -> str:
    """A name for a JSON schema as OpenAI requires one: its title, sanitised, or ``response``."""
    title = str(schema.get("title") or "response")
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in title)[:64]
    return name or "response"


async def open_binary(path: ReadablePath | Any) -> Any:
    return await asyncio.to_thread(path.open, "rb")


async def read_blocks(path: ReadablePath | Any, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
    """The file's bytes in blocks, each read off the event loop (object storage may block)."""
    fileobj = await open_binary(path)
    try:
        while True:
            data = await asyncio.to_thread(fileobj.read, block)
            if not data:
                return
            yield data
    finally:
        await asyncio.to_thread(fileobj.close)


async def joined_lines(path: ReadablePath | Any, separator: bytes) -> AsyncIterator[bytes]:
    """The file's non-blank lines joined by ``separator`` (no newlines), streamed in blocks."""
    carry = b""
    first = True
    async for data in read_blocks(path):
        data = carry + data
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1 :]
        lines = [ln.rstrip(b"\r") for ln in data[:cut].split(b"\n")]
        lines = [ln for ln in lines if ln.strip()]
        if not lines:
            continue
        out = separator.join(lines)
        yield out if first else separator + out
        first = False
    tail = carry.rstrip(b"\r")
    if tail.strip():
        yield tail if first else separator + tail


def parse_timestamp(value: Any) -> datetime | None:
    """Unix seconds (OpenAI) or RFC 3339 (Anthropic) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def counts_of_totals(
    total: int, succeeded_count: int, errored_count: int, status: BatchStatus, ending: BatchEnding | None
) -> BatchCounts:
    """Counts of a batch whose provider reports only total, succeeded and errored requests: the
    unanswered rest is ``processing`` until the batch ends, then ``expired`` or ``cancelled`` as
    its ending says (nothing for a completed or failed batch)."""
    unrun = max(0, total - succeeded_count - errored_count)
    return BatchCounts(
        total=total,
        succeeded=succeeded_count,
        errored=errored_count,
        processing=unrun if status is not BatchStatus.ENDED else 0,
        expired=unrun if ending is BatchEnding.EXPIRED else 0,
        cancelled=unrun if ending is BatchEnding.CANCELLED else 0,
    )


def usage(
    input_tokens: Any = 0, output_tokens: Any = 0, cache_read: Any = 0, cache_write: Any = 0
) -> dict[str, int]:
    """Token counts in :class:`Usage` shape (a dict: records are validated from plain data)."""
    return {
        "input_tokens": int(input_tokens or 0),
        "output_tokens": int(output_tokens or 0),
        "cache_read_tokens": int(cache_read or 0),
        "cache_write_tokens": int(cache_write or 0),
    }


validate_record = ResultRecord.__pydantic_validator__.validate_python
"""A record from one flat dict of its fields (nested ``usage``/``error`` as dicts)."""


def succeeded(custom_id: str, provider: str, batch_id: str, **fields: Any) -> ResultRecord:
    """A succeeded record. Validating one flat dict in pydantic-core is cheaper per record than
    ``model_construct`` (which resolves every default in Python)."""
    fields.update(custom_id=custom_id, status="succeeded", provider=provider, batch_id=batch_id)
    return validate_record(fields)


def failed(
    custom_id: str,
    provider: str,
    batch_id: str,
    *,
    status: ItemStatus,
    type: str,
    message: str,
    retryable: bool,
    code: str | None = None,
    field: str | None = None,
    raw: dict[str, Any] | None = None,
    model: str | None = None,
) -> ResultRecord:
    return validate_record(
        {
            "custom_id": custom_id,
            "status": status,
            "provider": provider,
            "batch_id": batch_id,
            "error": {"type": type, "message": message, "retryable": retryable, "code": code, "field": field},
            "raw": raw,
            "model": model,
        }
    )


async def stream_records(
    transport: Transport,
    path: str,
    *,
    operation: str,
    to_record: Callable[[dict[str, Any]], ResultRecord],
    seen: set[str],
) -> AsyncIterator[ResultRecord]:
    """Records of a JSONL download, restarting the download when it breaks off.

    Ids in ``seen`` are skipped and every yielded id is added to it, so a restarted download
    yields no record twice within one call. A final line cut short without a transport error
    counts as a break too.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            async with transport.stream("GET", path, operation=operation) as response:
                async for lines, terminated in aiter_line_blocks(response.aiter_bytes()):
                    for line in lines:
                        try:
                            decoded = loads(line)
                        except ValueError:
                            raise TruncatedStreamError(
                                "a results line is not JSON" if terminated else "a results line ended early"
                            ) from None
                        record = to_record(decoded)
                        if record.custom_id in seen:
                            continue
                        seen.add(record.custom_id)
                        yield record
            return
        except (httpx2.TransportError, TruncatedStreamError) as exc:
            await transport.pause_before_restart(attempt, started, operation, type(exc).__name__)
