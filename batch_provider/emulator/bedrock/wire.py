"""AWS conventions of the Bedrock face: errors as botocore reads them, timestamps as it writes and
parses them.

Invariants:
- Every refusal is a :class:`BedrockError`; the routes render it as the status,
  ``x-amzn-ErrorType: <name>``, its own headers (e.g. ``Retry-After``) and ``{"message": ...}``.
- Timestamps go out as ISO 8601 UTC with milliseconds (``2026-01-01T00:00:00.000Z``).
"""

from __future__ import annotations

from datetime import UTC, datetime


class BedrockError(Exception):
    """An AWS-style error: HTTP status, ``x-amzn-ErrorType`` name and message."""

    def __init__(self, status: int, name: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message
        self.headers = headers or {}


def validation(message: str) -> BedrockError:
    return BedrockError(400, "ValidationException", message)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(raw: str) -> float:
    """An ISO 8601 timestamp or Unix seconds from a query string."""
    try:
        return float(raw)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
