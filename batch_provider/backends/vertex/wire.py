"""Vertex AI batch prediction wire format: input lines, labels, job states, prediction lines.

Pure functions only (no HTTP, no GCS); :mod:`.backend` does the calls.

Invariants:
- A native line is ``{"request": {"labels": {"bp_id": <wire id>}, ...GenerateContentRequest}}``:
  exactly one line of the job's input JSONL, so a part file is uploaded byte for byte. Vertex has
  no custom id and does not keep order; the id travels in ``request.labels``, which every
  prediction line echoes. ``labels`` comes first, so the id is the first JSON string of the line
  (what :func:`~batch_provider.core.wire_ids.swap_wire_id` relies on).
- The request body is the Gemini one (:func:`.gemini_wire.generate_content_request`); the model is
  the job's (``publishers/google/models/{model}``), never the line's.
- A job's identity tags (``bp_run``, ``bp_chunk``) are written twice: as GCP labels (values made
  label-safe by :func:`label_value`, one-to-one for the characters tags use) and as
  ``name=value`` tokens of the display name, which :func:`tags_of_job` reads back exactly.
- ``Usage.input_tokens`` excludes cached prompt tokens; ``output_tokens`` includes thinking tokens.
- A prediction line's ``status`` is empty on success, else an error (text, or a
  ``google.rpc.Status`` object); it is retryable when it names a transient gRPC status or an
  HTTP 408/429/5xx code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from batch_provider.backends.gemini import wire as gw
from batch_provider.backends.wire import counts_of_totals, parse_timestamp
from batch_provider.core.errors import RequestRejected
from batch_provider.core.models import (
    BatchEnding,
    BatchState,
    BatchStatus,
    LLMRequest,
    ResultRecord,
)

PROVIDER = "vertex"
ID_LABEL = "bp_id"
"""The ``request.labels`` key that carries a line's wire id."""
IDENTITY_TAGS = ("bp_run", "bp_chunk")
PUBLISHER_PREFIX = "publishers/google/models/"
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_TRANSIENT = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN")
_HTTP_CODE = re.compile(r"\b(408|429|5\d\d)\b")


# ----------------------------------------------------------------------------- input lines


def model_resource(model: str) -> str:
    """``gemini-2.5-flash`` → ``publishers/google/models/gemini-2.5-flash``; a full resource name
    (a tuned ``projects/…/models/…`` or another publisher's) is kept."""
    if model.startswith(("publishers/", "projects/")):
        return model
    return PUBLISHER_PREFIX + model.removeprefix("models/")


def short_model(model: str | None) -> str | None:
    """The model id without its resource prefix (what prices and results name)."""
    if not model:
        return None
    return model.rsplit("/", 1)[-1] if model.startswith(("publishers/", "models/")) else model


def request_line(request: LLMRequest) -> tuple[dict[str, Any], str | None]:
    """(``{"request": …}`` line value, model) for one request; raises ``RequestRejected``."""
    body, model = gw.generate_content_request(request)
    user_labels = body.pop("labels", None) or {}
    if not isinstance(user_labels, dict):
        raise RequestRejected(request.custom_id, "labels", "must be an object of label names to values")
    if ID_LABEL in user_labels:
        raise RequestRejected(request.custom_id, "labels", f"'{ID_LABEL}' is reserved for the request's id")
    for key, value in user_labels.items():
        if not _LABEL_KEY.fullmatch(str(key)) or not _LABEL_VALUE.fullmatch(str(value)):
            raise RequestRejected(
                request.custom_id,
                "labels",
                f"label {key!r}: names and values are lowercase letters, digits, '_' and '-' "
                "(names start with a letter), at most 63 characters",
            )
    labels = {ID_LABEL: request.custom_id, **user_labels}
    return {"request": {"labels": labels, **body}}, model


def id_of_line(line: dict[str, Any]) -> str | None:
    """The wire id a prediction (or input) line carries in ``request.labels``."""
    request = line.get("request")
    if isinstance(request, str):  # some exports keep the request as a JSON string
        try:
            request = json.loads(request)
        except ValueError:
            return None
    labels = (request or {}).get("labels") if isinstance(request, dict) else None
    value = (labels or {}).get(ID_LABEL) if isinstance(labels, dict) else None
    return str(value) if value else None


def wants_json(line: bytes) -> bool:
    if b"application/json" not in line:
        return False
    config = (json.loads(line).get("request") or {}).get("generationConfig") or {}
    return config.get("responseMimeType") == "application/json"


# ----------------------------------------------------------------------------- labels and names


def label_value(value: str) -> str:
    """A tag value as a GCP label value: lowercase, ``:`` → ``-``, anything else outside
    ``[a-z0-9_-]`` → ``_``, at most 63 characters. Run digests, chunk marks and tokens use only
    hex digits, digits and ``:``, so for them this is one-to-one."""
    lowered = str(value).lower().replace(":", "-")
    return re.sub(r"[^a-z0-9_-]", "_", lowered)[:63]


def job_labels(tags: Mapping[str, str]) -> dict[str, str]:
    """The job's labels: every tag whose name is a valid label name, value made label-safe."""
    labels: dict[str, str] = {}
    for key, value in tags.items():
        name = str(key).lower()
        if _LABEL_KEY.fullmatch(name) and len(labels) < 64:
            labels[name] = label_value(value)
    return labels


