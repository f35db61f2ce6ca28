"""The one HTTP transport every HTTP backend uses: pooling, timeouts, retries, error classes.

The decisions (timeouts, retry schedule, error classes) are
:mod:`batch_provider.core.transport_policy`'s; this module makes the calls and applies them.

Invariants:
- One :class:`Transport` wraps one ``httpx2.AsyncClient`` (one connection pool) for its lifetime,
  or ``policy.pool_shards`` of them with the same settings, taking plain calls in turn (streams
  use the first).
- A call is retried as the transport policy says, within one overall deadline per call; a
  non-idempotent call that may have reached the server is retried only after ``recover`` found no
  trace of it.
- Error messages name the provider, the operation, the HTTP status and the provider's own message,
  scrubbed of the credential the client sends; never a request payload.
- ``httpx2`` rather than httpx 0.28: httpx 0.28's pool spends quadratic time assigning queued
  requests to connections and stalls the event loop when thousands of polls are in flight
  (``bench/poll.py`` shows the difference). ``max_in_flight`` optionally bounds concurrent
  requests below the pool size on top of that.
- A ``Retry-After`` answer holds the whole pool: until that time has passed no new call is sent
  through this transport (retries of a call follow their own plan, which honours it too), and an
  error raised after one carries the wait as ``retry_after``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2

from batch_provider.core.errors import ProviderUnavailableError
from batch_provider.core.jsonl import dumps_line
from batch_provider.core.transport_policy import (
    RETRYABLE_STATUSES,
    ErrorInfo,
    QuotaCheck,
    RetryPlan,
    TransportPolicy,
    error_for_status,
    parse_retry_after,
    plan_after_exception,
    plan_after_status,
    read_error_info,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "ContentFactory",
    "ErrorInfo",
    "QuotaCheck",
    "RetryPlan",
    "Transport",
    "TransportPolicy",
    "TruncatedStreamError",
    "encode_json",
    "error_for_status",
    "parse_retry_after",
    "plan_after_exception",
    "plan_after_status",
    "read_error_info",
    "shared_ssl_context",
]

ContentFactory = Callable[[], AsyncIterator[bytes]]
"""Builds a fresh request body stream for each attempt (a consumed stream cannot be replayed)."""


class TruncatedStreamError(Exception):
    """A response body ended before its last record was complete."""


_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_*\-]{4,}|Bearer\s+\S+)")


def _quiet_http_client_logs() -> None:
    """httpx2 logs every request at INFO; a trigger polling thousands of batches would write a
    task-log line per poll. Keep its warnings unless the user set a level of their own."""
    for name in ("httpx2", "httpx"):
        client_log = logging.getLogger(name)
        if client_log.level == logging.NOTSET:
            client_log.setLevel(logging.WARNING)


_quiet_http_client_logs()


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One verified TLS context for every client: building one loads the CA bundle (about 40 ms),
    which would block a triggerer's event loop each time a trigger builds its backend."""
    return ssl.create_default_context()


