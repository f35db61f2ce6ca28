"""Bedrock ``CreateModelInvocationJob`` request: the checks answered at once with a
``ValidationException``.

The input records are read from S3 afterwards (:mod:`.s3`); a problem with them fails the
job in validation instead.

Invariants:
- The checks run in a fixed order and the first problem is the answer.
- Per-job faults come from the ``emu_faults`` tag, in the OpenAI ``emu_faults`` grammar with the
  directives separated by commas or spaces (AWS tag values allow spaces but not commas).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..faults import BatchFaults, FaultSyntaxError, parse_batch_faults
from .s3 import split_s3_uri
from .wire import validation

_REQUIRED = ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig")


@dataclass(frozen=True)
class CreateRequest:
    """A create body that passed :func:`check_create`."""

    name: str
    model_id: str
    role_arn: str
    token: str | None
    input_uri: str
    output_uri: str
    timeout_hours: int
    invocation_type: str
    tags: list[dict[str, str]]
    faults: BatchFaults
    """From the ``emu_faults`` tag, before the server-wide batch faults are merged in."""


def check_create(body: dict[str, Any], expire_done_fraction: float) -> CreateRequest:
    """``body`` (a JSON object) checked, field by field: a ``ValidationException`` on the first
    problem."""
    for name in _REQUIRED:
        if not body.get(name):
            raise validation(
                f"1 validation error detected: Value null at '{name}' failed to satisfy constraint: "
                "Member must not be null"
            )
    name = str(body["jobName"])
    if not re.fullmatch(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}", name) or len(name) > 63:
        raise validation(f"Value '{name}' at 'jobName' failed to satisfy constraint")
    token = body.get("clientRequestToken")
    if token is not None and not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}", str(token)):
        raise validation("Value at 'clientRequestToken' failed to satisfy constraint")
    role = str(body["roleArn"])
    if not role.startswith("arn:"):
        raise validation(f"Value '{role}' at 'roleArn' failed to satisfy constraint: must be an IAM role ARN")
    timeout = body.get("timeoutDurationInHours", 24)
    if not isinstance(timeout, int) or not 24 <= timeout <= 168:
        raise validation("Value at 'timeoutDurationInHours' failed to satisfy constraint: 24..168")
    invocation = body.get("modelInvocationType", "InvokeModel")
    if invocation not in ("InvokeModel", "Converse"):
        raise validation(f"Value '{invocation}' at 'modelInvocationType' failed to satisfy constraint")
    input_uri = ((body["inputDataConfig"] or {}).get("s3InputDataConfig") or {}).get("s3Uri")
    output_uri = ((body["outputDataConfig"] or {}).get("s3OutputDataConfig") or {}).get("s3Uri")
    split_s3_uri(input_uri)
    split_s3_uri(output_uri)
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, dict) and "key" in t for t in tags):
        raise validation("tags must be a list of {key, value}")
    if len(tags) > 200:
        raise validation("A job takes at most 200 tags.")
    directive = next((str(t.get("value", "")) for t in tags if t.get("key") == "emu_faults"), "")
    try:
        faults = parse_batch_faults(",".join(re.split(r"[,\s]+", directive.strip())), expire_done_fraction)
    except FaultSyntaxError as exc:
        raise validation(f"bad emu_faults tag: {exc}") from None
    return CreateRequest(
        name=name,
        model_id=str(body["modelId"]),
        role_arn=role,
        token=str(token) if token is not None else None,
        input_uri=str(input_uri),
        output_uri=str(output_uri),
        timeout_hours=timeout,
        invocation_type=invocation,
        tags=[{"key": str(t["key"]), "value": str(t.get("value", ""))} for t in tags],
        faults=faults,
    )
