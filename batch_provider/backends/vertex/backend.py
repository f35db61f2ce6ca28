"""Vertex AI batch prediction backend (aiplatform v1 ``batchPredictionJobs``) for Gemini models.

Wire format: Google's aiplatform v1 REST reference for ``batchPredictionJobs`` and its "batch
prediction for Gemini" guide; translation, states and prediction lines live in :mod:`.wire`,
credentials in :mod:`.auth`, Cloud Storage in :mod:`.storage`.

Decisions:
- **Input on GCS.** A chunk's part file is already the job's input JSONL (one
  ``{"request": …}`` line per row) and is uploaded byte for byte to
  ``{staging_uri}/{job dir}/input.jsonl``; the job writes under ``{output_uri}/{job dir}/``. The job
  dir is derived from the chunk's identity tags, so a re-run overwrites the same object (same
  bytes) instead of staging a second copy.
- **Ids in labels.** Vertex has no custom id and does not keep order: each line carries its wire id
  in ``request.labels.bp_id``, echoed on every prediction line.
- **Re-attach by labels and display name.** The job carries ``bp_run``/``bp_chunk`` as labels and in
  its display name; :meth:`find` lists jobs (filtered server-side by ``labels.bp_run``) and matches
  them exactly, hence ``keeps_tags = True``. A create whose connection broke after sending is
  retried only after listing found no job with the same display name (else that job is adopted):
  never a second job per chunk.
- **States.** QUEUED/PENDING → pending; RUNNING/UPDATING/PAUSED → running; CANCELLING →
  finalizing; SUCCEEDED and PARTIALLY_SUCCEEDED → completed; FAILED → failed; CANCELLED →
  cancelled; EXPIRED → expired. Results are read after every terminal state: Vertex exports the
  rows that completed even when a job is cancelled or expires; rows without a line go to the retry.
- **Item errors.** A prediction line with a non-empty ``status`` is an error, retryable for
  transient gRPC statuses and HTTP 408/429/5xx (see :mod:`.wire`).
- **Credentials.** A service-account key (JSON) or Application Default Credentials, refreshed off
  the event loop; an emulator may be reached anonymously (``anonymous=True``). The token is set on
  each request by an ``httpx2`` auth hook and never appears in a URL, a log or a ref.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx2

from batch_provider.backends.http_backend import HttpBatchBackend
from batch_provider.backends.transport import TransportPolicy, shared_ssl_context
from batch_provider.backends.vertex import wire as vw
from batch_provider.backends.vertex.auth import BearerAuth, load_credentials
from batch_provider.backends.vertex.storage import GcsStore, check_uri, join
from batch_provider.backends.wire import (
    check_custom_id,
    check_max_tokens,
    check_size,
    encode_line,
    parse_timestamp,
)
from batch_provider.core.contract import Chunk, EncodedRequest
from batch_provider.core.errors import ConflictError, InvalidRequestError, NotFoundError, RequestRejected
from batch_provider.core.jsonl import loads
from batch_provider.core.limits import ProviderLimits
from batch_provider.core.models import BatchRef, BatchState, LLMRequest, Provider, ResultRecord

_LIST_PAGE = 100


def default_base_url(region: str) -> str:
    if region == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{region}-aiplatform.googleapis.com"


def job_dir(tags: Mapping[str, str], chunk: Chunk) -> str:
    """A GCS folder name for one chunk's job: from its identity tags when it has them, else from
    the chunk's part file, so the same chunk always stages to the same object."""
    run, mark = tags.get("bp_run"), tags.get("bp_chunk")
    if run and mark:
        return f"{vw.label_value(run)}/{vw.label_value(mark)}"
    digest = hashlib.sha256(f"{chunk.path}:{chunk.byte_size}:{chunk.index}".encode()).hexdigest()[:24]
    return f"untagged/{digest}"


