"""OpenAI's synchronous calls for a sync fallback: a part-file line ``{"custom_id", "method",
"url", "body"}`` is sent as ``POST <url>`` with the same body (chat completions, responses,
embeddings, completions), and the answer read as the batch output line it would have been."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from batch_provider.core.errors import InvalidRequestError
from batch_provider.core.models import ResultRecord

if TYPE_CHECKING:
    from batch_provider.backends.openai.backend import OpenAIBackend
    from batch_provider.core.sync_fallback import SyncRow

SYNC_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions")


class OpenAISyncCaller:
    def __init__(self, backend: OpenAIBackend) -> None:
        self.backend = backend

    async def call(self, row: SyncRow) -> ResultRecord:
        line = json.loads(row.line)
        url = str(line.get("url") or "")
        if url not in SYNC_ENDPOINTS:
            raise InvalidRequestError(
                f"no synchronous endpoint for {url!r}", provider=self.backend.provider.value
            )
        response = await self.backend._http.request(
            "POST", url.removeprefix("/v1/"), operation="sync call", json_body=line["body"], idempotent=False
        )
        output = {
            "custom_id": row.wire_id,
            "response": {"status_code": response.status_code, "body": response.json()},
        }
        return self.backend.record_of(output, "sync")
