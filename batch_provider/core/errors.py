"""One exception type per failure class, so callers decide by type, never by message text.

Messages never contain API keys or request payloads: they name the provider, the operation, the
HTTP status and the provider's own error message.
"""

from __future__ import annotations


class BatchProviderError(Exception):
    """Base class. ``status_code`` is the HTTP status when there was one."""

    retryable: bool = False
    retry_after: float | None = None
    """Seconds the provider asked to wait (its ``Retry-After``), when it said."""

    def __init__(self, message: str, *, status_code: int | None = None, provider: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.provider = provider


class AuthenticationError(BatchProviderError):
    """The key is missing, wrong or lacks permission (401/403). Fix the Airflow connection."""


class NotFoundError(BatchProviderError):
    """The batch or file does not exist (404), or results are no longer kept."""


class InvalidRequestError(BatchProviderError):
    """The provider refused the request as malformed (400/413/422). Resending it cannot help."""


class ConflictError(BatchProviderError):
    """The object is in the wrong state for the operation (cancel after end, delete before end)."""


class RateLimitedError(BatchProviderError):
    """Still rate limited (429) when the retry deadline ran out, or a limit that will not clear soon
    (spend cap, insufficient quota, Retry-After beyond the policy's ceiling)."""

    retryable = True


class ProviderUnavailableError(BatchProviderError):
    """5xx / 529 / connection failures persisted past the retry policy."""

    retryable = True


class RequestRejected(ValueError):
    """A single input request cannot be sent (before any paid call): it becomes a ``rejected``
    record naming ``field`` and ``reason``."""

    def __init__(self, custom_id: str | None, field: str, reason: str):
        super().__init__(f"request {custom_id!r}: field {field!r}: {reason}")
        self.custom_id = custom_id
        self.field = field
        self.reason = reason
