"""Bedrock batch inference wire format: record lines, job identity, job states, output lines.

Pure functions only (no AWS calls); :mod:`.backend` does the calls and :mod:`.models`
translates one request to a model family's ``modelInput`` and reads its ``modelOutput``.

Invariants:
- An input line is ``{"recordId": <custom_id>, "modelInput": {...}}``; an output line adds
  ``modelOutput`` or ``error`` (``errorCode``, ``errorMessage``) to it.
- ``recordId`` carries the ``custom_id``. Bedrock's documentation asks for alphanumeric ids;
  ``[a-zA-Z0-9_-]{1,64}`` is accepted (the Anthropic rule), so a DAG switching from Anthropic
  keeps its ids. ``BEDROCK_LIMITS`` states it.
- The job of one chunk of one attempt of one run has one ``clientRequestToken`` (and ``jobName``)
  derived from the ``bp_run`` and ``bp_chunk`` tags, so a repeated create returns the same job and
  a job can be found again by its token alone.
- **States.** Submitted/Validating/Scheduled → pending; InProgress → running; Stopping →
  finalizing; Completed → ended/completed; PartiallyCompleted → ended/**expired** (Bedrock stops a
  job at its timeout with part of the records done; the records with output are kept and the
  unanswered ones become ``expired`` and retryable, exactly like an expired OpenAI batch);
  Expired → ended/expired; Stopped → ended/cancelled (records done before the stop are kept, the
  rest are ``cancelled`` and retryable); Failed → ended/failed.
- **Item errors**: ``errorCode`` 408/429/5xx are retryable, other codes are not.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from batch_provider.backends.bedrock.models import answer_of
from batch_provider.backends.wire import counts_of_totals, failed, string_field_reader, succeeded
from batch_provider.core.contract import Chunk
from batch_provider.core.models import BatchEnding, BatchState, BatchStatus, ItemStatus, ResultRecord

PROVIDER = "bedrock"
_STATUS: dict[str, tuple[BatchStatus, BatchEnding | None]] = {
    "Submitted": (BatchStatus.PENDING, None),
    "Validating": (BatchStatus.PENDING, None),
    "Scheduled": (BatchStatus.PENDING, None),
    "InProgress": (BatchStatus.RUNNING, None),
    "Stopping": (BatchStatus.FINALIZING, None),
    "Completed": (BatchStatus.ENDED, BatchEnding.COMPLETED),
    "PartiallyCompleted": (BatchStatus.ENDED, BatchEnding.EXPIRED),
    "Expired": (BatchStatus.ENDED, BatchEnding.EXPIRED),
    "Stopped": (BatchStatus.ENDED, BatchEnding.CANCELLED),
    "Failed": (BatchStatus.ENDED, BatchEnding.FAILED),
}
ENDED_STATUSES = frozenset(name for name, (status, _) in _STATUS.items() if status is BatchStatus.ENDED)
"""Native job statuses after which a job changes no more."""
_RETRYABLE_ITEM_CODES = frozenset({408, 429})
_NOT_ALNUM = re.compile(r"[^a-zA-Z0-9]+")
_TAG_CHARS = re.compile(r"[^a-zA-Z0-9 ._:/=+@-]")

record_id_of_line = string_field_reader("recordId")
"""The ``recordId`` of an input line, read from its fixed prefix when possible."""


# ----------------------------------------------------------------------------- job identity


def alnum_slug(value: str) -> str:
    """``value`` with every run of other characters than ``[a-zA-Z0-9]`` as one ``-``, none at
    either end (a valid token, job name or S3 folder part)."""
    return _NOT_ALNUM.sub("-", value).strip("-")


def client_request_token(tags: Mapping[str, str], chunk: Chunk | None = None) -> str:
    """The idempotency token of one chunk's job: ``bp-<run>-<attempt>-<chunk>-<fingerprint>``.

    Matches ``[a-zA-Z0-9](-*[a-zA-Z0-9])*`` and is at most 256 characters. Without the ``bp_run``
    and ``bp_chunk`` tags it is a digest of every tag plus the chunk's index, size and group.
    """
    run, chunk_tag = tags.get("bp_run"), tags.get("bp_chunk")
    if run and chunk_tag:
        token = f"bp-{alnum_slug(run)}-{alnum_slug(chunk_tag)}"
        if len(token) <= 256:
            return token
    material = json.dumps(
        {
            "tags": sorted(tags.items()),
            "chunk": None
            if chunk is None
            else [chunk.index, chunk.request_count, chunk.byte_size, chunk.group],
        }
    )
    return "bp-" + hashlib.sha256(material.encode()).hexdigest()[:48]


def job_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """``tags`` as Bedrock job tags, made valid: keys 1-128 and values 0-256 characters from
    ``[a-zA-Z0-9 ._:/=+@-]``. Commas become spaces (so comma lists stay readable), any other
    character ``_``; keys AWS reserves (``aws:``) are left out."""
    out: list[dict[str, str]] = []
    for key, value in tags.items():
        clean_key = _TAG_CHARS.sub("_", str(key))[:128]
        if not clean_key or clean_key.lower().startswith("aws:"):
            continue
        clean_value = _TAG_CHARS.sub("_", str(value).replace(",", " "))[:256]
        out.append({"key": clean_key, "value": clean_value})
    return out


def job_name(token: str) -> str:
    """A valid ``jobName`` (1-63 characters, alphanumeric start) for the job of ``token``."""
    if len(token) <= 63:
        return token
    return f"bp-{hashlib.sha256(token.encode()).hexdigest()[:40]}"


def job_id_of(job_arn: str) -> str:
    return job_arn.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------- job states


def aws_timestamp(value: Any) -> datetime | None:
    """A job time (a datetime from botocore, or ISO text) as an aware datetime; naive is UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def state_of(job: dict[str, Any]) -> BatchState:
    """The normalised state of a GetModelInvocationJob answer (or a list summary)."""
    native = str(job.get("status"))
    status, ending = _STATUS.get(native, (BatchStatus.RUNNING, None))
    counts = counts_of_totals(
        int(job.get("totalRecordCount") or 0),
        int(job.get("successRecordCount") or 0),
        int(job.get("errorRecordCount") or 0),
        status,
        ending,
    )
    message = job.get("message")
    return BatchState(
        batch_id=job["jobArn"],
        status=status,
        ending=ending,
        native_status=native,
        counts=counts,
        error_message=str(message) if message else None,
        retryable=False,
        created_at=aws_timestamp(job.get("submitTime")),
        ended_at=aws_timestamp(job.get("endTime")) if status is BatchStatus.ENDED else None,
        expires_at=aws_timestamp(job.get("jobExpirationTime")),
    )


