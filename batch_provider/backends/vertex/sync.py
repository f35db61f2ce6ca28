"""Vertex AI's synchronous call for a sync fallback: a part-file line ``{"request"}`` is sent as
``POST /v1/projects/<project>/locations/<region>/publishers/google/models/<model>:generateContent``
(a tuned model's own resource name in its place) with the same request, labels included (they
carry the row's wire id, as on the batch line), and the answer read as the prediction line it
would have been. The bearer token is the backend's (its auth hook), as for every other call."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from batch_provider.backends.vertex import wire as vw
from batch_provider.core.errors import InvalidRequestError
from batch_provider.core.models import ResultRecord

if TYPE_CHECKING:
    from batch_provider.backends.vertex.backend import VertexBackend
    from batch_provider.core.sync_fallback import SyncRow


class VertexSyncCaller:
    def __init__(self, backend: VertexBackend) -> None:
        self.backend = backend

    def path(self, model: str) -> str:
        resource = vw.model_resource(model)
        backend = self.backend
        if resource.startswith("projects/"):
            return f"{backend.api_version}/{resource}:generateContent"
        where = f"projects/{backend.project}/locations/{backend.region}"
        return f"{backend.api_version}/{where}/{resource}:generateContent"

    async def call(self, row: SyncRow) -> ResultRecord:
        if not row.model:
            raise InvalidRequestError("the row's chunk names no model", provider="vertex")
        request = json.loads(row.line)["request"]
        answer = await self.backend._http.json(
            "POST", self.path(row.model), operation="sync call", json_body=request, idempotent=False
        )
        record = vw.record_of({"status": "", "request": request, "response": answer}, "sync", row.model)
        if record is None:
            raise InvalidRequestError(
                f"the row's request has no labels.{vw.ID_LABEL}: it was not written by this backend",
                provider="vertex",
            )
        return record
