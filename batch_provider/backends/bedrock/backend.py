"""AWS Bedrock batch inference backend (model invocation jobs).

Wire format: the Bedrock model-invocation-job API (boto3) and S3.
Each chunk becomes one JSONL object in S3 and one
``CreateModelInvocationJob``; results are the ``.jsonl.out`` objects Bedrock writes under
``<output s3Uri>/<jobId>/``. Record lines, job identity and states live in :mod:`.wire`,
model-family bodies in :mod:`.models`.

S3 layout (``<in>``/``<out>`` are the ``s3_input_uri``/``s3_output_uri`` prefixes)::

    <in>/<bp_run>/<attempt>-<chunk>-<fingerprint>/records.jsonl       the chunk's records
    <out>/<bp_run>/<attempt>-<chunk>-<fingerprint>/<jobId>/records.jsonl.out, manifest.json.out

Decisions:
- **Idempotent create.** ``clientRequestToken`` (and ``jobName``) derive from the ``bp_run`` and
  ``bp_chunk`` tags, which name one chunk of one attempt of one run: a retried or repeated create
  returns the job made the first time instead of paying for a second one. :meth:`find` lists jobs
  submitted after the intent and matches that token exactly. Without those tags the token is a
  digest of every tag and the chunk's identity.
- **Minimum records per job** (``min_records_per_job``, default 100, Bedrock's quota). A chunk
  below it is neither padded (padding pays for fake rows) nor sent: :meth:`submit` raises
  :class:`BelowMinimumRecordsError` before any upload or paid call, naming the count, the minimum
  and what to do. With the default chunk size (50,000) only a run's last chunk per model can be
  short, so a run of at least 100 requests per model is accepted. Before an attempt's first job
  the other part files of the attempt are counted too, so a short last chunk stops the run before
  any job is paid for. A retry attempt holding fewer than the minimum raises the same error: its
  records stay in ``errors.jsonl`` with their first errors and go to the dead letter when the run
  is closed (``write_dead_letter``). Lower the minimum only where the account's quota is lower.
- States, ``recordId`` and item errors: see :mod:`.wire`.
- ``manifest.json.out`` is never read as records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from batch_provider.backends.bedrock import wire as bw
from batch_provider.backends.bedrock.aws import (
    AwsClients,
    AwsRetryPolicy,
    JobQuotaError,
    aws_errors,
    join_key,
    list_keys,
    object_lines,
    split_s3_uri,
    upload_file,
)
from batch_provider.backends.bedrock.minimum import BelowMinimumRecordsError, check_sibling_parts
from batch_provider.backends.bedrock.models import (
    STRUCTURED_TOOL,
    ModelFamily,
    family_of,
    model_input,
)
from batch_provider.backends.bedrock.wire import (
    alnum_slug,
    aws_timestamp,
    client_request_token,
    job_id_of,
    job_name,
    job_tags,
)
from batch_provider.backends.wire import check_max_tokens, check_size, encode_line
from batch_provider.core.contract import BatchBackend, Chunk, EncodedRequest
from batch_provider.core.errors import ConflictError, InvalidRequestError, RequestRejected
from batch_provider.core.jsonl import loads
from batch_provider.core.limits import BEDROCK_LIMITS, ProviderLimits
from batch_provider.core.models import BatchRef, BatchState, LLMRequest, Provider, ResultRecord

INPUT_FILE = "records.jsonl"


class BedrockBackend(BatchBackend):
    """Bedrock batch inference on aiobotocore clients (one bedrock, one S3), reused for every call.

    Options:
        role_arn: IAM role Bedrock assumes to read the input and write the output.
        s3_input_uri / s3_output_uri: base prefixes (``s3://bucket/prefix``); ``s3_uri`` alone
            gives both as ``<s3_uri>/input`` and ``<s3_uri>/output``.
        region_name: AWS region (default: the connection's or the environment's).
        aws_conn_id: an Airflow ``aws`` connection; credentials come from the amazon provider's
            ``AwsBaseHook``. Without it: ``aws_access_key_id`` / ``aws_secret_access_key`` /
            ``aws_session_token``, or the default credential chain.
        bedrock_endpoint_url / s3_endpoint_url: endpoint overrides (the emulator, moto, VPC).
        bedrock_runtime_endpoint_url: the Bedrock Runtime endpoint a sync fallback calls
            (``InvokeModel``); default ``bedrock_endpoint_url`` (the emulator serves both). With
            ``aws_conn_id``, the connection's ``service_config`` entry ``bedrock-runtime`` (or
            its ``endpoint_url``) instead.
        timeout_hours: ``timeoutDurationInHours``, 24..168.
        invocation_type: ``InvokeModel`` (model-native bodies) or ``Converse``.
        min_records_per_job: records a job needs at least (default 100; see the module docstring).
        send_tags: ``False`` sends no job tags (``find`` still works through the token).
        wait_for_job_slot_seconds: how long a create waits, polling every
            ``job_slot_poll_seconds``, while the account is at its cap of submitted plus running
            jobs (``ServiceQuotaExceededException``). Default 0: raise ``RateLimitedError`` at once
            (Airflow's task retry then re-attaches to the jobs already made and goes on).
    """

    provider: ClassVar[Provider] = Provider.BEDROCK
    keeps_tags: ClassVar[bool] = True
    body_overhead_bytes: ClassVar[int] = 0

    def __init__(
        self,
        role_arn: str,
        s3_input_uri: str | None = None,
        s3_output_uri: str | None = None,
        *,
        s3_uri: str | None = None,
        region_name: str | None = None,
        aws_conn_id: str | None = None,
        bedrock_endpoint_url: str | None = None,
        s3_endpoint_url: str | None = None,
        bedrock_runtime_endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        timeout_hours: int = 24,
        invocation_type: str = "InvokeModel",
        min_records_per_job: int | None = None,
        limits: ProviderLimits | None = None,
        policy: AwsRetryPolicy | None = None,
        send_tags: bool = True,
        wait_for_job_slot_seconds: float = 0.0,
        job_slot_poll_seconds: float = 60.0,
    ) -> None:
        if not role_arn:
            raise ValueError(
                "a Bedrock backend needs role_arn: the IAM role Bedrock uses to read and write S3"
            )
        if s3_uri:
            s3_input_uri = s3_input_uri or s3_uri.rstrip("/") + "/input"
            s3_output_uri = s3_output_uri or s3_uri.rstrip("/") + "/output"
        if not s3_input_uri or not s3_output_uri:
            raise ValueError("a Bedrock backend needs s3_input_uri and s3_output_uri (or s3_uri)")
        if not 24 <= int(timeout_hours) <= 168:
            raise ValueError(f"timeout_hours={timeout_hours} is outside Bedrock's 24..168")
        if invocation_type not in ("InvokeModel", "Converse"):
            raise ValueError(f"invocation_type must be 'InvokeModel' or 'Converse', got {invocation_type!r}")
        self.limits = limits or BEDROCK_LIMITS
        self.role_arn = role_arn
        self.input_bucket, self.input_prefix = split_s3_uri(s3_input_uri)
        self.output_bucket, self.output_prefix = split_s3_uri(s3_output_uri)
        self.timeout_hours = int(timeout_hours)
        self.invocation_type = invocation_type
        self.min_records_per_job = (
            self.limits.min_requests_per_batch if min_records_per_job is None else int(min_records_per_job)
        )
        self.send_tags = send_tags
        self.wait_for_job_slot_seconds = float(wait_for_job_slot_seconds)
        self.job_slot_poll_seconds = float(job_slot_poll_seconds)
        self.policy = policy or AwsRetryPolicy()
        self._aws = AwsClients(
            region_name=region_name,
            aws_conn_id=aws_conn_id,
            bedrock_endpoint_url=bedrock_endpoint_url,
            s3_endpoint_url=s3_endpoint_url,
            bedrock_runtime_endpoint_url=bedrock_runtime_endpoint_url,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            policy=self.policy,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(region={self._aws.region_name!r}, "
            f"input=s3://{self.input_bucket}/{self.input_prefix})"
        )

    # ----------------------------------------------------------------- translation

    def encode(self, request: LLMRequest) -> EncodedRequest:
        reason = self.limits.check_custom_id(request.custom_id)
        if reason is not None:
            raise RequestRejected(request.custom_id, "custom_id", reason)
        check_max_tokens(request)
        if not request.model:
            raise RequestRejected(request.custom_id, "model", "no model given (a Bedrock model id)")
        family = family_of(request.model, self.invocation_type)
        body = model_input(request, family)
        line = encode_line({"recordId": request.custom_id, "modelInput": body})
        check_size(request.custom_id, line, self.limits)
        return EncodedRequest(
            custom_id=request.custom_id, line=line, group=request.model, model=request.model
        )

    def custom_id_of(self, line: bytes) -> str:
        return bw.record_id_of_line(line)

    def wants_json(self, line: bytes) -> bool:
        """Whether the encoded request asked for a response schema (the forced structured tool)."""
        return STRUCTURED_TOOL.encode() in line

    # ----------------------------------------------------------------- operations

    def _locations(self, tags: Mapping[str, str], chunk: Chunk) -> tuple[str, str, str]:
        """(token, input key, output prefix) of ``chunk``'s job."""
        token = client_request_token(tags, chunk)
        run = alnum_slug(tags.get("bp_run", "")) or "run"
        folder = alnum_slug(tags.get("bp_chunk", "")) or token
        return (
            token,
            join_key(self.input_prefix, run, folder, INPUT_FILE),
            join_key(self.output_prefix, run, folder),
        )

    async def submit(self, chunk: Chunk, *, tags: Mapping[str, str]) -> BatchRef:
        if chunk.request_count < self.min_records_per_job:
            raise BelowMinimumRecordsError(chunk.request_count, self.min_records_per_job)
        if chunk.request_count > self.limits.max_requests_per_batch:
            raise InvalidRequestError(
                f"bedrock: a chunk of {chunk.request_count} records is over the job limit of "
                f"{self.limits.max_requests_per_batch}",
                provider="bedrock",
            )
        if not chunk.model:
            raise ValueError("a Bedrock chunk needs its model id")
        if chunk.index == 0:
            await asyncio.to_thread(check_sibling_parts, chunk, self.min_records_per_job)
        token, input_key, output_prefix = self._locations(tags, chunk)
        s3 = await self._aws.client("s3")
        await upload_file(s3, chunk.path, self.input_bucket, input_key, chunk.byte_size)
        bedrock = await self._aws.client("bedrock")
        request: dict[str, Any] = {
            "jobName": job_name(token),
            "roleArn": self.role_arn,
            "clientRequestToken": token,
            "modelId": chunk.model,
            "inputDataConfig": {
                "s3InputDataConfig": {
                    "s3InputFormat": "JSONL",
                    "s3Uri": f"s3://{self.input_bucket}/{input_key}",
                }
            },
            "outputDataConfig": {
                "s3OutputDataConfig": {"s3Uri": f"s3://{self.output_bucket}/{output_prefix}/"}
            },
            "timeoutDurationInHours": self.timeout_hours,
        }
        if self.invocation_type != "InvokeModel":
            request["modelInvocationType"] = self.invocation_type
        if self.send_tags and tags:
            request["tags"] = job_tags(tags)
        created = await self._create_job(bedrock, request)
        return BatchRef(
            provider=self.provider,
            batch_id=created["jobArn"],
            input_file_id=f"s3://{self.input_bucket}/{input_key}",
            chunk_index=chunk.index,
            request_count=chunk.request_count,
            created_at=datetime.now(UTC),
            model=chunk.model,
        )

    async def _create_job(self, bedrock: Any, request: dict[str, Any]) -> dict[str, Any]:
        """CreateModelInvocationJob; while the account is at its cap of jobs in flight, wait for a
        slot up to ``wait_for_job_slot_seconds`` (re-sending is safe: the token de-duplicates)."""
        deadline = time.monotonic() + self.wait_for_job_slot_seconds
        while True:
            try:
                with aws_errors("create model invocation job"):
                    return await bedrock.create_model_invocation_job(**request)
            except JobQuotaError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                await asyncio.sleep(min(self.job_slot_poll_seconds, remaining))

    async def _job(self, batch_id: str) -> dict[str, Any]:
        bedrock = await self._aws.client("bedrock")
        with aws_errors("get model invocation job"):
            return await bedrock.get_model_invocation_job(jobIdentifier=batch_id)

    async def _jobs_since(self, created_after: datetime) -> AsyncIterator[dict[str, Any]]:
        bedrock = await self._aws.client("bedrock")
        params: dict[str, Any] = {
            "submitTimeAfter": created_after,
            "maxResults": 1000,
            "sortBy": "CreationTime",
            "sortOrder": "Descending",
        }
        while True:
            with aws_errors("list model invocation jobs"):
                page = await bedrock.list_model_invocation_jobs(**params)
            for summary in page.get("invocationJobSummaries") or []:
                yield summary
            if not page.get("nextToken"):
                return
            params["nextToken"] = page["nextToken"]

    async def find(self, *, tags: Mapping[str, str], created_after: datetime) -> list[BatchRef]:
        """Jobs submitted since ``created_after`` whose ``clientRequestToken`` is the one
        :meth:`submit` derives from ``tags`` (exact: the token names one chunk of one attempt)."""
        token = client_request_token(tags)
        chunk_tag = tags.get("bp_chunk", "")
        parts = chunk_tag.split(":")
        index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        found: list[BatchRef] = []
        async for summary in self._jobs_since(created_after):
            if summary.get("clientRequestToken") != token:
                continue
            found.append(
                BatchRef(
                    provider=self.provider,
                    batch_id=summary["jobArn"],
                    input_file_id=((summary.get("inputDataConfig") or {}).get("s3InputDataConfig") or {}).get(
                        "s3Uri"
                    ),
                    chunk_index=index,
                    request_count=int(summary.get("totalRecordCount") or 0),
                    created_at=aws_timestamp(summary.get("submitTime")) or datetime.now(UTC),
                    model=summary.get("modelId"),
                )
            )
        return found

    async def status(self, batch_id: str) -> BatchState:
        return self.state_of(await self._job(batch_id))

    def state_of(self, job: dict[str, Any]) -> BatchState:
        """The normalised state of a GetModelInvocationJob answer (or a list summary)."""
        return bw.state_of(job)

    async def cancel(self, batch_id: str) -> BatchState:
        job = await self._job(batch_id)
        if job.get("status") in bw.ENDED_STATUSES:
            return self.state_of(job)
        bedrock = await self._aws.client("bedrock")
        try:
            with aws_errors("stop model invocation job"):
                await bedrock.stop_model_invocation_job(jobIdentifier=batch_id)
        except (InvalidRequestError, ConflictError) as refusal:
            return await self._state_if_ended(batch_id, refusal)
        return await self.status(batch_id)

    def output_location(self, job: dict[str, Any]) -> tuple[str, str]:
        """(bucket, key prefix) where Bedrock writes the job's output: ``<s3Uri>/<jobId>/``."""
        uri = job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        bucket, prefix = split_s3_uri(uri)
        return bucket, join_key(prefix, job_id_of(job["jobArn"])) + "/"

    async def results(self, ref: BatchRef) -> AsyncIterator[ResultRecord]:
        job = await self._job(ref.batch_id)
        bucket, prefix = self.output_location(job)
        s3 = await self._aws.client("s3")
        keys = [
            key
            for key in await list_keys(s3, bucket, prefix)
            if key.endswith(".out") and not key.endswith("manifest.json.out")
        ]
        batch_id, model, record_of = ref.batch_id, ref.model, bw.record_of
        seen: set[str] = set()
        for key in keys:
            async for lines in object_lines(s3, bucket, key, self.policy):
                for line in lines:
                    record = record_of(loads(line), batch_id, model)
                    if record.custom_id in seen:
                        continue
                    seen.add(record.custom_id)
                    yield record

    def record_of(self, line: dict[str, Any], batch_id: str, model: str | None = None) -> ResultRecord:
        """One ``.jsonl.out`` line as a record."""
        return bw.record_of(line, batch_id, model)

    async def delete_input(self, ref: BatchRef) -> None:
        if not ref.input_file_id or not ref.input_file_id.startswith("s3://"):
            return
        bucket, key = split_s3_uri(ref.input_file_id)
        s3 = await self._aws.client("s3")
        with aws_errors("delete input"):
            await s3.delete_object(Bucket=bucket, Key=key)

    async def aclose(self) -> None:
        await self._aws.aclose()


__all__ = [
    "BedrockBackend",
    "BelowMinimumRecordsError",
    "ModelFamily",
    "client_request_token",
    "job_name",
    "job_tags",
]