def display_name(tags: Mapping[str, str]) -> str:
    """``bp_run=… bp_chunk=… other=…`` within 128 characters (identity tags first, see Gemini)."""
    return gw.display_name(tags)


def tags_of_job(job: Mapping[str, Any]) -> dict[str, str]:
    return gw.tags_of_display_name(job.get("displayName"))


def matches(job: Mapping[str, Any], tags: Mapping[str, str]) -> bool:
    """Whether the job carries every tag of ``tags`` in its display name, and its labels (when it
    has any) agree on the identity tags."""
    named = tags_of_job(job)
    if not all(named.get(k) == gw.clean_tag(v) for k, v in tags.items()):
        return False
    labels = job.get("labels") or {}
    return all(labels.get(k) in (None, label_value(v)) for k, v in tags.items() if k in IDENTITY_TAGS)


def list_filter(tags: Mapping[str, str]) -> str | None:
    """A server-side list filter narrowing to the run's jobs (``labels.bp_run="…"``); the caller
    still matches every job it gets back."""
    run = tags.get("bp_run")
    return f'labels.bp_run="{label_value(run)}"' if run else None


# ----------------------------------------------------------------------------- job states

_STATES: dict[str, tuple[BatchStatus, BatchEnding | None]] = {
    "JOB_STATE_QUEUED": (BatchStatus.PENDING, None),
    "JOB_STATE_PENDING": (BatchStatus.PENDING, None),
    "JOB_STATE_RUNNING": (BatchStatus.RUNNING, None),
    "JOB_STATE_UPDATING": (BatchStatus.RUNNING, None),
    "JOB_STATE_PAUSED": (BatchStatus.RUNNING, None),
    "JOB_STATE_CANCELLING": (BatchStatus.FINALIZING, None),
    "JOB_STATE_SUCCEEDED": (BatchStatus.ENDED, BatchEnding.COMPLETED),
    "JOB_STATE_PARTIALLY_SUCCEEDED": (BatchStatus.ENDED, BatchEnding.COMPLETED),
    "JOB_STATE_FAILED": (BatchStatus.ENDED, BatchEnding.FAILED),
    "JOB_STATE_CANCELLED": (BatchStatus.ENDED, BatchEnding.CANCELLED),
    "JOB_STATE_EXPIRED": (BatchStatus.ENDED, BatchEnding.EXPIRED),
}
COLLECTED_STATES = frozenset(
    {"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
)
"""States whose output directory holds the rows that finished (a failed job may hold some too)."""


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def state_of(job: Mapping[str, Any], request_count: int | None = None) -> BatchState:
    """The normalised state of a ``BatchPredictionJob``. Vertex reports no total: it is
    ``request_count`` when known, else the sum of the completion stats."""
    native = str(job.get("state") or "JOB_STATE_UNSPECIFIED")
    status, ending = _STATES.get(native, (BatchStatus.RUNNING, None))
    stats = job.get("completionStats") or {}
    ok, bad, unrun = (_int(stats.get(k)) for k in ("successfulCount", "failedCount", "incompleteCount"))
    total = request_count if request_count else ok + bad + unrun
    error = job.get("error") or {}
    message = str(error.get("message") or "") or None if isinstance(error, dict) else None
    code = _int(error.get("code")) if isinstance(error, dict) else 0
    return BatchState(
        batch_id=str(job.get("name")),
        status=status,
        ending=ending,
        native_status=native,
        counts=counts_of_totals(total, ok, bad, status, ending),
        error_message=message,
        retryable=ending is BatchEnding.FAILED
        and gw.GRPC_CODES.get(code) in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"),
        created_at=parse_timestamp(job.get("createTime")),
        ended_at=parse_timestamp(job.get("endTime")) if status is BatchStatus.ENDED else None,
    )


# ----------------------------------------------------------------------------- prediction lines


def _status_error(status: Any) -> dict[str, Any]:
    """A line's ``status`` as a ``google.rpc.Status``-like dict (text statuses are parsed)."""
    if isinstance(status, dict):
        return status
    text = str(status)
    try:  # "Too Many Requests: {"error": {...}}": the HTTP reason, then Google's envelope
        decoded = json.loads(text[text.index("{") :]) if "{" in text else None
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        return decoded.get("error") if isinstance(decoded.get("error"), dict) else decoded
    named = next((name for name in _TRANSIENT if name in text), None)
    if named is None:
        named = next((name for name in gw.GRPC_CODES.values() if name in text), None)
    http = _HTTP_CODE.search(text)
    error: dict[str, Any] = {"message": text}
    if named:
        error["status"] = named
    if http:
        error["code"] = int(http.group(1))
    return error


def record_of(line: dict[str, Any], batch_id: str, model: str | None = None) -> ResultRecord | None:
    """One prediction line as a record; None when it carries no id (it cannot be placed: its row
    stays unanswered and goes to the retry)."""
    key = id_of_line(line)
    if key is None:
        return None
    status = line.get("status")
    response = line.get("response")
    if status or not isinstance(response, dict):
        error = _status_error(status or "the line has no response")
        record = gw.error_record(key, batch_id, error, line, model)
        return record.model_copy(update={"provider": PROVIDER})
    record = gw.response_record(key, batch_id, response, model)
    return record.model_copy(update={"provider": PROVIDER})
