"""The backend errors, kept importable from their first home; they live in
:mod:`batch_provider.core.errors`."""

from batch_provider.core.errors import (
    AuthenticationError,
    BatchProviderError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ProviderUnavailableError,
    RateLimitedError,
    RequestRejected,
)

__all__ = [
    "AuthenticationError",
    "BatchProviderError",
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "RequestRejected",
]
