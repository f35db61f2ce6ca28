"""Bedrock's synchronous call for a sync fallback: a part-file line ``{"recordId", "modelInput"}``
is sent as Bedrock Runtime ``InvokeModel`` (``POST /model/<modelId>/invoke``) with the same
``modelInput`` as its body, to the model of the row's chunk (a model id, an inference profile or
an ARN, as the job was given it), and the answer read as the ``.jsonl.out`` line the job would
have written for that record (``{"recordId", "modelInput", "modelOutput"}``, through the
backend's own parser).

Invariants:
- One attempt per call: the ``bedrock-runtime`` client has botocore's retries off
  (:data:`~.aws.SINGLE_ATTEMPT`), because ``InvokeModel`` is paid and carries no idempotency
  token. A throttled call (429, ``Retry-After`` when the answer has one) or a 5xx answer is raised
  for the sync fallback's runner, which waits and sends it again within its own count of tries; a
  4xx is the row's failure. A call that could not connect (nothing was sent) is tried again here,
  a few times; one whose connection broke after it was sent is not (it may have been paid).
- Credentials stay in the aiobotocore client (the backend's session, connection or keys); errors
  name the operation, AWS's error code and message, never keys or payloads.
- Only ``invocation_type="InvokeModel"`` runs have a fallback: a ``Converse`` job's lines are
  Converse requests, which ``InvokeModel`` does not take.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError

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

OPERATION = "sync call (InvokeModel)"
CONNECT_TRIES = 4
"""Tries of a call that could not connect at all (nothing sent), before it counts as failed."""


def sync_error(exc: ClientError) -> BatchProviderError:
    """The runner's error class for a refused ``InvokeModel``: 429s (throttling, a model not ready,
    a quota) are :class:`RateLimitedError` with the answer's ``Retry-After``; 5xx
    :class:`ProviderUnavailableError`; other 4xx the row's own failure."""
    error = mapped_error(exc, OPERATION)
    status = error.status_code
    if isinstance(error, JobQuotaError) or (status == 429 and not isinstance(error, RateLimitedError)):
        detail = exc.response.get("Error") or {}
        code = str(detail.get("Code") or "Unknown")
        message = str(detail.get("Message") or code)
        error = RateLimitedError(
            f"bedrock {OPERATION}: HTTP {status} {code}: {message}", status_code=status, provider=PROVIDER
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


class BedrockSyncCaller:
    def __init__(self, backend: BedrockBackend) -> None:
        if backend.invocation_type != "InvokeModel":
            raise ValueError(
                f"sync_fallback_at: a Bedrock run with invocation_type={backend.invocation_type!r} has no "
                "synchronous fallback (its lines are Converse requests; the fallback sends InvokeModel "
                "bodies); use invocation_type='InvokeModel'"
            )
        self.backend = backend

    async def call(self, row: SyncRow) -> ResultRecord:
        if not row.model:
            raise InvalidRequestError("the row's chunk names no model", provider=PROVIDER)
        model_input = json.loads(row.line)["modelInput"]
        output = await self.invoke(row.model, dumps_line(model_input))
        line = {"recordId": row.wire_id, "modelInput": model_input, "modelOutput": output}
        return self.backend.record_of(line, "sync", row.model)

    async def invoke(self, model: str, body: bytes) -> dict[str, Any]:
        """``InvokeModel`` of ``body`` on ``model``: the answer's JSON body."""
        runtime = await self.backend._aws.client(RUNTIME)
        for attempt in range(1, CONNECT_TRIES + 1):
            try:
                response = await runtime.invoke_model(
                    modelId=model, body=body, contentType="application/json", accept="application/json"
                )
                break
            except ClientError as exc:
                raise sync_error(exc) from None
            except BotoCoreError as exc:
                if never_sent(exc) and attempt < CONNECT_TRIES:
                    await asyncio.sleep(0.5 * 2 ** (attempt - 1))
                    continue
                raise mapped_error(exc, OPERATION) from None
        try:
            async with response["body"] as stream:
                raw = await stream.read()
        except Exception as exc:  # the answer broke off after it was sent: maybe paid, not resent
            raise ProviderUnavailableError(
                f"bedrock {OPERATION}: the answer broke off: {type(exc).__name__}", provider=PROVIDER
            ) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ProviderUnavailableError(
                f"bedrock {OPERATION}: the answer is not a JSON object ({len(raw)} bytes)", provider=PROVIDER
            )
        return answer
