"""Anthropic's synchronous call for a sync fallback: a part-file line ``{"custom_id", "params"}``
is sent as ``POST /v1/messages`` with the same params, and the message read as the
``succeeded`` batch result it would have been."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from batch_provider.core.models import ResultRecord

if TYPE_CHECKING:
    from batch_provider.backends.anthropic.backend import AnthropicBackend
    from batch_provider.core.sync_fallback import SyncRow


class AnthropicSyncCaller:
    def __init__(self, backend: AnthropicBackend) -> None:
        self.backend = backend

    async def call(self, row: SyncRow) -> ResultRecord:
        params = json.loads(row.line)["params"]
        message = await self.backend._http.json(
            "POST", "v1/messages", operation="sync call", json_body=params, idempotent=False
        )
        return self.backend.record_of(
            {"custom_id": row.wire_id, "result": {"type": "succeeded", "message": message}}, "sync"
        )
