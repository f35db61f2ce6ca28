"""The retry schedule as one policy: backoff, Retry-After handling, caps, deadline, x-should-retry."""

from __future__ import annotations

import email.utils

import httpx2
import pytest

from batch_provider.backends.transport import (
    ErrorInfo,
    Transport,
    TransportPolicy,
    error_for_status,
    parse_retry_after,
    plan_after_exception,
    plan_after_status,
)
from batch_provider.core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ProviderUnavailableError,
    RateLimitedError,
)

INFO = ErrorInfo(type="server_error", message="boom", code=None)
SENTINEL = ProviderUnavailableError("x")


def plan(policy: TransportPolicy, status: int, headers: dict[str, str] | None = None, **kwargs):
    defaults = {"attempt": 1, "elapsed": 0.0, "quota_exhausted": False, "rand": lambda: 1.0}
    response = httpx2.Response(status, headers=headers or {})
    return plan_after_status(policy, response=response, info=INFO, error=SENTINEL, **{**defaults, **kwargs})


def test_equal_jitter_schedule_is_capped_exponential() -> None:
    policy = TransportPolicy(backoff_base=0.5, backoff_cap=8.0, jitter="equal")
    top = [policy.backoff(n, lambda: 1.0) for n in range(1, 8)]
    bottom = [policy.backoff(n, lambda: 0.0) for n in range(1, 8)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert bottom == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_full_jitter_draws_from_zero() -> None:
    policy = TransportPolicy(backoff_base=1.0, backoff_cap=10.0, jitter="full")
    assert policy.backoff(3, lambda: 0.0) == 0.0
    assert policy.backoff(3, lambda: 0.5) == 2.0
    assert policy.backoff(9, lambda: 1.0) == 10.0


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_are_retried(status: int) -> None:
    assert plan(TransportPolicy(), status).delay == 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_bad_input_is_never_retried(status: int) -> None:
    result = plan(TransportPolicy(), status)
    assert result.delay is None and result.error is SENTINEL


def test_retry_after_ms_wins_over_retry_after() -> None:
    result = plan(TransportPolicy(), 429, {"retry-after-ms": "1500", "retry-after": "7"})
    assert result.delay == 1.5


def test_retry_after_seconds_and_http_date() -> None:
    assert plan(TransportPolicy(), 503, {"retry-after": "3"}).delay == 3.0
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=1_000_000) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_retry_after_beyond_ceiling_gives_up_at_once() -> None:
    result = plan(TransportPolicy(retry_after_ceiling=120), 429, {"retry-after": "121"})
    assert result.delay is None


def test_quota_429_gives_up_at_once() -> None:
    assert plan(TransportPolicy(), 429, {"retry-after": "1"}, quota_exhausted=True).delay is None


def test_x_should_retry_overrides_status() -> None:
    assert plan(TransportPolicy(), 500, {"x-should-retry": "false"}).delay is None
    assert plan(TransportPolicy(), 400, {"x-should-retry": "true"}).delay == 0.5


def test_attempts_and_deadline_bound_retries() -> None:
    policy = TransportPolicy(max_attempts=3, deadline=10.0)
    assert plan(policy, 500, attempt=2).delay == 1.0
    assert plan(policy, 500, attempt=3).delay is None
    assert plan(policy, 500, {"retry-after": "5"}, elapsed=6.0).delay is None
    assert plan_after_exception(policy, attempt=1, elapsed=0.0, rand=lambda: 1.0) == 0.5
    assert plan_after_exception(policy, attempt=3, elapsed=0.0, rand=lambda: 1.0) is None
    assert plan_after_exception(policy, attempt=1, elapsed=9.9, rand=lambda: 1.0) is None


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, InvalidRequestError),
        (422, InvalidRequestError),
        (429, RateLimitedError),
        (500, ProviderUnavailableError),
        (529, ProviderUnavailableError),
    ],
)
def test_error_class_per_status(status: int, cls: type) -> None:
    error = error_for_status("openai", "get batch", status, INFO, lambda text: text)
    assert type(error) is cls
    assert error.status_code == status
    assert str(error) == f"openai get batch: HTTP {status} server_error: boom"


async def test_error_messages_are_scrubbed() -> None:
    transport = Transport(
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        credential_headers={"Authorization": "Bearer k-123"},
    )
    try:
        text = "Incorrect API key provided: sk-abc123456789; you sent k-123 (Bearer k-123)"
        scrubbed = transport.scrub(text)
        assert "k-123" not in scrubbed and "sk-abc" not in scrubbed
        assert "k-123" not in repr(transport)
    finally:
        await transport.aclose()


def test_backends_share_one_tls_context() -> None:
    """Loading the CA bundle per backend would block a triggerer's loop for every trigger."""
    from batch_provider.backends.registry import create_backend
    from batch_provider.backends.transport import shared_ssl_context

    contexts = {
        id(create_backend(provider, api_key="k")._http._client._transport._pool._ssl_context)
        for provider in ("openai", "anthropic", "openai")
    }
    assert contexts == {id(shared_ssl_context())}


def test_per_request_client_logs_are_quiet_unless_configured() -> None:
    import logging

    import batch_provider.backends.transport  # noqa: F401 - importing sets the level

    assert logging.getLogger("httpx2").getEffectiveLevel() >= logging.WARNING
