"""Claims: who, among processes submitting the same run at once, creates what.

Every claim is a small JSON file created with :func:`create_exclusive` (local ``link``/``O_EXCL``,
S3 ``If-None-Match: *``) under ``<run folder>/claims/``:

- ``run.json``: the run folder's owner (run key, provider) and its random wire-id token. The first
  submit of a folder creates it; every later one reads it, so concurrent submits build the same
  wire ids.
- ``attempt-N/split.json``: attempt N's chunks (the ledger entry, as JSON). Whoever publishes it
  first decides the split; everyone else adopts it.
- ``attempt-N/chunk-NNNNN.json`` (then ``-g1``, ``-g2``… after takeovers): the intent to create
  chunk NNNNN's batch, then the batch itself. Only its creator writes the batch; everyone else
  waits for it while the creator is alive.

Invariants:
- A claim file is created once and is then only rewritten by its creator (heartbeats, the batch).
- The claim of a creator that stopped heartbeating for :data:`LEASE_SECONDS`, or whose process is
  gone (same host, pid not running), is stale: the next generation may be claimed, and its
  winner looks for the batch the dead creator may have made (tags / wire ids) before creating one.
- ``ledger.json`` is a readable summary; where it and the claims disagree, the claims win.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from batch_provider.core.models import BatchRef
from batch_provider.core.rundir import (
    RunDirectory,
    create_exclusive,
    pid_running,
    read_bytes_if_present,
    write_json_atomic,
)

HEARTBEAT_SECONDS = 10.0
"""How often a creator refreshes its chunk claim while its create call runs."""
LEASE_SECONDS = 60.0
"""A chunk claim not refreshed for this long belongs to a creator presumed dead."""
POLL_SECONDS = 0.5
"""How often a waiting submit looks at a claim held by a live creator."""

HOST = socket.gethostname()
_LIVE_OWNERS: set[str] = set()
"""Owner ids of claims held by coroutines of this process right now."""


def _now() -> datetime:
    return datetime.now(UTC)


class RunClaim(BaseModel):
    token: str
    run_key: dict[str, Any]
    provider: str
    created_at: datetime


class ChunkClaim(BaseModel):
    owner: str
    host: str
    pid: int
    generation: int = 0
    intent_at: datetime
    """When the chunk's first claim was made: batches created before it are not this chunk's."""
    alive_at: datetime
    batch: BatchRef | None = None
    matched_by: str | None = None
    abandoned: bool = False
    """Set by a creator whose create call failed: the next submit takes over at once."""

    def is_stale(self, now: datetime | None = None) -> bool:
        """True when the creator is gone: its process ended (same host), it stopped heartbeating,
        or it gave the claim up."""
        if self.batch is not None:
            return False
        if self.abandoned:
            return True
        if self.host == HOST:
            if self.pid == os.getpid():
                return self.owner not in _LIVE_OWNERS
            if not pid_running(self.pid):
                return True
        return ((now or _now()) - self.alive_at).total_seconds() > LEASE_SECONDS


def _dump(model: BaseModel) -> bytes:
    return model.model_dump_json(indent=2).encode()


async def _create_or_read(path: Any, data: bytes) -> tuple[bool, bytes]:
    """(True, data) when this call created ``path``; else (False, what is there). A conditional
    write can lose to one still in flight: then the winner's content is awaited briefly."""
    for _ in range(100):
        if create_exclusive(path, data):
            return True, data
        existing = read_bytes_if_present(path)
        if existing:
            return False, existing
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{path} is neither creatable nor readable: is another process deleting it?")


async def claim_run(run_dir: RunDirectory, run_key: dict[str, Any], provider: str) -> RunClaim:
    """The run folder's claim: created with a new token by the first submit, read by the others."""
    mine = RunClaim(token=secrets.token_hex(6), run_key=run_key, provider=provider, created_at=_now())
    _, data = await _create_or_read(run_dir.run_claim, _dump(mine))
    return RunClaim.model_validate_json(data)


def read_run_claim(run_dir: RunDirectory) -> RunClaim | None:
    data = read_bytes_if_present(run_dir.run_claim)
    return RunClaim.model_validate_json(data) if data else None


async def publish_split(
    run_dir: RunDirectory, attempt: int, entry: dict[str, Any]
) -> tuple[bool, dict[str, Any]]:
    """Publish attempt ``attempt``'s split; (True, entry) when this call did, else (False, the one
    published first)."""
    won, data = await _create_or_read(run_dir.split_claim(attempt), json.dumps(entry, default=str).encode())
    return won, json.loads(data)


def read_split(run_dir: RunDirectory, attempt: int) -> dict[str, Any] | None:
    data = read_bytes_if_present(run_dir.split_claim(attempt))
    return json.loads(data) if data else None


