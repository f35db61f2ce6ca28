"""AWS plumbing for the Bedrock backend: aiobotocore clients, error classes, S3 transfers.

Invariants:
- Every call is async (aiobotocore); nothing blocks the event loop. Reading the local part file
  happens in worker threads.
- Clients are created once, on first use, and closed by :meth:`AwsClients.aclose`.
- botocore's ``standard`` retry mode retries throttling (429), 5xx and connection errors with
  capped exponential backoff. That is safe for every call made here, creates included: a create
  carries a ``clientRequestToken``, so a retried create returns the job made the first time.
  The one exception is the ``bedrock-runtime`` client of a sync fallback (``InvokeModel`` is paid
  per call and has no idempotency token): it makes exactly one attempt per call, whatever the
  connection's ``config_kwargs`` say, and the sync fallback's own policy decides what is sent
  again (a 429 or 5xx answer, never a call whose connection broke after it was sent).
- A call that still fails raises one of :mod:`batch_provider.core.errors`, naming the
  operation, the AWS error code and AWS's message; never credentials or payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from batch_provider.backends.wire import read_blocks
from batch_provider.core.contract import ReadablePath
from batch_provider.core.errors import (
    AuthenticationError,
    BatchProviderError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ProviderUnavailableError,
    RateLimitedError,
)
from batch_provider.core.jsonl import aiter_lines

PROVIDER = "bedrock"
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
_AUTH_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    }
)
_NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "NoSuchKey", "NoSuchBucket", "404"})


class JobQuotaError(RateLimitedError):
    """A Bedrock quota refused the call: usually the cap on submitted plus running jobs."""


@dataclass(frozen=True)
class AwsRetryPolicy:
    """Timeouts and botocore retry settings, in seconds."""

    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_attempts: int = 8
    download_restarts: int = 5

    def botocore_config(self, **extra: Any) -> Config:
        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            **extra,
        )


SINGLE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})
"""botocore retries off: for paid calls that must not be re-sent behind the caller's back."""
RUNTIME = "bedrock-runtime"
"""The Bedrock Runtime service (``InvokeModel``), used by the sync fallback only."""


def mapped_error(exc: Exception, operation: str) -> BatchProviderError:
    """The error class callers act on, for a botocore failure of ``operation``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or code)
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        text = f"bedrock {operation}: HTTP {status} {code}: {message}"
        if code in ("ThrottlingException", "TooManyRequestsException", "SlowDown"):
            return RateLimitedError(text, status_code=status, provider=PROVIDER)
        if code == "ServiceQuotaExceededException":
            return JobQuotaError(
                text + " (too many jobs in flight, or a size quota: wait for running jobs to end)",
                status_code=status,
                provider=PROVIDER,
            )
        if code in _AUTH_CODES or status in (401, 403):
            return AuthenticationError(text, status_code=status, provider=PROVIDER)
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFoundError(text, status_code=status, provider=PROVIDER)
        if code == "ConflictException":
            return ConflictError(text, status_code=status, provider=PROVIDER)
        if status is not None and status >= 500:
            return ProviderUnavailableError(text, status_code=status, provider=PROVIDER)
        return InvalidRequestError(text, status_code=status, provider=PROVIDER)
    if isinstance(exc, NoCredentialsError):
        return AuthenticationError(f"bedrock {operation}: no AWS credentials found", provider=PROVIDER)
    return ProviderUnavailableError(f"bedrock {operation}: {type(exc).__name__}: {exc}", provider=PROVIDER)


@contextlib.contextmanager
def aws_errors(operation: str) -> Any:
    """Re-raise botocore failures inside the block as :func:`mapped_error` classes."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise mapped_error(exc, operation) from None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (``bucket``, ``some/prefix``) without a trailing slash."""
    if not uri.startswith("s3://"):
        raise ValueError(f"expected an s3:// URI, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key.strip("/")


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


class AwsClients:
    """The ``bedrock`` and ``s3`` aiobotocore clients of one backend, and its ``bedrock-runtime``
    client when a sync fallback needs one.

    With ``aws_conn_id`` the amazon provider's :class:`AwsBaseHook` builds them from the Airflow
    connection (credentials, role assumption, region, ``endpoint_url`` / ``service_config``
    extras, where ``bedrock-runtime`` is a service of its own). Without it, an aiobotocore session
    uses the explicit keys and endpoint URLs given, or the default AWS credential chain; the
    ``bedrock-runtime`` endpoint is ``bedrock_endpoint_url`` unless given apart (the emulator
    serves both on one port).
    """

    def __init__(
        self,
        *,
        region_name: str | None,
        aws_conn_id: str | None,
        bedrock_endpoint_url: str | None,
        s3_endpoint_url: str | None,
        aws_access_key_id: str | None,
        aws_secret_access_key: str | None,
        aws_session_token: str | None,
        policy: AwsRetryPolicy,
        bedrock_runtime_endpoint_url: str | None = None,
    ) -> None:
        self.region_name = region_name
        self.aws_conn_id = aws_conn_id
        self.endpoints = {
            "bedrock": bedrock_endpoint_url,
            "s3": s3_endpoint_url,
            RUNTIME: bedrock_runtime_endpoint_url or bedrock_endpoint_url,
        }
        self._keys = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        self.policy = policy
        self._clients: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock: asyncio.Lock | None = None

    async def client(self, service: str) -> Any:
        if service in self._clients:
            return self._clients[service]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if service not in self._clients:
                context = await self._client_context(service)
                with aws_errors(f"create {service} client"):
                    self._clients[service] = await self._stack.enter_async_context(context)
        return self._clients[service]

    def _config(self, service: str) -> Config:
        extra: dict[str, Any] = {}
        if service == "s3" and self.endpoints["s3"]:
            extra["s3"] = {"addressing_style": "path"}
        config = self.policy.botocore_config(**extra)
        return config.merge(SINGLE_ATTEMPT) if service == RUNTIME else config

    async def _client_context(self, service: str) -> Any:
        if self.aws_conn_id:
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            probe = AwsBaseHook(
                aws_conn_id=self.aws_conn_id, client_type=service, region_name=self.region_name
            )
            # The connection's own ``config_kwargs`` extra wins over this backend's defaults.
            own = await asyncio.to_thread(lambda: probe.config)
            config = self._config(service).merge(own)
            if service == RUNTIME:
                config = config.merge(SINGLE_ATTEMPT)
            hook = AwsBaseHook(
                aws_conn_id=self.aws_conn_id,
                client_type=service,
                region_name=self.region_name,
                config=config,
            )
            return await hook.get_async_conn()
        from aiobotocore.session import get_session

        keys = {name: value for name, value in self._keys.items() if value}
        return get_session().create_client(
            service,
            region_name=self.region_name,
            endpoint_url=self.endpoints[service],
            config=self._config(service),
            **keys,
        )

    async def aclose(self) -> None:
        self._clients.clear()
        await self._stack.aclose()


async def upload_file(s3: Any, path: ReadablePath | Any, bucket: str, key: str, size: int) -> None:
    """Put the local part file at ``s3://bucket/key``; multipart above :data:`MULTIPART_THRESHOLD`.

    Re-uploading the same file to the same key is harmless: the object is replaced by equal bytes.
    """
    if size <= MULTIPART_THRESHOLD:
        body = b"".join([block async for block in read_blocks(path)])
        with aws_errors("upload input"):
            await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/jsonl")
        return
    with aws_errors("start multipart upload"):
        upload = await s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="application/jsonl")
    upload_id = upload["UploadId"]
    parts: list[dict[str, Any]] = []
    try:
        pending = b""
        async for block in read_blocks(path):
            pending += block
            while len(pending) >= PART_BYTES:
                parts.append(
                    await _upload_part(s3, bucket, key, upload_id, len(parts) + 1, pending[:PART_BYTES])
                )
                pending = pending[PART_BYTES:]
        if pending or not parts:
            parts.append(await _upload_part(s3, bucket, key, upload_id, len(parts) + 1, pending))
        with aws_errors("complete multipart upload"):
            await s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
    except BaseException:
        with contextlib.suppress(Exception):
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


