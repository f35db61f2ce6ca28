"""Bedrock's synchronous call for a sync fallback: a part-file line ``{"recordId", "modelInput"}``
is sent as Bedrock Runtime ``InvokeModel`` (``POST /model/<modelId>/invoke``) with the same
``modelInput`` as its body, to the model of the row's chunk (a model id, an inference profile or
an ARN, as the job was given it), and the answer read as the ``.jsonl.out`` line the job would
have written for that record (``{"recordId", "modelInput", "modelOutput"}``, through the
backend's own parser). A run with ``invocation_type="Converse"`` sends its lines to ``Converse``
(``POST /model/<modelId>/converse``) instead: its ``modelInput`` is a Converse request, whose
fields become the call's (inline image and document bytes, base64 text on the line, decoded).

Invariants:
- One attempt per call: the ``bedrock-runtime`` client has botocore's retries off
  (:data:`~.aws.SINGLE_ATTEMPT`), because ``InvokeModel`` is paid and carries no idempotency
  token. A throttled call (429, ``Retry-After`` when the answer has one) or a 5xx answer is raised
  for the sync fallback's runner, which waits and sends it again within its own count of tries; a
  4xx is the row's failure. A call that could not connect (nothing was sent) is tried again here,
  a few times; one whose connection broke after it was sent is not (it may have been paid).
- Credentials stay in the aiobotocore client (the backend's session, connection or keys); errors
  name the operation, AWS's error code and message, never keys or payloads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
)

from batch_provider.backends.bedrock.aws import PROVIDER, RUNTIME, JobQuotaError, mapped_error
from batch_provider.core.errors import (
    BatchProviderError,
    InvalidRequestError,
    ProviderUnavailableError,
    RateLimitedError,
)
from batch_provider.core.jsonl import dumps_line
from batch_provider.core.models import ResultRecord
from batch_provider.core.transport_policy import parse_retry_after

if TYPE_CHECKING:
    from batch_provider.backends.bedrock.backend import BedrockBackend
    from batch_provider.core.sync_fallback import SyncRow

CONNECT_TRIES = 4
"""Tries of a call that could not connect at all (nothing sent), before it counts as failed."""


def sync_error(exc: ClientError, operation: str) -> BatchProviderError:
    """The runner's error class for a refused call: 429s (throttling, a model not ready, a quota)
    are :class:`RateLimitedError` with the answer's ``Retry-After``; 5xx
    :class:`ProviderUnavailableError`; other 4xx the row's own failure."""
    error = mapped_error(exc, operation)
    status = error.status_code
    if isinstance(error, JobQuotaError) or (status == 429 and not isinstance(error, RateLimitedError)):
        detail = exc.response.get("Error") or {}
        code = str(detail.get("Code") or "Unknown")
        message = str(detail.get("Message") or code)
        error = RateLimitedError(
            f"bedrock {operation}: HTTP {status} {code}: {message}", status_code=status, provider=PROVIDER
        )
    headers = (exc.response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    error.retry_after = parse_retry_after({str(k).lower(): str(v) for k, v in headers.items()})
    return error


def never_sent(exc: BaseException) -> bool:
    """Whether a botocore failure happened before the request left: no connection was made."""
    if isinstance(exc, ConnectTimeoutError):
        return True
    if isinstance(exc, EndpointConnectionError):
        cause = exc.kwargs.get("error")
        try:
            from aiohttp import ClientConnectorError
        except ImportError:  # pragma: no cover - aiobotocore always brings aiohttp
            return False
        return cause is None or isinstance(cause, ClientConnectorError)
    return False


def param_problems(exc: ParamValidationError) -> str:
    """botocore's report of what does not fit, without the values it quotes (the row's content)."""
    report = str(exc.kwargs.get("report") or exc)
    lines = [line.split(", value:")[0].strip() for line in report.splitlines() if line.strip()]
    return "; ".join(lines)[:500]


def converse_params(model_input: dict[str, Any]) -> dict[str, Any]:
    """A Converse job line's ``modelInput`` as ``converse`` keyword arguments: inline ``bytes`` of
    images, documents and videos are base64 text on the line and raw bytes for botocore (which
    encodes them again)."""
    params = dict(model_input)
    messages = []
    for message in params.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            message = {**message, "content": [_raw_bytes(block) for block in message["content"]]}
        messages.append(message)
    if "messages" in params:
        params["messages"] = messages
    return params


def _raw_bytes(block: Any) -> Any:
    if not isinstance(block, dict):
        return block
    out = dict(block)
    for kind in ("image", "document", "video"):
        media = out.get(kind)
        source = media.get("source") if isinstance(media, dict) else None
        if isinstance(source, dict) and isinstance(source.get("bytes"), str):
            try:
                raw = base64.b64decode(source["bytes"], validate=True)
            except (binascii.Error, ValueError):
                continue
            out[kind] = {**media, "source": {**source, "bytes": raw}}
    return out


class BedrockSyncCaller:
    def __init__(self, backend: BedrockBackend) -> None:
        self.backend = backend
        self.converse = backend.invocation_type == "Converse"
        self.operation = f"sync call ({backend.invocation_type})"

    async def call(self, row: SyncRow) -> ResultRecord:
        if not row.model:
            raise InvalidRequestError("the row's chunk names no model", provider=PROVIDER)
        model = row.model
        model_input = json.loads(row.line)["modelInput"]
        runtime = await self.backend._aws.client(RUNTIME)
        if self.converse:
            params = converse_params(model_input)
            answer = await self.send(lambda: runtime.converse(modelId=model, **params))
            answer.pop("ResponseMetadata", None)
            output = answer
        else:
            body = dumps_line(model_input)
            answer = await self.send(
                lambda: runtime.invoke_model(
                    modelId=model, body=body, contentType="application/json", accept="application/json"
                )
            )
            output = await self.read_body(answer)
        line = {"recordId": row.wire_id, "modelInput": model_input, "modelOutput": output}
        return self.backend.record_of(line, "sync", model)

    async def send(self, call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """One call, tried again only while it could not connect at all."""
        for attempt in range(1, CONNECT_TRIES + 1):
            try:
                return await call()
            except ClientError as exc:
                raise sync_error(exc, self.operation) from None
            except ParamValidationError as exc:
                raise InvalidRequestError(
                    f"bedrock {self.operation}: the request does not fit the API: {param_problems(exc)}",
                    provider=PROVIDER,
                ) from None
            except BotoCoreError as exc:
                if never_sent(exc) and attempt < CONNECT_TRIES:
                    await asyncio.sleep(0.5 * 2 ** (attempt - 1))
                    continue
                raise mapped_error(exc, self.operation) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def read_body(self, response: dict[str, Any]) -> dict[str, Any]:
        """An ``InvokeModel`` answer's JSON body."""
        try:
            async with response["body"] as stream:
                raw = await stream.read()
        except Exception as exc:  # the answer broke off after it was sent: maybe paid, not resent
            raise ProviderUnavailableError(
                f"bedrock {self.operation}: the answer broke off: {type(exc).__name__}", provider=PROVIDER
            ) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ProviderUnavailableError(
                f"bedrock {self.operation}: the answer is not a JSON object ({len(raw)} bytes)",
                provider=PROVIDER,
            )
        return answer