class VertexBackend(HttpBatchBackend):
    """Vertex AI batch prediction on one pooled ``httpx2.AsyncClient`` plus gcsfs for GCS.

    Options:
        project: the Google Cloud project (default: the key's or ADC's project).
        region: the job's location (``us-central1``; ``global`` for the global endpoint).
        staging_uri: ``gs://bucket/prefix`` where inputs are staged.
        output_uri: ``gs://bucket/prefix`` under which jobs write predictions (default: staging_uri).
        service_account_json: a service-account key (JSON text or dict); empty: ADC.
        credentials: ready google-auth credentials (instead of the two above).
        anonymous: no credentials at all (emulators only).
        base_url: the aiplatform API root (default: the region's endpoint; the emulator's in tests).
        gcs_endpoint: the GCS JSON API root (default: Google's; a GCS emulator's in tests).
        policy / limits / client: transport policy, lowered limits, a caller-owned HTTP client.
    """

    provider: ClassVar[Provider] = Provider.VERTEX
    keeps_tags: ClassVar[bool] = True
    default_base_url: ClassVar[str] = "https://us-central1-aiplatform.googleapis.com"
    body_overhead_bytes: ClassVar[int] = 0

    def __init__(
        self,
        project: str | None = None,
        region: str = "us-central1",
        *,
        staging_uri: str | None = None,
        output_uri: str | None = None,
        service_account_json: str | Mapping[str, Any] | None = None,
        credentials: Any = None,
        anonymous: bool | str = False,
        base_url: str | None = None,
        gcs_endpoint: str | None = None,
        api_version: str = "v1",
        policy: TransportPolicy | None = None,
        limits: ProviderLimits | None = None,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        if not staging_uri:
            raise ValueError(
                "a Vertex backend needs staging_uri: the gs://bucket/prefix where batch inputs are "
                "staged (connection extra 'staging_uri' or the operator's option)"
            )
        self.staging_uri = check_uri(staging_uri, "staging_uri")
        self.output_uri = check_uri(output_uri or staging_uri, "output_uri")
        anonymous = (
            str(anonymous).lower() in ("1", "true", "yes") if isinstance(anonymous, str) else anonymous
        )
        if credentials is None:
            credentials, key_project = load_credentials(service_account_json, anonymous=bool(anonymous))
        else:
            key_project = getattr(credentials, "project_id", None)
        self.project = project or key_project
        if not self.project:
            raise ValueError(
                "a Vertex backend needs a project: set the connection's 'project' (or use a key / "
                "Application Default Credentials that name one)"
            )
        self.region = region or "us-central1"
        self.api_version = str(api_version).strip("/")
        self._owned_client: httpx2.AsyncClient | None = None
        policy = policy or TransportPolicy()
        auth = BearerAuth(credentials)
        if client is None:
            client = self._owned_client = httpx2.AsyncClient(
                verify=shared_ssl_context(), timeout=policy.timeout(), limits=policy.limits(), auth=auth
            )
        else:
            client.auth = auth
        super().__init__(
            base_url or default_base_url(self.region),
            credential_headers={},
            policy=policy,
            limits=limits,
            client=client,
        )
        self._gcs = GcsStore(credentials=credentials, project=self.project, endpoint_url=gcs_endpoint)

    @property
    def _jobs(self) -> str:
        return f"{self.api_version}/projects/{self.project}/locations/{self.region}/batchPredictionJobs"

    def _job_path(self, batch_id: str) -> str:
        if batch_id.startswith("projects/"):
            return f"{self.api_version}/{batch_id}"
        return f"{self._jobs}/{batch_id}"

    def __repr__(self) -> str:
        where = f"project={self.project!r}, region={self.region!r}"
        return f"VertexBackend({where}, base_url={self._http.base_url!r})"

    async def aclose(self) -> None:
        await super().aclose()
        if self._owned_client is not None:
            await self._owned_client.aclose()

    # ----------------------------------------------------------------- translation

    def encode(self, request: LLMRequest) -> EncodedRequest:
        check_custom_id(request, self.limits)
        check_max_tokens(request)
        value, model = vw.request_line(request)
        if not model:
            raise RequestRejected(request.custom_id, "model", "no model given")
        line = encode_line(value)
        check_size(request.custom_id, line, self.limits)
        short = vw.short_model(model) or model
        return EncodedRequest(custom_id=request.custom_id, line=line, group=short, model=short)

    def custom_id_of(self, line: bytes) -> str:
        key = vw.id_of_line(loads(line))
        if key is None:
            raise ValueError(f"a Vertex input line without request.labels.{vw.ID_LABEL}")
        return key

    def wants_json(self, line: bytes) -> bool:
        return vw.wants_json(line)

    # ----------------------------------------------------------------- operations

    async def _stage(self, chunk: Chunk, uri: str) -> str:
        await self._gcs.upload(chunk.path, uri)
        return uri

    async def submit(self, chunk: Chunk, *, tags: Mapping[str, str]) -> BatchRef:
        if not chunk.model:
            raise ValueError("a Vertex chunk needs its model")
        name = vw.display_name(tags)
        folder = job_dir(tags, chunk)
        source = await self._stage(chunk, join(self.staging_uri, folder, "input.jsonl"))
        body = {
            "displayName": name,
            "model": vw.model_resource(chunk.model),
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [source]}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": join(self.output_uri, folder) + "/"},
            },
            "labels": vw.job_labels(tags),
        }

        async def adopt_existing() -> httpx2.Response | None:
            async for job in self._list_jobs(tags):
                if job.get("displayName") == name:
                    return httpx2.Response(200, json=job)
            return None

        identified = bool(tags.get("bp_run") and tags.get("bp_chunk"))
        response = await self._http.request(
            "POST",
            self._jobs,
            operation="create batch prediction job",
            json_body=body,
            idempotent=False,
            recover=adopt_existing if identified else None,
        )
        return self._ref(response.json(), chunk_index=chunk.index, request_count=chunk.request_count)

    def _ref(self, job: dict[str, Any], *, chunk_index: int, request_count: int) -> BatchRef:
        uris = ((job.get("inputConfig") or {}).get("gcsSource") or {}).get("uris") or []
        return BatchRef(
            provider=self.provider,
            batch_id=str(job["name"]),
            input_file_id=uris[0] if uris else None,
            chunk_index=chunk_index,
            request_count=request_count,
            created_at=parse_timestamp(job.get("createTime")) or datetime.now(UTC),
            model=vw.short_model(job.get("model")),
        )

    async def _list_jobs(self, tags: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        narrowing = vw.list_filter(tags)
        while True:
            params: dict[str, Any] = {"pageSize": _LIST_PAGE}
            if narrowing:
                params["filter"] = narrowing
            if token:
                params["pageToken"] = token
            page = await self._http.json(
                "GET", self._jobs, operation="list batch prediction jobs", params=params
            )
            for job in page.get("batchPredictionJobs") or []:
                yield job
            token = page.get("nextPageToken")
            if not token:
                return

    async def find(self, *, tags: Mapping[str, str], created_after: datetime) -> list[BatchRef]:
        """Jobs created since ``created_after`` whose display name (and labels) carry every tag of
        ``tags``; every page is read, the list's order is not relied on."""
        found: list[BatchRef] = []
        parts = tags.get("bp_chunk", "").split(":")
        index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        async for job in self._list_jobs(tags):
            created = parse_timestamp(job.get("createTime"))
            if created is not None and created < created_after:
                continue
            if vw.matches(job, tags):
                state = vw.state_of(job)
                found.append(self._ref(job, chunk_index=index, request_count=state.counts.total))
        return found

    async def _job(self, batch_id: str) -> dict[str, Any]:
        return await self._http.json("GET", self._job_path(batch_id), operation="get batch prediction job")

    async def status(self, batch_id: str) -> BatchState:
        return vw.state_of(await self._job(batch_id))

    async def cancel(self, batch_id: str) -> BatchState:
        try:
            await self._http.request(
                "POST",
                f"{self._job_path(batch_id)}:cancel",
                operation="cancel batch prediction job",
                json_body={},
            )
        except (InvalidRequestError, ConflictError) as refusal:
            return await self._state_if_ended(batch_id, refusal)
        return await self.status(batch_id)

    async def delete_batch(self, batch_id: str) -> None:
        """Delete an ended job (its predictions stay in GCS); a job already gone is fine."""
        with contextlib.suppress(NotFoundError):
            await self._http.request(
                "DELETE", self._job_path(batch_id), operation="delete batch prediction job"
            )

    async def prediction_files(self, job: Mapping[str, Any]) -> list[str]:
        """The job's ``predictions*.jsonl`` objects: in ``outputInfo.gcsOutputDirectory``, else one
        level under the output prefix it was given."""
        directory = (job.get("outputInfo") or {}).get("gcsOutputDirectory")
        if directory:
            return await self._gcs.glob(join(directory, "predictions*.jsonl"))
        prefix = ((job.get("outputConfig") or {}).get("gcsDestination") or {}).get("outputUriPrefix")
        if not prefix:
            return []
        return await self._gcs.glob(join(prefix, "*", "predictions*.jsonl"))

    async def results(self, ref: BatchRef) -> AsyncIterator[ResultRecord]:
        """Records of every prediction line of the job, once per wire id; lines without an id
        (none this backend wrote) are skipped, so their rows count as unanswered."""
        job = await self._job(ref.batch_id)
        seen: set[str] = set()
        for uri in await self.prediction_files(job):
            async for line in self._gcs.lines(uri):
                try:
                    decoded = loads(line)
                except ValueError:
                    continue  # a line cut short: its row stays unanswered and is retried
                record = vw.record_of(decoded, ref.batch_id, ref.model)
                if record is None or record.custom_id in seen:
                    continue
                seen.add(record.custom_id)
                yield record

    async def delete_input(self, ref: BatchRef) -> None:
        if ref.input_file_id and ref.input_file_id.startswith(self.staging_uri + "/"):
            with contextlib.suppress(FileNotFoundError):
                await self._gcs.delete(ref.input_file_id)
