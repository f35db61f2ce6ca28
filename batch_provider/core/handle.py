"""The small, JSON-safe description of a run's batches that crosses XCom between tasks.

Invariant: a handle never carries request or result data, nor any secret: only where the run
directory is, which provider and connection, which attempt, and the batches created.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from batch_provider.core.models import BatchRef, Provider


class InputCounts(BaseModel):
    inputs: int = 0
    rejected: int = 0
    cached: int = 0
    submitted: int = 0


class RunHandle(BaseModel):
    run_path: str
    """``str()`` of the run directory (an ObjectStoragePath keeps its conn_id in the string)."""
    provider: Provider
    conn_id: str | None = None
    cache_path: str | None = None
    """The result cache submit looked requests up in (``str()`` of its path), or None when off:
    collect and retry store successes there unless told otherwise."""
    attempt: int = 1
    batches: list[BatchRef] = Field(default_factory=list)
    counts: InputCounts = Field(default_factory=InputCounts)

    @property
    def batch_ids(self) -> list[str]:
        return [ref.batch_id for ref in self.batches]
