"""HTTP plumbing shared by the provider routers: auth, error envelopes, injected HTTP faults,
response headers and per-route counters.

Every OpenAI and Anthropic route is declared with :func:`api_route`; the wrapper it adds does, in
order: count the call → check auth (401, or Anthropic's 400 for a missing ``anthropic-version``) →
maybe inject a server-wide fault (:func:`inject_fault`, shared with the Bedrock and Gemini faces) →
run the handler → render :class:`ApiError` in the provider's envelope → for a ``drop`` fault, cut
the response mid-body. Handlers get ``(request, store)``.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .errors import ApiError
from .store import Store

Handler = Callable[[Request, Store], Awaitable[Response]]

_OPENAI_HEADERS = {
    "openai-version": "2020-10-01",
    "openai-organization": "org-emulator",
    "openai-processing-ms": "1",
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-tokens": "1999000",
    "x-ratelimit-reset-tokens": "30ms",
}
_ANTHROPIC_HEADERS = {
    "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
    "anthropic-ratelimit-requests-limit": "1000",
    "anthropic-ratelimit-requests-remaining": "999",
    "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:00Z",
}


class DropConnection(Exception):
    """Raised after part of a response was sent: the server then closes the connection."""


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _is_drop(exc)


def _is_drop(exc: BaseException | None) -> bool:
    if isinstance(exc, DropConnection):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_drop(e) for e in exc.exceptions)
    return False


def install_log_filter() -> None:
    """Keep intentional connection drops out of the server's error log."""
    logging.getLogger("uvicorn.error").addFilter(_DropFilter())


def request_id() -> str:
    return "req_" + secrets.token_hex(12)


def provider_of(path: str) -> str:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def error_response(provider: str, err: ApiError) -> Response:
    if provider == "anthropic":
        typ = (
            err.type
            if err.type != "invalid_request_error" or err.status < 404
            else _anthropic_type(err.status)
        )
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": typ, "message": err.message},
            "request_id": request_id(),
        }
    else:
        body = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _anthropic_type(status: int) -> str:
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "request_too_large",
        429: "rate_limit_error",
        504: "timeout_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


