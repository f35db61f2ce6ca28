"""A provider-neutral API error; each router renders it in its provider's envelope."""

from __future__ import annotations


class ApiError(Exception):
    """``type`` is the OpenAI ``error.type`` or the Anthropic ``error.type``, as the raiser knows
    which provider it serves; ``code``/``param`` are OpenAI-only and ignored by Anthropic."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def not_found(message: str, provider: str) -> ApiError:
    return ApiError(404, message, "invalid_request_error" if provider == "openai" else "not_found_error")