async def _upload_part(
    s3: Any, bucket: str, key: str, upload_id: str, number: int, data: bytes
) -> dict[str, Any]:
    with aws_errors("upload input part"):
        response = await s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
    return {"PartNumber": number, "ETag": response["ETag"]}


async def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    """Every object key under ``prefix``, in S3's (lexicographic) order."""
    keys: list[str] = []
    with aws_errors("list output objects"):
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents") or [])
    return keys


def _broken_download(exc: BaseException) -> bool:
    """A failure a fresh download can fix: connection, timeout, cut body (aiohttp or httpx)."""
    if isinstance(exc, TimeoutError | _TruncatedObject | BotoCoreError | OSError | ProviderUnavailableError):
        return True
    return type(exc).__module__.split(".")[0] in ("aiohttp", "httpx", "httpcore")


async def object_lines(s3: Any, bucket: str, key: str, policy: AwsRetryPolicy) -> AsyncIterator[list[bytes]]:
    """The object's non-blank lines, in batches; a download that breaks off restarts from the top.

    Each restart yields the object from its first line again: callers skip ids they have seen.
    A final line without its newline that does not parse as JSON counts as a break.
    """
    attempt = 0
    started = time.monotonic()
    while True:
        attempt += 1
        try:
            with aws_errors("download results"):
                response = await s3.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            async with body:
                batch: list[bytes] = []
                async for line, terminated in aiter_lines(body.iter_chunks(1 << 20)):
                    if not terminated and not _is_json(line):
                        raise _TruncatedObject(key)
                    batch.append(line)
                    if len(batch) >= 1000:
                        yield batch
                        batch = []
                if batch:
                    yield batch
            return
        except Exception as exc:
            if not _broken_download(exc):
                raise
            if attempt > policy.download_restarts:
                raise ProviderUnavailableError(
                    f"bedrock download results: s3://{bucket}/{key} kept breaking off "
                    f"({type(exc).__name__}, {attempt} tries, {time.monotonic() - started:.0f}s)",
                    provider=PROVIDER,
                ) from None
            await asyncio.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))


class _TruncatedObject(Exception):
    pass


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
