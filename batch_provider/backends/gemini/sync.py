"""Gemini's synchronous call for a sync fallback: a part-file line ``{"key", "request"}`` is sent
as ``POST /v1beta/models/<model>:generateContent`` with the same request (the model is the
chunk's, as batches carry it per batch), and the answer read as the batch response it would
have been."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from batch_provider.backends.gemini import wire as gw
from batch_provider.core.errors import InvalidRequestError
from batch_provider.core.models import ResultRecord

if TYPE_CHECKING:
    from batch_provider.backends.gemini.backend import GeminiBackend
    from batch_provider.core.sync_fallback import SyncRow


class GeminiSyncCaller:
    def __init__(self, backend: GeminiBackend) -> None:
        self.backend = backend

    async def call(self, row: SyncRow) -> ResultRecord:
        if not row.model:
            raise InvalidRequestError("the row's chunk names no model", provider="gemini")
        model = row.model.removeprefix("models/")
        request = json.loads(row.line)["request"]
        answer = await self.backend._http.json(
            "POST",
            self.backend._v(f"models/{model}:generateContent"),
            operation="sync call",
            json_body=request,
            idempotent=False,
        )
        return gw.record_of({"key": row.wire_id, "response": answer}, "sync", row.model)
