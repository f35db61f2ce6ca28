"""A Vertex batch prediction job's create body checked, and its input read from GCS.

Invariants:
- :func:`check_create` refuses a bad body with a 400 INVALID_ARGUMENT naming the field, before the
  job exists; BigQuery input or output is refused the same way (this face serves GCS only).
- The input is read once, at create (:func:`copy_input`), into the job's local copy: one line
  ``{"key", "request", "labels"}`` per input line, ``request`` without its ``labels``. So what the
  job answers never depends on later changes to the input objects, and a resent request is
  recognised by its content whatever labels (wire ids) it carries.
- A problem with the input (no object, a line that is not JSON or has no ``request`` object, too
  many requests or bytes, a missing output bucket) fails the job, as Vertex does, never the call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..faults import BatchFaults, FaultSyntaxError, parse_batch_faults
from ..gcs import GcsAccess, GcsError, iter_lines, split_gs_uri
from ..gemini.files import invalid

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
MAX_LABELS = 64
PUBLISHER_PREFIX = "publishers/google/models/"


@dataclass(frozen=True)
class CreateRequest:
    display_name: str
    model: str
    """``publishers/google/models/<id>``, or a tuned model's ``projects/P/locations/L/models/ID``."""
    input_uris: list[str]
    output_prefix: str
    labels: dict[str, str]
    faults: BatchFaults
    """From an ``emu_faults=<directives>`` token of ``displayName``."""


def model_name(model: Any) -> str:
    """The model of a create body in the form Vertex reports it."""
    if not isinstance(model, str) or not model.strip():
        raise invalid("* BatchPredictionJob.model: model is required")
    model = model.strip()
    if "/publishers/google/models/" in model:
        return PUBLISHER_PREFIX + model.rsplit("/", 1)[-1]
    if model.startswith(("publishers/", "projects/")):
        return model
    return PUBLISHER_PREFIX + model.removeprefix("models/")


def check_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise invalid("* BatchPredictionJob.labels: must be a map of strings")
    if len(labels) > MAX_LABELS:
        raise invalid(f"* BatchPredictionJob.labels: at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise invalid(
                f"* BatchPredictionJob.labels: key {key!r} must start with a lowercase letter and hold "
                "only lowercase letters, digits, '_' and '-' (at most 63 characters)"
            )
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise invalid(
                f"* BatchPredictionJob.labels[{key}]: value {value!r} may hold only lowercase letters, "
                "digits, '_' and '-' (at most 63 characters)"
            )
    return dict(labels)


def check_create(body: Any, display_name_max: int, expire_done_fraction: float) -> CreateRequest:
    """``body`` checked field by field: a 400 INVALID_ARGUMENT on the first problem."""
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received: expected a BatchPredictionJob object.")
    name = body.get("displayName")
    if not isinstance(name, str) or not name.strip():
        raise invalid("* BatchPredictionJob.display_name: display_name is required")
    if len(name) > display_name_max:
        raise invalid(f"* BatchPredictionJob.display_name: must be at most {display_name_max} characters")
    directive = next((t.partition("=")[2] for t in name.split() if t.startswith("emu_faults=")), "")
    try:
        faults = parse_batch_faults(directive, expire_done_fraction)
    except FaultSyntaxError as exc:
        raise invalid(f"bad emu_faults directive in displayName: {exc}") from None
    model = model_name(body.get("model"))
    source = body.get("inputConfig")
    if not isinstance(source, dict):
        raise invalid("* BatchPredictionJob.input_config: input_config is required")
    if source.get("bigquerySource") is not None or source.get("instancesFormat") == "bigquery":
        raise invalid("* BatchPredictionJob.input_config: BigQuery input is not served by this emulator")
    if source.get("instancesFormat") not in ("jsonl", None):
        raise invalid("* BatchPredictionJob.input_config.instances_format: must be jsonl")
    uris = (source.get("gcsSource") or {}).get("uris") if isinstance(source.get("gcsSource"), dict) else None
    if isinstance(uris, str):
        uris = [uris]
    if not isinstance(uris, list) or not uris:
        raise invalid("* BatchPredictionJob.input_config.gcs_source.uris: at least one URI is required")
    for uri in uris:
        try:
            split_gs_uri(uri)
        except GcsError as exc:
            raise invalid(f"* BatchPredictionJob.input_config.gcs_source.uris: {exc}") from None
    dest = body.get("outputConfig")
    if not isinstance(dest, dict):
        raise invalid("* BatchPredictionJob.output_config: output_config is required")
    if dest.get("bigqueryDestination") is not None or dest.get("predictionsFormat") == "bigquery":
        raise invalid("* BatchPredictionJob.output_config: BigQuery output is not served by this emulator")
    if dest.get("predictionsFormat") not in ("jsonl", None):
        raise invalid("* BatchPredictionJob.output_config.predictions_format: must be jsonl")
    gcs = dest.get("gcsDestination")
    prefix = gcs.get("outputUriPrefix") if isinstance(gcs, dict) else None
    try:
        split_gs_uri(prefix)  # type: ignore[arg-type]
    except GcsError as exc:
        raise invalid(
            f"* BatchPredictionJob.output_config.gcs_destination.output_uri_prefix: {exc}"
        ) from None
    return CreateRequest(name, model, list(uris), str(prefix), check_labels(body.get("labels")), faults)


def _key(labels: Any, index: int) -> str:
    """The id a request's draws (item errors, invalid answers) are keyed by: its labels."""
    if isinstance(labels, dict) and labels:
        return ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return f"line-{index}"


@dataclass(frozen=True)
class InputLimits:
    max_requests: int
    max_bytes: int


def copy_input(
    gcs: GcsAccess, uris: list[str], output_prefix: str, path: Path, limits: InputLimits
) -> tuple[int, str | None]:
    """Copy the requests of every object ``uris`` name (wildcards expanded) to the local copy
    ``path``: (requests copied, why the job fails or None). The first problem stops the copy."""
    out_bucket, _ = split_gs_uri(output_prefix)
    if not gcs.bucket_exists(out_bucket):
        return 0, f"The output bucket {out_bucket} does not exist or is not accessible."
    objects: list[tuple[str, str]] = []
    for uri in uris:
        found = gcs.expand(uri)
        if not found:
            return 0, f"No files found matching {uri}."
        objects.extend(found)
    n = 0
    total = 0
    with path.open("wb") as out:
        for bucket, name in objects:
            uri = f"gs://{bucket}/{name}"
            try:
                data = gcs.read(bucket, name)
            except FileNotFoundError:
                return n, f"The input file {uri} does not exist or is not accessible."
            total += len(data)
            if total > limits.max_bytes:
                return n, f"The job's input is over the limit of {limits.max_bytes} bytes."
            for number, raw in iter_lines(data):
                try:
                    entry = json.loads(raw)
                except ValueError:
                    return n, f"Line {number} of {uri} is not valid JSON."
                request = entry.get("request") if isinstance(entry, dict) else None
                if not isinstance(request, dict):
                    return n, f"Line {number} of {uri} has no 'request' object."
                labels = request.get("labels")
                copy = {
                    "key": _key(labels, n),
                    "request": {k: v for k, v in request.items() if k != "labels"},
                    "labels": labels,
                }
                out.write(json.dumps(copy, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
                n += 1
                if n > limits.max_requests:
                    return n, f"The job has more than {limits.max_requests} requests."
    if n == 0:
        return 0, f"The input {', '.join(uris)} holds no requests."
    return n, None
