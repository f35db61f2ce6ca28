"""OpenAI batch create request: the checks answered at once with a 400.

The input file itself is checked later, by the batch's plan (:mod:`.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import EmulatorConfig
from ..errors import ApiError
from ..faults import BatchFaults, FaultSyntaxError, parse_batch_faults

SUPPORTED_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions")
SDK_ENDPOINTS = (
    *SUPPORTED_ENDPOINTS,
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)


@dataclass(frozen=True)
class CreateRequest:
    """A create body that passed the checks."""

    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    output_ttl: float
    """Lifetime of the output files: ``output_expires_after.seconds``, else ``file_ttl_seconds``."""
    faults: BatchFaults
    """From ``metadata["emu_faults"]``, before the server-wide batch faults are merged in."""


def check_create(body: Any, cfg: EmulatorConfig) -> CreateRequest:
    """``body`` checked, field by field: :class:`ApiError` 400 on the first problem."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ApiError(400, f"Missing required parameter: '{key}'.", param=key)
    endpoint = body["endpoint"]
    if endpoint not in SDK_ENDPOINTS:
        raise ApiError(
            400,
            f"Invalid value for 'endpoint': {endpoint!r}. Supported: {', '.join(SDK_ENDPOINTS)}.",
            param="endpoint",
        )
    if endpoint not in SUPPORTED_ENDPOINTS:
        raise ApiError(400, f"The emulator does not support endpoint {endpoint!r}.", param="endpoint")
    if body["completion_window"] != "24h":
        raise ApiError(
            400,
            "Invalid value for 'completion_window': only '24h' is supported.",
            param="completion_window",
        )
    metadata = _check_metadata(body.get("metadata"), cfg)
    output_ttl = cfg.file_ttl_seconds
    oea = body.get("output_expires_after")
    if oea is not None:
        if (
            not isinstance(oea, dict)
            or oea.get("anchor") != "created_at"
            or not isinstance(oea.get("seconds"), int)
            or not 3600 <= oea["seconds"] <= 2592000
        ):
            raise ApiError(
                400,
                "Invalid 'output_expires_after': anchor must be 'created_at', seconds 3600..2592000.",
                param="output_expires_after",
            )
        output_ttl = float(oea["seconds"])
    try:
        faults = parse_batch_faults((metadata or {}).get("emu_faults"), cfg.expire_done_fraction)
    except FaultSyntaxError as exc:
        raise ApiError(400, f"Invalid metadata 'emu_faults': {exc}", param="metadata") from exc
    return CreateRequest(body["input_file_id"], endpoint, metadata, output_ttl, faults)


def _check_metadata(metadata: Any, c: EmulatorConfig) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ApiError(400, "Invalid 'metadata': expected an object of string values.", param="metadata")
    if len(metadata) > c.openai_metadata_max_pairs:
        raise ApiError(
            400, f"Invalid 'metadata': at most {c.openai_metadata_max_pairs} pairs.", param="metadata"
        )
    for k, v in metadata.items():
        if len(k) > c.openai_metadata_max_key or len(v) > c.openai_metadata_max_value:
            raise ApiError(
                400,
                f"Invalid 'metadata': keys up to {c.openai_metadata_max_key} characters, "
                f"values up to {c.openai_metadata_max_value}.",
                param="metadata",
            )
    return dict(metadata)