def fault_error(provider: str, kind: str, retry_after: float) -> ApiError:
    """The error an injected HTTP fault answers with (not for ``drop``/``reset``)."""
    if kind in ("429", "429_long"):
        ra = 300.0 if kind == "429_long" else retry_after
        headers = {"retry-after": str(max(0, math.ceil(ra))), "retry-after-ms": str(int(ra * 1000))}
        if provider == "anthropic":
            headers["anthropic-ratelimit-requests-remaining"] = "0"
            return ApiError(
                429,
                "Number of requests has exceeded your rate limit (emulated fault).",
                "rate_limit_error",
                headers=headers,
            )
        headers.update({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": f"{ra:g}s"})
        return ApiError(
            429,
            f"Rate limit reached for requests (emulated fault). Please try again in {ra:g}s.",
            "requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if kind == "quota":
        if provider == "anthropic":
            return ApiError(
                429,
                "You have reached your specified API usage limits (emulated fault).",
                "rate_limit_error",
                headers={"x-should-retry": "false"},
            )
        return ApiError(
            429,
            "You exceeded your current quota, please check your plan and billing details (emulated fault).",
            "insufficient_quota",
            code="insufficient_quota",
            headers={"x-should-retry": "false"},
        )
    status = int(kind)
    # 503 and 529 carry Retry-After (RFC 9110 allows it on 503); other 5xx leave the backoff to the client.
    headers = (
        {"retry-after": str(max(0, math.ceil(retry_after))), "retry-after-ms": str(int(retry_after * 1000))}
        if status in (503, 529)
        else {}
    )
    if provider == "anthropic":
        return ApiError(status, f"Emulated {status} fault.", _anthropic_type(status), headers=headers)
    if status == 529:
        status = 503
    return ApiError(
        status,
        f"The server had an error while processing your request (emulated {kind} fault).",
        "server_error",
        headers=headers,
    )


class CutResponse(Response):
    """Sends the headers and part of ``inner``'s body, then drops the connection."""

    def __init__(self, inner: Response, fraction: float = 0.5) -> None:
        self.inner = inner
        self.fraction = fraction

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = self.inner
        await send({"type": "http.response.start", "status": inner.status_code, "headers": inner.raw_headers})
        if isinstance(inner, StreamingResponse):
            async for chunk in cut_stream(inner.body_iterator, _length(inner), self.fraction):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            body = bytes(inner.body)
            await send(
                {
                    "type": "http.response.body",
                    "body": body[: int(len(body) * self.fraction)],
                    "more_body": True,
                }
            )
        raise DropConnection()


def _length(resp: Response) -> int | None:
    value = resp.headers.get("content-length")
    return int(value) if value else None


async def cut_stream(
    it: AsyncIterator[Any], total: int | None, fraction: float = 0.5
) -> AsyncIterator[bytes]:
    """Yield the first ``fraction`` of ``total`` bytes (or half of the first chunk when the size is
    unknown), then raise :class:`DropConnection`."""
    sent = 0
    limit = int(total * fraction) if total else None
    async for chunk in it:
        data = chunk.encode() if isinstance(chunk, str) else chunk
        if limit is None:
            yield data[: max(1, len(data) // 2)]
            break
        if sent + len(data) >= limit:
            if limit > sent:
                yield data[: limit - sent]
            break
        sent += len(data)
        yield data
    raise DropConnection()


def _auth_error(provider: str, request: Request) -> Response | None:
    headers = request.headers
    bearer = headers.get("authorization", "")
    has_bearer = bearer[:7].lower() == "bearer " and bool(bearer[7:].strip())
    if provider == "openai":
        if not has_bearer:
            return error_response(
                provider,
                ApiError(
                    401,
                    "You didn't provide an API key. Provide it in the Authorization header (Bearer auth).",
                    code="invalid_api_key",
                ),
            )
        return None
    if not has_bearer and not headers.get("x-api-key", "").strip():
        return error_response(provider, ApiError(401, "x-api-key header is required", "authentication_error"))
    if not headers.get("anthropic-version", "").strip():
        return error_response(provider, ApiError(400, "anthropic-version: header is required"))
    return None


def inject_fault(
    store: Store, method: str, request: Request, render: Callable[[str, float], Response]
) -> tuple[str | None, Response | None]:
    """The server-wide fault picked for this call, counted as ``http_<kind>`` in the stats, as
    (kind, early answer). ``reset`` answers by closing the connection before a byte is sent;
    ``drop`` and no fault have no early answer (for ``drop`` the call takes effect, then the caller
    loses its answer); every other kind answers ``render(kind, retry_after)``."""
    fault = store.faults.pick(method, request.scope["path"])
    if fault is None:
        return None, None
    kind, retry_after = fault
    store.stats.faults[f"http_{kind}"] += 1
    if kind == "reset":
        return kind, CutResponse(Response(b" " * 64, status_code=200), fraction=0.0)
    if kind == "drop":
        return kind, None
    return kind, render(kind, retry_after)


def api_route(provider: str, method: str, path: str) -> Callable[[Handler], Route]:
    label = f"{method} {path}"
    static = [
        (k.encode(), v.encode())
        for k, v in (_OPENAI_HEADERS if provider == "openai" else _ANTHROPIC_HEADERS).items()
    ]
    id_header = b"x-request-id" if provider == "openai" else b"request-id"

    def render_fault(kind: str, retry_after: float) -> Response:
        resp = error_response(provider, fault_error(provider, kind, retry_after))
        resp.raw_headers.append((id_header, request_id().encode()))
        return resp

    def deco(fn: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            store: Store = request.app.state.store
            store.stats.requests[label] += 1
            denied = _auth_error(provider, request)
            if denied is not None:
                return denied
            kind, early = inject_fault(store, method, request, render_fault)
            if early is not None:
                return early
            try:
                resp = await fn(request, store)
            except ApiError as err:
                resp = error_response(provider, err)
            # raw_headers, not resp.headers[...] =: MutableHeaders rescans the list on every set.
            resp.raw_headers.extend(static)
            resp.raw_headers.append((id_header, request_id().encode()))
            if kind == "drop":
                return CutResponse(resp)
            return resp

        return Route(path, endpoint, methods=[method], name=label)

    return deco


async def json_body(request: Request, max_bytes: int | None = None) -> Any:
    """The parsed JSON body; 413 beyond ``max_bytes``, 400 when it is not JSON."""
    if max_bytes is not None:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ApiError(
                413, f"Request exceeds the maximum size of {max_bytes} bytes.", "request_too_large"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(
                    413, f"Request exceeds the maximum size of {max_bytes} bytes.", "request_too_large"
                )
            chunks.append(chunk)
        raw = b"".join(chunks)
    else:
        raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "We could not parse the JSON body of your request.") from exc


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise ApiError(400, f"Invalid '{name}': expected an integer in {lo}..{hi}.", param=name)
    return value