def claimed_attempts(run_dir: RunDirectory) -> list[int]:
    """Attempts with a published split, in order."""
    names = _listing(run_dir.claims_dir)
    found = [int(n.removeprefix("attempt-")) for n in names if n.startswith("attempt-") and n[8:].isdigit()]
    return sorted(n for n in found if read_bytes_if_present(run_dir.split_claim(n)) is not None)


def current_chunk_claim(run_dir: RunDirectory, attempt: int, index: int) -> tuple[int, ChunkClaim | None]:
    """(generation, claim) of the newest claim of a chunk; (0, None) when it was never claimed."""
    generation, current = 0, None
    while True:
        data = read_bytes_if_present(run_dir.chunk_claim(attempt, index, generation))
        if not data:
            return (max(generation - 1, 0), current)
        current = ChunkClaim.model_validate_json(data)
        generation += 1


class HeldClaim:
    """A chunk claim this process won: rewrite it with heartbeats and, at last, the batch."""

    def __init__(self, run_dir: RunDirectory, attempt: int, index: int, claim: ChunkClaim) -> None:
        self.path = run_dir.chunk_claim(attempt, index, claim.generation)
        self.claim = claim
        _LIVE_OWNERS.add(claim.owner)

    def record(self, batch: BatchRef, matched_by: str | None) -> None:
        update = {"batch": batch, "matched_by": matched_by, "alive_at": _now()}
        self.claim = self.claim.model_copy(update=update)
        write_json_atomic(self.path, self.claim.model_dump(mode="json"))
        self.release()

    def release(self) -> None:
        _LIVE_OWNERS.discard(self.claim.owner)

    def abandon(self) -> None:
        """Give the claim up after a failed create, so the next submit need not wait out the lease
        (it still looks for a batch the failed call may have made before creating one)."""
        if self.claim.batch is None:
            self.claim = self.claim.model_copy(update={"abandoned": True})
            write_json_atomic(self.path, self.claim.model_dump(mode="json"))
        self.release()

    @contextlib.asynccontextmanager
    async def heartbeat(self) -> AsyncIterator[None]:
        """Refresh the claim every :data:`HEARTBEAT_SECONDS` while the block runs."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_SECONDS)
                self.claim = self.claim.model_copy(update={"alive_at": _now()})
                write_json_atomic(self.path, self.claim.model_dump(mode="json"))

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def claim_chunk(
    run_dir: RunDirectory, attempt: int, index: int, *, earliest_intent: datetime | None = None
) -> HeldClaim | ChunkClaim:
    """Claim the creation of chunk ``index``'s batch, or learn who did.

    Returns a :class:`HeldClaim` when this process must create (or find) the batch — on a
    takeover, ``claim.generation > 0`` — or the :class:`ChunkClaim` holding the batch another
    process recorded. Waits while a live creator is at work.
    """
    owner = uuid.uuid4().hex
    generation, current = current_chunk_claim(run_dir, attempt, index)
    started = time.monotonic()
    while True:
        if current is not None and current.batch is not None:
            return current
        if current is None or current.is_stale():
            target = generation + 1 if current is not None else 0
            now = _now()
            intent = current.intent_at if current is not None else (earliest_intent or now)
            mine = ChunkClaim(
                owner=owner, host=HOST, pid=os.getpid(), generation=target, intent_at=intent, alive_at=now
            )
            won, data = await _create_or_read(run_dir.chunk_claim(attempt, index, target), _dump(mine))
            if won:
                return HeldClaim(run_dir, attempt, index, mine)
            generation, current = target, ChunkClaim.model_validate_json(data)
            continue
        await asyncio.sleep(POLL_SECONDS if time.monotonic() - started < 60 else 2 * POLL_SECONDS)
        generation, current = current_chunk_claim(run_dir, attempt, index)


def _listing(folder: Any) -> list[str]:
    """Names in ``folder`` (none when it does not exist), past any listing cache of the store."""
    invalidate = getattr(getattr(folder, "fs", None), "invalidate_cache", None)
    if invalidate is not None:  # an object store's listing cache may predate another process's claim
        invalidate(folder.path)
    try:
        return [p.name for p in folder.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def claim_generations(run_dir: RunDirectory, attempt: int) -> dict[int, int]:
    """Chunk index → newest claim generation, for every chunk of ``attempt`` ever claimed (one
    listing of the attempt's claims folder)."""
    newest: dict[int, int] = {}
    for name in _listing(run_dir.split_claim(attempt).parent):
        if not (name.startswith("chunk-") and name.endswith(".json")):
            continue
        index, _, generation = name[6:-5].partition("-g")
        if index.isdigit() and (not generation or generation.isdigit()):
            key, gen = int(index), int(generation or 0)
            newest[key] = max(newest.get(key, 0), gen)
    return newest


def read_chunk_claim(run_dir: RunDirectory, attempt: int, index: int, generation: int) -> ChunkClaim | None:
    data = read_bytes_if_present(run_dir.chunk_claim(attempt, index, generation))
    return ChunkClaim.model_validate_json(data) if data else None
