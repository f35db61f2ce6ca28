"""Vertex AI batch prediction jobs: state machine and API views (spec D, E), persisted under
``<data dir>/vertex``; the settings, records and per-instant views are :mod:`.jobs`'.

A create body is checked and the input read from GCS by :mod:`.create`; the requests are planned
by the Gemini face's planner (:func:`..gemini.input.build_plan`: item errors, ``[[emu:…]]``
markers, refused requests); the predictions come from :mod:`.outputs`.

Timeline of a job, derived from its record and the emulated clock (``t0`` = createTime)::

    JOB_STATE_QUEUED     [t0, t_q = t0 + queued_seconds)        (0 s unless set)
    JOB_STATE_PENDING    [t_q, t_run = t_q + validating_seconds)  → FAILED here when the input is refused
    JOB_STATE_RUNNING    [t_run, t_end = t_run + processing_seconds + n * per_request_seconds)
                         → SUCCEEDED, or PARTIALLY_SUCCEEDED when a row failed (``partial_state``)
    expiry               t0 + expire_seconds: still running → EXPIRED with the rows done so far
                         (the ``expire`` fault keeps a job from finishing, with fraction F done then;
                         ``expire=0`` keeps it QUEUED until it expires with no row done)
    cancel at c          CANCELLING until c + cancel_seconds (or t_end if sooner), then CANCELLED
                         with the rows done by c

Rows finish evenly in input order while RUNNING, so ``completionStats`` rise on every get.

Invariants:
- Job ids are decimal strings (the SDK accepts a bare id only when it is all digits); names are
  ``projects/{project}/locations/{location}/batchPredictionJobs/{id}``, and a job is found only
  under its own project and location.
- Predictions are written to GCS once, the first time the job is read in a state with output
  (SUCCEEDED, PARTIALLY_SUCCEEDED, CANCELLED, EXPIRED), under ``outputInfo.gcsOutputDirectory`` =
  ``{outputUriPrefix}/prediction-model-<createTime>``, unique per job; nothing runs in the
  background. A FAILED job writes nothing.
- Fault directives: ``[[emu:…]]`` markers in a request's text (the first request's batch tokens
  apply to the job), an ``emu_faults=<directives>`` token in ``displayName``, the server-wide
  ``batch_faults``; transient item errors recover on resending (``resends.py``, keyed on the
  request without its labels).
- Delete is refused until the job ends; a deleted job's predictions stay in GCS.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
from typing import TYPE_CHECKING, Any

from .. import models, registry
from ..clock import rfc3339
from ..faults import BatchFaults
from ..gcs import GCS_ENDPOINT_ENV, GcsAccess, split_gs_uri
from ..gemini import input as gemini_input
from ..gemini.files import GeminiError, not_found
from ..gemini.input import Plan
from ..gemini.outputs import Results
from ..gemini.state import PlannedBatches
from . import create, outputs
from .jobs import TERMINAL, WITH_OUTPUT, VertexJob, VertexSettings, View

if TYPE_CHECKING:
    from ..store import Store


class VertexJobs(PlannedBatches[VertexJob]):
    """Every Vertex batch prediction job of one emulator, persisted under ``<data dir>/vertex``."""

    PROVIDER = "vertex"
    RECORD_TYPE = VertexJob
    META_GLOB = "*.job.json"
    META_SUFFIX = ".job.json"
    INPUT_SUFFIX = ".requests.jsonl"
    settings: VertexSettings

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.settings = VertexSettings(gcs_endpoint=os.environ.get(GCS_ENDPOINT_ENV) or None)
        self.plans: dict[str, Plan] = {}
        self._gcs: GcsAccess | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_stamp = 0.0

    def clear(self) -> None:
        super().clear()
        self.plans.clear()
        self.settings.restore_defaults()

    def forget(self, batch_id: str) -> None:
        super().forget(batch_id)
        self.plans.pop(batch_id, None)
        self._locks.pop(batch_id, None)

    def gcs(self) -> GcsAccess:
        endpoint = self.settings.gcs_endpoint
        if not endpoint:
            raise GeminiError(
                400,
                "FAILED_PRECONDITION",
                f"The emulator has no GCS endpoint: start it with --with-gcs, set {GCS_ENDPOINT_ENV}, "
                'or POST /_emu/vertex {"gcs_endpoint": ...}.',
            )
        if self._gcs is None or self._gcs.endpoint != endpoint.rstrip("/"):
            self._gcs = GcsAccess(endpoint)
        return self._gcs

    # ------------------------------------------------------------------ create

    def _new_id(self) -> str:
        while True:
            job_id = str(secrets.randbelow(9 * 10**18) + 10**18)
            if job_id not in self.records:
                return job_id

    def _stamp(self) -> float:
        """Creation time, strictly after the last one: output directories never collide."""
        now = max(self.store.clock.now(), self._last_stamp + 1e-6)
        self._last_stamp = now
        return now

    async def create(self, project: str, location: str, body: Any) -> VertexJob:
        req = create.check_create(body, self.settings.display_name_max, self.cfg.expire_done_fraction)
        served = req.model.rsplit("/", 1)[-1] if req.model.startswith(create.PUBLISHER_PREFIX) else req.model
        if not models.serves(self.cfg, "gemini", served):
            raise not_found(
                f"Publisher Model `projects/{project}/locations/{location}/{req.model}` was not found or "
                "your project does not have access to it."
            )
        gcs = self.gcs()
        created_at = self._stamp()
        job = VertexJob(
            id=self._new_id(),
            project=project,
            location=location,
            display_name=req.display_name,
            model=req.model,
            input_uris=req.input_uris,
            output_prefix=req.output_prefix,
            output_dir=f"{req.output_prefix.rstrip('/')}/prediction-model-{rfc3339(created_at)}",
            labels=req.labels,
            created_at=created_at,
            seq=self.next_seq(),
            faults=self.store.faults.batch_defaults.merged(req.faults).to_json(),
        )
        limits = create.InputLimits(self.settings.max_requests, self.settings.max_input_bytes)
        path = self.input_path(job.id)
        try:
            job.n, job.fail_message = await asyncio.to_thread(
                create.copy_input, gcs, job.input_uris, job.output_prefix, path, limits
            )
        except Exception as exc:  # an unreachable GCS is the job's failure, as on Vertex
            job.fail_message = f"Unable to read the input {', '.join(job.input_uris)}: {exc}"
        faults = BatchFaults.from_json(job.faults)
        if job.fail_message is None and faults.fail_validation:
            job.fail_message = f"Validation failed (emulated fault: {faults.fail_validation})."
        if job.fail_message is not None:
            job.n = 0
            path.write_bytes(b"")
        self.add(job)
        self.store.stats.count_plan(await asyncio.to_thread(self.plan, job))
        return job

    # ------------------------------------------------------------------ time

    def get(self, project: str, location: str, job_id: str) -> VertexJob:
        job = self.records.get(job_id)
        if job is None or job.project != project or job.location != location:
            raise not_found(
                f"The BatchPredictionJob projects/{project}/locations/{location}/batchPredictionJobs/"
                f"{job_id} does not exist."
            )
        return job

    def _t_pending(self, job: VertexJob) -> float:
        return job.created_at + self.settings.queued_seconds

    def _t_run(self, job: VertexJob) -> float:
        if job.fail_message is None and self.plan(job).faults.expire == 0:
            return math.inf  # never leaves the queue
        return self._t_pending(job) + self.cfg.validating_seconds

    def _span(self, job: VertexJob, plan: Plan) -> tuple[float, float]:
        """(time, share of the rows) over which rows finish evenly."""
        if plan.faults.expire is not None:
            return max(self.expires_at(job) - self._t_run(job), 1e-9), plan.faults.expire
        return max(self._t_end(job, plan) - self._t_run(job), 1e-9), 1.0

    def done_at(self, job: VertexJob, plan: Plan, t: float) -> int:
        t_run = self._t_run(job)
        if t <= t_run or plan.n == 0:
            return 0
        span, share = self._span(job, plan)
        return min(plan.n, math.floor(share * plan.n * min(1.0, (t - t_run) / span)))

    def finished_at(self, job: VertexJob, plan: Plan, index: int) -> float:
        """When row ``index`` was processed (the inverse of :meth:`done_at`)."""
        span, share = self._span(job, plan)
        return self._t_run(job) + span * (index + 1) / max(share * plan.n, 1e-9)

    def view(self, job: VertexJob, now: float) -> View:
        plan = self.plan(job)
        t_run = self._t_run(job)
        queued = now < self._t_pending(job) or math.isinf(t_run)
        waiting = "JOB_STATE_QUEUED" if queued else "JOB_STATE_PENDING"
        if job.fail_message is not None:
            if now < t_run:
                return View(waiting, 0, None)
            return View("JOB_STATE_FAILED", 0, t_run)
        t_end = self._t_end(job, plan)
        expires = self.expires_at(job)
        natural_end = min(t_end, expires)
        if job.cancel_at is not None and job.cancel_at < natural_end:
            end = min(job.cancel_at + self.cfg.cancel_seconds, natural_end)
            if now >= end:
                return View("JOB_STATE_CANCELLED", self.done_at(job, plan, job.cancel_at), end)
            return View("JOB_STATE_CANCELLING", self.done_at(job, plan, min(now, job.cancel_at)), None)
        if now >= natural_end:
            if t_end <= expires:
                partial = self.settings.partial_state and plan.errors_before(plan.n) > 0
                state = "JOB_STATE_PARTIALLY_SUCCEEDED" if partial else "JOB_STATE_SUCCEEDED"
                return View(state, plan.n, t_end)
            return View("JOB_STATE_EXPIRED", self.done_at(job, plan, expires), expires)
        if now < t_run:
            return View(waiting, 0, None)
        return View("JOB_STATE_RUNNING", self.done_at(job, plan, now), None)

    # ------------------------------------------------------------------ outputs

    def _write_outputs(self, job: VertexJob, done: int) -> list[str]:
        plan = self.plan(job)
        results = Results(
            plan.fail, done, job.model.rsplit("/", 1)[-1], self.cfg.seed, job.id, True, plan.faults
        )
        entries = gemini_input.read_entries(self.input_path(job.id))
        lines = outputs.prediction_lines(entries, plan, results, lambda i: self.finished_at(job, plan, i))
        bucket, base = split_gs_uri(job.output_dir)
        gcs = self.gcs()
        written = []
        for name, data in outputs.files(lines, self.settings.lines_per_file):
            gcs.write(bucket, f"{base}/{name}", data)
            written.append(name)
        return written

    async def settle(self, job: VertexJob) -> View:
        """The job's view now, writing its predictions first when it just reached an ending with output."""
        view = await asyncio.to_thread(self.view, job, self.store.clock.now())
        if view.state in WITH_OUTPUT and not job.outputs_written:
            lock = self._locks.setdefault(job.id, asyncio.Lock())
            async with lock:
                if not job.outputs_written:
                    try:
                        job.written = await asyncio.to_thread(self._write_outputs, job, view.done)
                    except GeminiError:
                        raise
                    except Exception as exc:
                        raise GeminiError(
                            500, "INTERNAL", f"Could not write the predictions of {job.name}: {exc}"
                        ) from None
                    job.outputs_written = True
                    self.save(job)
        return view

    # ------------------------------------------------------------------ API views

    def resource(self, job: VertexJob, view: View) -> dict[str, Any]:
        plan = self.plan(job)
        now = self.store.clock.now()
        errors = plan.errors_before(view.done)
        out: dict[str, Any] = {
            "name": job.name,
            "displayName": job.display_name,
            "model": job.model,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": job.input_uris}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": job.output_prefix},
            },
            "state": view.state,
            "createTime": rfc3339(job.created_at),
            "updateTime": rfc3339(view.ended_at or now),
        }
        if job.labels:
            out["labels"] = job.labels
        if job.model.startswith(create.PUBLISHER_PREFIX):
            out["modelVersionId"] = "1"
        started = job.fail_message is None and (view.ended_at or now) >= self._t_run(job)
        if started:
            out["startTime"] = rfc3339(self._t_run(job))
            out["outputInfo"] = {"gcsOutputDirectory": job.output_dir}
            out["completionStats"] = {
                "successfulCount": str(view.done - errors),
                "failedCount": str(errors),
                "incompleteCount": str(plan.n - view.done),
            }
        if view.state in TERMINAL:
            out["endTime"] = rfc3339(view.ended_at)
        if view.state == "JOB_STATE_FAILED":
            out["error"] = {"code": 3, "message": job.fail_message}  # google.rpc.Status INVALID_ARGUMENT
        elif view.state == "JOB_STATE_CANCELLED":
            out["error"] = {"code": 1, "message": "CANCELED"}
        elif view.state == "JOB_STATE_EXPIRED":
            out["error"] = {"code": 4, "message": "The batch prediction job expired before it could finish."}
        return out

    # ------------------------------------------------------------------ mutate / list

    def cancel(self, job: VertexJob) -> None:
        view = self.view(job, self.store.clock.now())
        if view.state in TERMINAL:
            raise GeminiError(
                400,
                "FAILED_PRECONDITION",
                f"Cannot cancel BatchPredictionJob {job.name} in state {view.state}.",
            )
        if job.cancel_at is None:
            job.cancel_at = self.store.clock.now()
            self.save(job)

    def delete(self, job: VertexJob) -> None:
        view = self.view(job, self.store.clock.now())
        if view.state not in TERMINAL:
            raise GeminiError(
                400,
                "FAILED_PRECONDITION",
                f"The BatchPredictionJob {job.name} is in state {view.state}; only a finished job can be "
                "deleted. Cancel it first.",
            )
        self.forget(job.id)

    def listed(self, project: str, location: str) -> list[VertexJob]:
        """The jobs of one project and location, newest first."""
        jobs = [j for j in self.records.values() if j.project == project and j.location == location]
        return sorted(jobs, key=lambda j: j.seq, reverse=True)


def attach(store: Store) -> VertexJobs:
    """The Vertex jobs of ``store`` (``store.vertex``), cleared by ``/_emu/reset``."""
    return registry.attach(store, VertexJobs)