# ----------------------------------------------------------------------------- results


def record_of(line: dict[str, Any], batch_id: str, model: str | None = None) -> ResultRecord:
    """One ``.jsonl.out`` line as a record; ``model`` (the job's) wins over the output's own."""
    custom_id = str(line.get("recordId"))
    output = line.get("modelOutput")
    error = line.get("error")
    if error is not None or not isinstance(output, dict):
        error = error if isinstance(error, dict) else {}
        raw_code = error.get("errorCode")
        try:
            code = int(raw_code)
        except (TypeError, ValueError):
            code = 0
        message = str(error.get("errorMessage") or error.get("message") or "the record failed")
        return failed(
            custom_id,
            PROVIDER,
            batch_id,
            status=ItemStatus.ERRORED,
            type=f"http_{code}" if code else "record_error",
            message=message,
            retryable=code >= 500 or code in _RETRYABLE_ITEM_CODES,
            code=str(raw_code) if raw_code is not None else None,
            raw=error,
            model=model,
        )
    answer = answer_of(output)
    return succeeded(
        custom_id,
        PROVIDER,
        batch_id,
        output_text=answer.text,
        parsed=answer.parsed,
        finish_reason=answer.finish_reason,
        usage=answer.usage,
        raw=output,
        model=model or answer.model,
    )