class Transport:
    """Retrying, error-mapping HTTP calls on one pooled ``httpx2.AsyncClient``.

    ``credential_headers`` are set on the client and nowhere else; when a ``client`` is supplied
    the caller owns it (and its headers) and :meth:`aclose` leaves it open.
    """

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        credential_headers: Mapping[str, str],
        headers: Mapping[str, str] | None = None,
        policy: TransportPolicy | None = None,
        client: httpx2.AsyncClient | None = None,
        quota_exhausted: QuotaCheck | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.provider = provider
        self.policy = policy or TransportPolicy()
        self.base_url = base_url.rstrip("/") + "/"
        self._owns_client = client is None
        if client is None:
            clients = [
                httpx2.AsyncClient(
                    base_url=self.base_url,
                    verify=shared_ssl_context(),
                    timeout=self.policy.timeout(),
                    limits=self.policy.limits(),
                    headers={**(headers or {}), **credential_headers},
                )
                for _ in range(max(1, self.policy.pool_shards))
            ]
        else:
            client.headers.update({**(headers or {}), **credential_headers})
            clients = [client]
        self._client = clients[0]
        self._clients = clients
        self._turn = 0
        self._credential_names = tuple(credential_headers)
        self._quota_exhausted = quota_exhausted or (lambda response, info: False)
        self._sleep = sleep
        self._rand = rand
        self._gate = asyncio.Semaphore(self.policy.max_in_flight) if self.policy.max_in_flight else None
        self.hold_until = 0.0
        """``time.monotonic()`` before which new calls wait: the latest ``Retry-After`` seen."""

    def __repr__(self) -> str:
        return f"Transport(provider={self.provider!r}, base_url={self.base_url!r})"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` relative to the base URL (absolute URLs pass through)."""
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + path.lstrip("/")

    def scrub(self, text: str) -> str:
        """``text`` without the credential values this transport sends."""
        for name in self._credential_names:
            value = self._client.headers.get(name)
            if value:
                text = text.replace(value, "[redacted]")
                token = value.removeprefix("Bearer ").strip()
                if token:
                    text = text.replace(token, "[redacted]")
        return _KEY_PATTERN.sub("[redacted]", text)

    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        content: ContentFactory | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
        recover: Callable[[], Awaitable[httpx2.Response | None]] | None = None,
    ) -> httpx2.Response:
        """One call with the retry policy; returns a read 2xx response or raises a mapped error.

        A non-``idempotent`` call whose earlier attempt may have reached the server (the connection
        dropped after sending) is retried only after ``recover`` found no trace of it; ``recover``
        returns a response to use instead when it did find one. Without ``recover`` such a call is
        not retried.
        """
        started = time.monotonic()
        attempt = 0
        await self._honour_hold()
        while True:
            attempt += 1
            maybe_sent = False
            try:
                remaining = self.policy.deadline - (time.monotonic() - started)
                if remaining <= 0:
                    raise ProviderUnavailableError(
                        f"{self.provider} {operation}: deadline of {self.policy.deadline:.0f}s passed",
                        provider=self.provider,
                    )
                async with asyncio.timeout(remaining):
                    response = await self._send(
                        method, path, json_body=json_body, params=params, content=content, headers=headers
                    )
            except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
                failure: BaseException = exc
            except (httpx2.TransportError, TimeoutError) as exc:
                failure = exc
                maybe_sent = True
            else:
                if response.is_success:
                    return response
                await self._wait_or_raise(response, operation, attempt, started)
                continue
            delay = plan_after_exception(
                self.policy, attempt=attempt, elapsed=time.monotonic() - started, rand=self._rand
            )
            if delay is None or (maybe_sent and not idempotent and recover is None):
                raise ProviderUnavailableError(
                    self.scrub(f"{self.provider} {operation}: {type(failure).__name__}: {failure}"),
                    provider=self.provider,
                ) from None
            await self._sleep(delay)
            if maybe_sent and not idempotent and recover is not None:
                found = await recover()
                if found is not None:
                    return found

    async def json(self, method: str, path: str, *, operation: str, **kwargs: Any) -> Any:
        """:meth:`request`, decoded as JSON."""
        response = await self.request(method, path, operation=operation, **kwargs)
        return response.json()

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, *, operation: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx2.Response]:
        """An open streaming 2xx response; opening is retried like :meth:`request`, the body is the
        caller's to read (and to restart on :class:`TruncatedStreamError` / transport errors)."""
        started = time.monotonic()
        attempt = 0
        await self._honour_hold()
        while True:
            attempt += 1
            request = self._client.build_request(method, self.url(path), headers=headers)
            try:
                response = await self._gated(self._client.send(request, stream=True))
            except httpx2.TransportError as exc:
                delay = plan_after_exception(
                    self.policy, attempt=attempt, elapsed=time.monotonic() - started, rand=self._rand
                )
                if delay is None:
                    raise ProviderUnavailableError(
                        self.scrub(f"{self.provider} {operation}: {type(exc).__name__}: {exc}"),
                        provider=self.provider,
                    ) from None
                await self._sleep(delay)
                continue
            if response.is_success:
                try:
                    yield response
                finally:
                    await response.aclose()
                return
            try:
                await response.aread()
            except httpx2.TransportError:
                pass
            finally:
                await response.aclose()
            await self._wait_or_raise(response, operation, attempt, started)

    async def _wait_or_raise(
        self, response: httpx2.Response, operation: str, attempt: int, started: float
    ) -> None:
        """After an error status: sleep as the policy says before the next attempt, or raise."""
        info = read_error_info(response)
        error = error_for_status(self.provider, operation, response.status_code, info, self.scrub)
        asked = parse_retry_after(response.headers)
        if asked is not None:
            self.hold_until = max(self.hold_until, time.monotonic() + asked)
            error.retry_after = asked
        plan = plan_after_status(
            self.policy,
            attempt=attempt,
            elapsed=time.monotonic() - started,
            response=response,
            info=info,
            error=error,
            quota_exhausted=self._quota_exhausted(response, info),
            rand=self._rand,
        )
        if plan.delay is None:
            assert plan.error is not None
            raise plan.error
        await self._sleep(plan.delay)

    async def pause_before_restart(self, attempt: int, started: float, operation: str, cause: str) -> None:
        """Wait before restarting a body download that broke off; raise when the policy is spent."""
        delay = plan_after_exception(
            self.policy, attempt=attempt, elapsed=time.monotonic() - started, rand=self._rand
        )
        if delay is None:
            raise ProviderUnavailableError(
                self.scrub(f"{self.provider} {operation}: download kept breaking off: {cause}"),
                provider=self.provider,
            )
        await self._sleep(delay)

    async def _honour_hold(self) -> None:
        wait = self.hold_until - time.monotonic()
        if wait > 0:
            await self._sleep(wait)

    async def aclose(self) -> None:
        if self._owns_client:
            for client in self._clients:
                await client.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any,
        params: Mapping[str, Any] | None,
        content: ContentFactory | None,
        headers: Mapping[str, str] | None,
    ) -> httpx2.Response:
        kwargs: dict[str, Any] = {"params": params, "headers": headers}
        if content is not None:
            kwargs["content"] = content()
        elif json_body is not None:
            kwargs["content"] = encode_json(json_body)
            kwargs["headers"] = {"content-type": "application/json", **(headers or {})}
        client = self._client
        if len(self._clients) > 1:
            self._turn = (self._turn + 1) % len(self._clients)
            client = self._clients[self._turn]
        return await self._gated(client.request(method, self.url(path), **kwargs))

    async def _gated(self, call: Awaitable[httpx2.Response]) -> httpx2.Response:
        if self._gate is None:
            return await call
        async with self._gate:
            return await call


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, the one encoding used for request bodies."""
    return dumps_line(value)
