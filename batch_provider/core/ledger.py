"""The durable record of what a run asked providers to do, so nothing is paid for twice.

The ledger lives in the run folder (``ledger.json``) and is rewritten whole after every change.
For each chunk it records, in this order:

1. the chunk (part file, request count, group) — before anything is sent;
2. ``intent_at`` — just before the create call;
3. the ``batch`` the provider created — just after it answered.

``ledger.json`` is the readable summary; the source of truth for the split of each attempt, for
who creates each chunk's batch and for its id are the claims (:mod:`batch_provider.core.claims`),
which :meth:`Ledger.load` lays over it, so processes rewriting ``ledger.json`` at once lose nothing.

Invariants:
- The key is (dag_id, task_id, run_id, map_index) — never try_number, so a retried or restarted
  task finds the ledger of its earlier tries — plus the fingerprint of the encoded input.
- A chunk with a batch is never submitted again. A chunk with an intent but no batch may have
  been accepted by the provider before a crash: the submitter must look for it (``find``) before
  creating another.
- A run folder holds one input: a ledger with another key or fingerprint is an error, never
  silently overwritten.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from batch_provider.core import claims
from batch_provider.core.models import BatchRef, Provider
from batch_provider.core.rundir import RunDirectory, read_bytes_if_present, write_json_atomic


class RunKey(BaseModel):
    """Identity of one submit across task retries: never includes try_number."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1

    def digest(self) -> str:
        """A short stable id for tags (provider metadata values are length-limited)."""
        raw = f"{self.dag_id}\x1f{self.task_id}\x1f{self.run_id}\x1f{self.map_index}"
        return hashlib.sha256(raw.encode()).hexdigest()[:24]


class LedgerChunk(BaseModel):
    index: int
    part: str
    """Path of the part file relative to the run folder."""
    request_count: int
    byte_size: int
    group: str
    model: str | None = None
    endpoint: str | None = None
    intent_at: datetime | None = None
    batch: BatchRef | None = None
    matched_by: str | None = None
    """How a batch found after a crash was matched: ``tags`` (the provider kept the chunk's tags),
    ``wire_ids`` (an ended batch answered exactly this chunk's wire ids) or ``unverified`` (a
    batch of this chunk's size created after its intent, still running: collect takes only the
    answers to this chunk's wire ids, so a wrong one sends the chunk's rows to the retry)."""


class LedgerAttempt(BaseModel):
    attempt: int
    fingerprint: str
    """sha256 of the encoded lines sent in this attempt."""
    input_fingerprint: str | None = None
    """sha256 of the input items (attempt 1): what decides whether a rerun is the same input."""
    chunks: list[LedgerChunk] = Field(default_factory=list)
    rejected: int = 0
    inputs: int = 0
    cached: int = 0
    cache_savings_usd: float = 0.0
    estimate: dict[str, Any] | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class LedgerConflictError(RuntimeError):
    """The run folder already holds the ledger of another task or another input."""


class Ledger(BaseModel):
    version: int = 1
    run_key: RunKey
    provider: Provider
    attempts: dict[int, LedgerAttempt] = Field(default_factory=dict)
    wire_token: str | None = None
    """The run folder's wire-id token (None in folders written before wire ids existed)."""

    @classmethod
    def load(cls, run_dir: RunDirectory) -> Ledger | None:
        """``ledger.json`` with the claims laid over it; None when the folder has neither."""
        data = read_bytes_if_present(run_dir.ledger)
        run = claims.read_run_claim(run_dir)
        if data is None and run is None:
            return None
        if data is not None:
            ledger = cls.model_validate_json(data)
        else:
            assert run is not None
            ledger = cls(run_key=RunKey.model_validate(run.run_key), provider=Provider(run.provider))
        if run is not None:
            ledger.wire_token = run.token
        for number in claims.claimed_attempts(run_dir):
            split = claims.read_split(run_dir, number)
            known = ledger.attempts.get(number)
            if split is not None and (known is None or known.fingerprint != split.get("fingerprint")):
                ledger.attempts[number] = LedgerAttempt.model_validate(split)
        for number, entry in ledger.attempts.items():
            newest = claims.claim_generations(run_dir, number)
            for chunk in entry.chunks:
                generation = newest.get(chunk.index)
                # Read a claim only where it can tell more than ledger.json: no batch there yet, or
                # a takeover happened (the newest generation's batch is the chunk's).
                if generation is None or (chunk.batch is not None and generation == 0):
                    continue
                claim = claims.read_chunk_claim(run_dir, number, chunk.index, generation)
                if claim is None:
                    continue
                chunk.intent_at = chunk.intent_at or claim.intent_at
                if claim.batch is not None:
                    chunk.batch, chunk.matched_by = claim.batch, claim.matched_by
        return ledger

    def save(self, run_dir: RunDirectory) -> None:
        write_json_atomic(run_dir.ledger, self.model_dump(mode="json"))

    def check_owner(self, run_key: RunKey, provider: Provider, run_dir: RunDirectory) -> None:
        if self.run_key != run_key:
            raise LedgerConflictError(
                f"{run_dir} already holds the ledger of {self.run_key.model_dump()}, not of "
                f"{run_key.model_dump()}. Give each task its own run_path (or group), or delete "
                "that folder if its batches are no longer wanted."
            )
        if self.provider != provider:
            raise LedgerConflictError(
                f"{run_dir} holds batches created with provider {self.provider.value!r}; this task "
                f"uses {provider.value!r}. Use another run_path, or the original provider."
            )

    def claimed_batch_ids(self) -> set[str]:
        return {c.batch.batch_id for a in self.attempts.values() for c in a.chunks if c.batch}

    def all_batches(self) -> list[BatchRef]:
        return [c.batch for a in self.attempts.values() for c in a.chunks if c.batch is not None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def chunk_tags(
    run_key: RunKey, attempt: int, index: int, fingerprint: str, token: str | None = None
) -> dict[str, str]:
    """Tags that identify one chunk of one attempt of one run folder, for providers that keep tags:
    the run key's digest, the attempt, the chunk, and the run folder's wire-id token (a folder
    started over, or another folder of the same run key, never matches) or, in folders written
    before wire ids, the attempt's fingerprint."""
    mark = token if token is not None else fingerprint[:16]
    return {"bp_run": run_key.digest(), "bp_chunk": f"{attempt}:{index}:{mark}"}
