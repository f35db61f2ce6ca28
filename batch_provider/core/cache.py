"""Content-addressed cache of succeeded results, so a request answered before is never paid again.

Invariants:
- The key is sha256 over the provider and the request as it would be sent, minus its
  ``custom_id``: the same prompt to the same model with the same options hits, anything else
  misses. Keys never contain secrets; entries hold the result record only.
- Only succeeded results are stored. An entry older than ``ttl`` is a miss.
- One file per entry (``<root>/<key[:2]>/<key>.json``) on any ObjectStoragePath: writers never
  contend, and a partial write is never read as a hit (a malformed entry is a miss).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from batch_provider.core.models import ItemStatus, LLMRequest, ResultRecord


class ResultCache:
    def __init__(self, root: Any, *, ttl: timedelta | None = None):
        self.root = root
        self.ttl = ttl
        self._made: set[str] = set()  # shard folders this instance created or found

    def __repr__(self) -> str:
        return f"ResultCache({str(self.root)!r}, ttl={self.ttl})"

    @staticmethod
    def key(provider: str, request: LLMRequest) -> str:
        body = request.model_dump(mode="json", exclude={"custom_id"}, exclude_none=True)
        raw = json.dumps([provider, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()

    def _path(self, key: str) -> Any:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, custom_id: str) -> ResultRecord | None:
        """The cached success for ``key``, relabelled with ``custom_id``; None on a miss."""
        path = self._path(key)
        try:
            with path.open("rb") as fh:  # no exists() first: one call per lookup, not two
                entry = json.loads(fh.read())
            stored_at = datetime.fromisoformat(entry["stored_at"])
            record = ResultRecord.model_validate(entry["record"])
        except (OSError, ValueError, KeyError):
            return None
        if self.ttl is not None and datetime.now(UTC) - stored_at > self.ttl:
            return None
        return record.model_copy(update={"custom_id": custom_id, "cached": True})

    def put(self, key: str, record: ResultRecord) -> None:
        if record.status is not ItemStatus.SUCCEEDED:
            return
        path = self._path(key)
        shard = key[:2]
        if shard not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(shard)
        entry = {
            "stored_at": datetime.now(UTC).isoformat(),
            "record": record.model_dump(mode="json", exclude_none=True),
        }
        with path.open("wb") as fh:
            fh.write(json.dumps(entry, separators=(",", ":")).encode())
