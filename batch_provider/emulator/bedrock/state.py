"""Bedrock model invocation jobs: the state machine and API views; the job records,
settings and per-instant views are :mod:`.jobs`'.

A create request is checked by :mod:`.create`; the input is read from S3 and the outputs
written there by :mod:`.s3`; errors and timestamps follow :mod:`.wire`; what a job
writes comes from :mod:`.outputs`.

Timeline of a job, derived from its record and the emulated clock (``t0`` = submitTime)::

    Submitted   [t0, t0 + submitted_seconds)
    Validating  [.., + validating_seconds)        → Failed here when the input is refused
    Scheduled   [.., t_start = .. + scheduled_seconds)
    InProgress  [t_start, t_start + processing_seconds + n * per_request_seconds) → Completed
    timeout     t0 + timeoutDurationInHours: still Scheduled → Expired (no output);
                InProgress → PartiallyCompleted (the records done so far are written)
    stop at s   Stopping until s + cancel_seconds, then Stopped with the records done by s

Records finish evenly in input order during InProgress, so ``processedRecordCount`` rises on Get.

Invariants:
- The input is read from S3 once, at create, and kept as a local copy: outputs never depend on
  later changes to the input objects.
- Outputs (``<output s3Uri>/<jobId>/<input file>.out`` and ``manifest.json.out``) are written to
  S3 once, the first time the job is seen in a terminal state that has output (Completed,
  PartiallyCompleted, Stopped); nothing runs in the background.
- The same ``clientRequestToken`` always answers the same job.
- Per-job fault directives come from the ``emu_faults`` tag (:mod:`.create`). ``expire=0``
  keeps the job Scheduled until it expires; ``expire=F`` has fraction F done at the timeout.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import TYPE_CHECKING, Any

from .. import models, registry
from ..faults import BatchFaults
from ..registry import BatchRegistry
from . import create as bedrock_create
from . import outputs as bedrock_outputs
from .jobs import RUNNING, TERMINAL, WITH_OUTPUT, BedrockJob, BedrockSettings, JobView
from .s3 import S3_ENDPOINT_ENV, S3Access
from .wire import BedrockError, iso, validation

if TYPE_CHECKING:
    from ..store import Store

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class BedrockJobs(BatchRegistry[BedrockJob]):
    """Every Bedrock job of one emulator, persisted under ``<data dir>/bedrock``."""

    PROVIDER = "bedrock"
    RECORD_TYPE = BedrockJob
    META_GLOB = "*.json"
    INPUT_SUFFIX = ".records.jsonl"

    def __init__(self, store: Store) -> None:
        self.by_token: dict[str, str] = {}
        """``clientRequestToken`` → job id."""
        super().__init__(store)
        self.settings = BedrockSettings(s3_endpoint=os.environ.get(S3_ENDPOINT_ENV) or None)
        self.s3 = S3Access(self.settings)
        self._locks: dict[str, asyncio.Lock] = {}
        self._codes: dict[str, list[int | None]] = {}
        self._create_lock: asyncio.Lock | None = None

    def _index(self, job: BedrockJob) -> None:
        super()._index(job)
        if job.token:
            self.by_token[job.token] = job.job_id

    def clear(self) -> None:
        super().clear()
        self.by_token.clear()
        self._codes.clear()
        self.settings.restore_defaults()

    # ------------------------------------------------------------------ lookup

    def get(self, identifier: str) -> BedrockJob:
        job_id = identifier.rsplit("/", 1)[-1]
        job = self.records.get(job_id)
        if job is None:
            raise BedrockError(404, "ResourceNotFoundException", f"Could not find job {identifier}")
        return job

    # ------------------------------------------------------------------ create

    async def create(self, body: Any) -> tuple[BedrockJob, bool]:
        """(job, created): an existing job when ``clientRequestToken`` was seen before."""
        if self._create_lock is None:
            self._create_lock = asyncio.Lock()
        async with self._create_lock:
            if not isinstance(body, dict):
                raise validation("The request body must be a JSON object.")
            token = body.get("clientRequestToken")
            if token is not None and token in self.by_token:
                return self.records[self.by_token[token]], False
            job = self._new_job(body)
            in_flight = sum(
                1 for j in self.records.values() if self.view(j, self.store.clock.now()).status in RUNNING
            )
            if in_flight >= self.settings.max_jobs_in_flight:
                raise BedrockError(
                    400,
                    "ServiceQuotaExceededException",
                    f"You have reached the limit of {self.settings.max_jobs_in_flight} batch inference "
                    "jobs in progress or submitted. Wait for jobs to end and try again.",
                )
            await asyncio.to_thread(self._read_input, job)
            self.add(job)
            return job, True

    def _new_job(self, body: dict[str, Any]) -> BedrockJob:
        req = bedrock_create.check_create(body, self.cfg.expire_done_fraction)
        if not models.serves(self.cfg, "bedrock", req.model_id):
            raise validation(models.BEDROCK_MESSAGE)
        seq = self.next_seq()
        job_id = "".join(random.SystemRandom().choice(_ID_ALPHABET) for _ in range(12))
        s = self.settings
        return BedrockJob(
            job_id=job_id,
            job_arn=f"arn:aws:bedrock:{s.region}:{s.account_id}:model-invocation-job/{job_id}",
            name=req.name,
            model_id=req.model_id,
            role_arn=req.role_arn,
            token=req.token,
            input_uri=req.input_uri,
            output_uri=req.output_uri,
            timeout_hours=req.timeout_hours,
            invocation_type=req.invocation_type,
            tags=req.tags,
            submit_time=self.store.clock.now(),
            seq=seq,
            faults=self.store.faults.batch_defaults.merged(req.faults).to_json(),
        )

    def _read_input(self, job: BedrockJob) -> None:
        """Copy the input records locally; a problem becomes the job's validation failure."""
        try:
            job.fail_message = self.s3.copy_input(job, self.input_path(job.job_id))
        except BedrockError:
            raise
        except Exception as exc:  # any S3 failure is the job's, as on Bedrock
            job.fail_message = f"Unable to read the input from {job.input_uri}: {type(exc).__name__}: {exc}"
        if job.fail_message is None and BatchFaults.from_json(job.faults).fail_validation:
            job.fail_message = (
                f"Validation failed (emulated fault: {BatchFaults.from_json(job.faults).fail_validation})."
            )

    # ------------------------------------------------------------------ time

    def _processing(self, job: BedrockJob) -> tuple[float, float]:
        """(t_start, duration) of the InProgress phase; t_start is inf when it never starts."""
        c, s = self.cfg, self.settings
        t_start = job.submit_time + s.submitted_seconds + c.validating_seconds + s.scheduled_seconds
        duration = c.processing_seconds + job.n * c.per_request_seconds
        expire = BatchFaults.from_json(job.faults).expire
        if expire is not None:
            if expire <= 0 or t_start >= job.expires_at:
                return float("inf"), duration
            duration = max(duration, (job.expires_at - t_start) / expire)
        return t_start, duration

    def _done_at(self, job: BedrockJob, t: float) -> int:
        t_start, duration = self._processing(job)
        if t < t_start:
            return 0
        return min(job.n, int((t - t_start) / duration * job.n + 1e-6))

    def view(self, job: BedrockJob, now: float) -> JobView:
        c, s = self.cfg, self.settings
        t0 = job.submit_time
        t_validating = t0 + s.submitted_seconds
        t_validated = t_validating + c.validating_seconds
        if job.fail_message is not None:
            if now < t_validating:
                return JobView("Submitted", 0, 0, None, t0)
            if now < t_validated:
                return JobView("Validating", 0, 0, None, t_validating)
            return JobView("Failed", 0, 0, t_validated, t_validated)
        t_start, duration = self._processing(job)
        natural_end = min(t_start + duration, job.expires_at)
        if job.stop_at is not None and job.stop_at < natural_end:
            done = self._done_at(job, job.stop_at)
            stopped = job.stop_at + c.cancel_seconds
            if now < stopped:
                return JobView("Stopping", done, self._errors(job, done), None, job.stop_at)
            return JobView("Stopped", done, self._errors(job, done), stopped, stopped)
        if now >= natural_end:
            done = self._done_at(job, natural_end)
            if t_start + duration <= job.expires_at:
                status = "Completed"
            elif done > 0:
                status = "PartiallyCompleted"
            else:
                status = "Expired"
            return JobView(status, done, self._errors(job, done), natural_end, natural_end)
        if now < t_validating:
            return JobView("Submitted", 0, 0, None, t0)
        if now < t_validated:
            return JobView("Validating", 0, 0, None, t_validating)
        if now < t_start:
            return JobView("Scheduled", 0, 0, None, t_validated)
        done = self._done_at(job, now)
        return JobView("InProgress", done, self._errors(job, done), None, t_start)

    # ------------------------------------------------------------------ records

    def _error_codes(self, job: BedrockJob) -> list[int | None]:
        """The injected or validation error code of each record, in input order (cached)."""
        cached = self._codes.get(job.job_id)
        if cached is None:
            records = bedrock_outputs.read_records(self.input_path(job.job_id))
            item_code = self.store.item_codes("bedrock", job.seq)
            cached = bedrock_outputs.error_codes(job, records, self.cfg.seed, item_code)
            self._codes[job.job_id] = cached
        return cached

    def _errors(self, job: BedrockJob, done: int) -> int:
        return sum(1 for code in self._error_codes(job)[:done] if code is not None)

    def output_lines(self, job: BedrockJob, done: int) -> dict[str, list[bytes]]:
        """``<input file>.out`` name → its lines, for the first ``done`` records."""
        codes = self._error_codes(job)
        records = bedrock_outputs.read_records(self.input_path(job.job_id))
        shuffle = BatchFaults.from_json(job.faults).shuffle or self.cfg.shuffle_results
        return bedrock_outputs.output_lines(job, records, codes, done, self.cfg.seed, shuffle=shuffle)

    def _write_outputs(self, job: BedrockJob, view: JobView) -> None:
        self.s3.write_outputs(job, view, self.output_lines(job, view.done))

    async def settle(self, job: BedrockJob) -> JobView:
        """The job's view now, writing its outputs first when it just reached an ending with output."""
        view = self.view(job, self.store.clock.now())
        if view.status in WITH_OUTPUT and not job.outputs_written:
            lock = self._locks.setdefault(job.job_id, asyncio.Lock())
            async with lock:
                if not job.outputs_written:
                    try:
                        await asyncio.to_thread(self._write_outputs, job, view)
                    except BedrockError:
                        raise
                    except Exception as exc:
                        raise BedrockError(
                            500, "InternalServerException", f"Could not write the job output: {exc}"
                        ) from None
                    job.outputs_written = True
                    self.save(job)
        return view

    # ------------------------------------------------------------------ API views

    def describe(self, job: BedrockJob, view: JobView) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobArn": job.job_arn,
            "jobName": job.name,
            "modelId": job.model_id,
            "roleArn": job.role_arn,
            "status": view.status,
            "submitTime": iso(job.submit_time),
            "lastModifiedTime": iso(view.changed_at),
            "inputDataConfig": {"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": job.input_uri}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": job.output_uri}},
            "timeoutDurationInHours": job.timeout_hours,
            "jobExpirationTime": iso(job.expires_at),
            "modelInvocationType": job.invocation_type,
            "totalRecordCount": job.n,
            "processedRecordCount": view.done,
            "successRecordCount": view.done - view.errors,
            "errorRecordCount": view.errors,
        }
        if job.token:
            out["clientRequestToken"] = job.token
        if view.end_time is not None:
            out["endTime"] = iso(view.end_time)
        if view.status == "Failed":
            out["message"] = job.fail_message
        elif view.status == "Expired":
            out["message"] = "The job expired before it could start."
        elif view.status == "PartiallyCompleted":
            out["message"] = f"The job reached its timeout with {view.done} of {job.n} records processed."
        return out

    async def stop(self, job: BedrockJob) -> None:
        view = self.view(job, self.store.clock.now())
        if view.status in TERMINAL:
            raise BedrockError(
                400,
                "ConflictException",
                f"The job {job.job_arn} is in status {view.status} and cannot be stopped.",
            )
        if job.stop_at is None:
            job.stop_at = self.store.clock.now()
            self.save(job)

    def listed(
        self,
        *,
        after: float | None,
        before: float | None,
        status: str | None,
        name_contains: str | None,
        descending: bool,
    ) -> list[BedrockJob]:
        now = self.store.clock.now()
        jobs = sorted(self.records.values(), key=lambda j: (j.submit_time, j.seq), reverse=descending)
        return [
            j
            for j in jobs
            if (after is None or j.submit_time >= after)
            and (before is None or j.submit_time <= before)
            and (name_contains is None or name_contains in j.name)
            and (status is None or self.view(j, now).status == status)
        ]


def attach(store: Store) -> BedrockJobs:
    """The Bedrock jobs of ``store`` (``store.bedrock``), cleared by ``/_emu/reset``."""
    return registry.attach(store, BedrockJobs)
