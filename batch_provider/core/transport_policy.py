"""What the transport decides, without any I/O: timeouts and pool size, the retry schedule, what a
failed HTTP call means and which error class it raises.

Invariants:
- A call is retried only for transient failures (408, 409, 429, 500, 502, 503, 504, 529,
  connection errors, truncated streams) and only while the call's overall deadline allows the
  next wait; a 4xx that means bad input is never retried.
- ``retry-after-ms`` wins over ``retry-after`` (seconds or HTTP date); a wait the server asks for
  beyond ``retry_after_ceiling``, or a 429 that means a quota or spend cap, gives up at once (the
  caller raises :class:`RateLimitedError`) instead of sleeping.
- ``x-should-retry: true|false`` overrides the status-based decision.
- Every failure status maps to exactly one class of :mod:`batch_provider.core.errors`; the
  message names the provider, the operation, the status and the provider's own message, passed
  through the caller's ``scrub``.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

import httpx2

from batch_provider.core.errors import (
    AuthenticationError,
    BatchProviderError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ProviderUnavailableError,
    RateLimitedError,
)

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True)
class TransportPolicy:
    """Timeouts, pool size and retry schedule. All durations in seconds."""

    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    write_timeout: float = 120.0
    pool_timeout: float = 60.0
    max_connections: int = 100
    max_keepalive_connections: int = 20
    """Idle connections kept open. The pool checks every idle connection on each request, so a
    small keep-alive set keeps the per-call CPU cost low."""
    max_in_flight: int | None = 20
    """Bound on concurrent requests through this transport (``None``: the pool alone). Callers
    beyond it wait on a semaphore (a few microseconds) instead of queueing in the pool, whose cost
    grows with queued requests and open connections; keeping it at ``max_keepalive_connections``
    also means no connection is opened only to be closed again. Throughput is about
    ``max_in_flight / latency``: raise both for slow links with many concurrent calls."""
    pool_shards: int = 1
    """Connection pools the connections are split over (``max_connections`` and
    ``max_keepalive_connections`` in all), calls spread over them in turn. On every call a pool
    probes each of its idle connections, so one pool of 100 connections spends four times the CPU
    per call of four pools of 25; a transport with many calls in flight (the shared poller) splits
    its pool for that reason."""
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    jitter: Literal["full", "equal"] = "equal"
    retry_after_ceiling: float = 120.0
    deadline: float = 900.0
    """Overall budget of one call, every attempt and wait included."""

    def timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(
            connect=self.connect_timeout,
            read=self.read_timeout,
            write=self.write_timeout,
            pool=self.pool_timeout,
        )

    def limits(self) -> httpx2.Limits:
        """The limits of one pool (of ``pool_shards``)."""
        shards = max(1, self.pool_shards)
        return httpx2.Limits(
            max_connections=max(1, self.max_connections // shards),
            max_keepalive_connections=max(1, self.max_keepalive_connections // shards),
        )

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Wait before retry number ``attempt`` (1-based): capped exponential with jitter.

        Full jitter draws from ``[0, d]``, equal jitter from ``[d/2, d]``, where
        ``d = min(cap, base * 2**(attempt-1))``.
        """
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        if self.jitter == "full":
            return ceiling * rand()
        return ceiling / 2 + (ceiling / 2) * rand()


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, then ``retry-after`` as seconds or as an
    HTTP date; ``None`` when absent or unparseable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class ErrorInfo:
    """The provider's error envelope, reduced to what callers act on."""

    type: str | None
    message: str
    code: str | None


def read_error_info(response: httpx2.Response) -> ErrorInfo:
    """OpenAI ``{"error":{message,type,code}}`` and Anthropic ``{"type":"error","error":{type,message}}``
    both fit; a non-JSON body (an edge proxy's 413) gives its first 200 characters."""
    try:
        body = response.json()
    except (ValueError, httpx2.ResponseNotRead):
        text = ""
        with suppress(httpx2.ResponseNotRead):
            text = response.text[:200]
        return ErrorInfo(type=None, message=text, code=None)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return ErrorInfo(
            type=error.get("type"),
            message=str(error.get("message") or ""),
            code=str(code) if code is not None else None,
        )
    return ErrorInfo(type=None, message=json.dumps(body)[:200], code=None)


QuotaCheck = Callable[[httpx2.Response, ErrorInfo], bool]
"""True when a 429 means a quota or spend cap that waiting a little will not clear."""


@dataclass(frozen=True)
class RetryPlan:
    """Decision after one failed attempt: wait ``delay`` then retry, or raise ``error``."""

    delay: float | None
    error: BatchProviderError | None = None


def plan_after_status(
    policy: TransportPolicy,
    *,
    attempt: int,
    elapsed: float,
    response: httpx2.Response,
    info: ErrorInfo,
    error: BatchProviderError,
    quota_exhausted: bool,
    rand: Callable[[], float] = random.random,
) -> RetryPlan:
    """Whether and when to retry after an error status. ``error`` is what to raise otherwise."""
    should_retry = response.headers.get("x-should-retry")
    if should_retry == "false":
        return RetryPlan(None, error)
    retryable = response.status_code in RETRYABLE_STATUSES or should_retry == "true"
    if not retryable:
        return RetryPlan(None, error)
    if response.status_code == 429 and quota_exhausted:
        return RetryPlan(None, error)
    asked = parse_retry_after(response.headers)
    if asked is not None and asked > policy.retry_after_ceiling:
        return RetryPlan(None, error)
    delay = asked if asked is not None else policy.backoff(attempt, rand)
    if attempt >= policy.max_attempts or elapsed + delay > policy.deadline:
        return RetryPlan(None, error)
    return RetryPlan(delay)


def plan_after_exception(
    policy: TransportPolicy,
    *,
    attempt: int,
    elapsed: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Wait before retrying a connection failure or truncated stream; ``None``: give up."""
    delay = policy.backoff(attempt, rand)
    if attempt >= policy.max_attempts or elapsed + delay > policy.deadline:
        return None
    return delay


def error_for_status(
    provider: str, operation: str, status: int, info: ErrorInfo, scrub: Callable[[str], str]
) -> BatchProviderError:
    """The error class for an HTTP failure status, with a message free of secrets."""
    kind = f" {info.type}" if info.type else ""
    code = f" ({info.code})" if info.code else ""
    message = scrub(f"{provider} {operation}: HTTP {status}{kind}{code}: {info.message}".rstrip(": "))
    cls: type[BatchProviderError]
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status in (402, 429):
        cls = RateLimitedError
    elif status == 408 or status >= 500:
        cls = ProviderUnavailableError
    else:
        cls = InvalidRequestError
    return cls(message, status_code=status, provider=provider)
