"""Claims: create-if-absent on local disk, one winner among racing threads, takeover of a claim
whose creator is gone, waiting on a live one."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from batch_provider.core import claims
from batch_provider.core.claims import ChunkClaim, HeldClaim, claim_chunk, claim_run
from batch_provider.core.models import BatchRef, Provider
from batch_provider.core.rundir import RunDirectory, create_exclusive
from batch_provider.core.wire_ids import WIRE_ID_LENGTH, read_sidecar, sidecar_line, swap_wire_id, wire_id


@pytest.mark.parametrize("kind", ["pathlib", "file-url"])
def test_create_exclusive_has_one_winner_among_racing_threads(tmp_path: Path, kind: str) -> None:
    target: Any = tmp_path / "claims" / "chunk.json"
    if kind == "file-url":  # how Airflow hands over a local run_path: an ObjectStoragePath
        from airflow.sdk import ObjectStoragePath

        target = ObjectStoragePath(f"file://{target}")
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def race(n: int) -> None:
        barrier.wait()
        if create_exclusive(target, f"writer {n}".encode()):
            wins.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    local = tmp_path / "claims" / "chunk.json"
    assert len(wins) == 1 and local.read_bytes() == f"writer {wins[0]}".encode()
    assert [p.name for p in local.parent.iterdir()] == ["chunk.json"]  # no temporary left behind


async def test_run_claim_gives_every_submit_the_same_token(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path / "run")
    key = {"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": -1}
    first, second = await asyncio.gather(claim_run(run_dir, key, "openai"), claim_run(run_dir, key, "openai"))
    assert first.token == second.token and len(first.token) == 12
    other = await claim_run(RunDirectory(tmp_path / "other"), key, "openai")
    assert other.token != first.token


def write_claim(run_dir: RunDirectory, **fields: object) -> None:
    now = datetime.now(UTC)
    claim = {"owner": "gone", "host": "elsewhere", "pid": 1, "intent_at": now, "alive_at": now, **fields}
    path = run_dir.chunk_claim(1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ChunkClaim.model_validate(claim).model_dump_json())


async def test_a_claim_without_heartbeat_is_taken_over_by_the_next_generation(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    intent = datetime.now(UTC) - timedelta(minutes=10)
    write_claim(run_dir, intent_at=intent, alive_at=intent)
    held = await claim_chunk(run_dir, 1, 0)
    assert isinstance(held, HeldClaim) and held.claim.generation == 1
    assert held.claim.intent_at == intent  # batches made before the first intent are not this chunk's
    assert run_dir.chunk_claim(1, 0, 1).exists()
    held.release()


async def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    write_claim(run_dir, host=claims.HOST, pid=2**22 + 12345)  # no such pid
    held = await asyncio.wait_for(claim_chunk(run_dir, 1, 0), timeout=5)
    assert isinstance(held, HeldClaim) and held.claim.generation == 1
    held.release()


async def test_a_live_claim_is_waited_for_and_its_batch_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claims, "POLL_SECONDS", 0.05)
    run_dir = RunDirectory(tmp_path)
    write_claim(run_dir, host=claims.HOST, pid=os.getpid(), owner="live")
    claims._LIVE_OWNERS.add("live")
    try:
        waiting = asyncio.create_task(claim_chunk(run_dir, 1, 0))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        now = datetime.now(UTC)
        ref = BatchRef(
            provider=Provider.OPENAI, batch_id="batch_x", chunk_index=0, request_count=1, created_at=now
        )
        stored = json.loads(run_dir.chunk_claim(1, 0).read_text())
        stored["batch"] = ref.model_dump(mode="json")
        run_dir.chunk_claim(1, 0).write_text(json.dumps(stored))
        adopted = await asyncio.wait_for(waiting, timeout=5)
    finally:
        claims._LIVE_OWNERS.discard("live")
    assert isinstance(adopted, ChunkClaim) and adopted.batch is not None
    assert adopted.batch.batch_id == "batch_x"


def test_wire_ids_fit_every_provider_and_the_sidecar_keeps_any_row_id() -> None:
    wire = wire_id("0123456789ab", 2, 41)
    assert wire == "bp0123456789aba02n000000041" and len(wire) == WIRE_ID_LENGTH and wire.isalnum()
    rows = ["os.path.join", "line\nbreak", "ü" * 300, "42"]
    entries = [sidecar_line(n % 2 == 0, wire_id("t" * 12, 1, n), r) for n, r in enumerate(rows)]
    lines = [b"#bp-wire-ids 1", *entries]
    ids = read_sidecar(lines)
    assert list(ids.rows.values()) == rows and list(ids.wants.values()) == [True, False, True, False]
    legacy = read_sidecar([b"0r-1", b"1r-2"])
    assert legacy.rows == {"r-1": "r-1", "r-2": "r-2"} and legacy.wants == {"r-1": False, "r-2": True}
    line = b'{"custom_id":"' + wire.encode() + b'","body":{"text":"' + wire.encode() + b'"}}'
    swapped = swap_wire_id(line, wire, wire_id("0123456789ab", 3, 0))
    assert swapped.count(wire.encode()) == 1 and len(swapped) == len(line)


async def test_an_abandoned_claim_of_a_live_process_elsewhere_is_taken_over_at_once(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    write_claim(run_dir, abandoned=True)  # heartbeat fresh, host elsewhere: only the flag says go
    held = await asyncio.wait_for(claim_chunk(run_dir, 1, 0), timeout=5)
    assert isinstance(held, HeldClaim) and held.claim.generation == 1
    held.abandon()
    again = await asyncio.wait_for(claim_chunk(run_dir, 1, 0), timeout=5)
    assert isinstance(again, HeldClaim) and again.claim.generation == 2
    again.release()


def test_after_a_takeover_the_newest_claim_wins_over_ledger_json(tmp_path: Path) -> None:
    from batch_provider.core.ledger import Ledger, LedgerAttempt, LedgerChunk, RunKey

    run_dir = RunDirectory(tmp_path)
    now = datetime.now(UTC)

    def ref(batch_id: str) -> BatchRef:
        return BatchRef(
            provider=Provider.OPENAI, batch_id=batch_id, chunk_index=0, request_count=1, created_at=now
        )

    chunk = LedgerChunk(index=0, part="p", request_count=1, byte_size=1, group="g", batch=ref("zombie"))
    key = RunKey(dag_id="d", task_id="t", run_id="r")
    entry = LedgerAttempt(attempt=1, fingerprint="f", chunks=[chunk])
    Ledger(run_key=key, provider=Provider.OPENAI, attempts={1: entry}).save(run_dir)
    write_claim(run_dir)  # generation 0: the zombie, never recorded its batch
    taker = ChunkClaim(
        owner="b", host="h", pid=1, generation=1, intent_at=now, alive_at=now, batch=ref("taker")
    )
    run_dir.chunk_claim(1, 0, 1).write_text(taker.model_dump_json())
    loaded = Ledger.load(run_dir)
    assert loaded is not None and loaded.attempts[1].chunks[0].batch.batch_id == "taker"
