"""What the core-level run tests of every provider check: a run's files account for every input
row, and a sync fallback answers each row left exactly once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_provider.backends.sync_callers import sync_caller
from batch_provider.core.ledger import Ledger
from batch_provider.core.part_files import PACKED_SUFFIX, iter_part_lines
from batch_provider.core.retry import write_dead_letter
from batch_provider.core.sync_fallback import rows_to_send, run_sync_fallback
from batch_provider.core.watch import watch_batches


async def wait_all(backend: Any, handle: Any, emu: Any, seconds: float = 3 * 86400) -> None:
    """Advance the emulator's clock by ``seconds``, then watch every batch of ``handle`` to its end."""
    emu.advance(seconds)
    await watch_batches(
        backend, handle.batch_ids, deadline=None, poll_interval_min=0.05, poll_interval_max=0.2
    )


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a run file; none when it does not exist."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def part_text(path: Any) -> str:
    """The text of a part file or ids sidecar as sent, whether it is still plain or packed."""
    return "".join(line.decode() + "\n" for line in iter_part_lines(path))


def part_files(folder: Path) -> list[Path]:
    """The part files of a ``requests`` folder under their plain names, packed or not."""
    names = {p.name.removesuffix(PACKED_SUFFIX) for p in folder.glob("part-*.jsonl*")}
    return [folder / name for name in sorted(names)]


def sent_requests(folder: Path) -> list[dict[str, Any]]:
    """Every request line of a ``requests`` folder, part by part."""
    return [json.loads(line) for part in part_files(folder) for line in part_text(part).splitlines()]


def assert_accounted(run_dir: Any, inputs: int) -> dict[str, Any]:
    """Every input row is in exactly one of results, errors and rejects, and the manifest says so."""
    manifest = json.loads(run_dir.manifest.read_text())
    results, errors, rejects = (read_lines(p) for p in (run_dir.results, run_dir.errors, run_dir.rejects))
    assert len(results) + len(errors) + len(rejects) == inputs
    sent = [r["custom_id"] for r in results + errors]
    assert len(sent) == len(set(sent)), "a sent request has two outcomes"
    assert manifest["accounted"] is True and manifest["inputs"] == inputs
    return manifest


@dataclass
class FallbackRun:
    to_send: list[Any]
    batch_answered: set[str]
    results: list[dict[str, Any]]
    synced: list[dict[str, Any]]
    manifest: dict[str, Any]


async def fall_back_once_under_a_rate_limit(
    emu: Any,
    run_dir: Any,
    backend_for: Callable[[Any], AbstractAsyncContextManager[Any]],
    served_per_row: Callable[[Any, list[Any]], dict[str, int]],
    row_ids: list[str],
) -> FallbackRun:
    """Run the sync fallback of attempt 1 of a run cut off half-way, under a limit of 4 calls a
    second per key, and check what every provider's fallback promises: no row answered in a
    batch is sent, each row left is served once (429s waited out, not resent twice), every row
    ends with one result, the manifest counts who finished it, and a second run sends nothing."""
    batch_answered = {r["custom_id"] for r in read_lines(run_dir.results)}
    async with backend_for(emu) as backend:
        to_send = rows_to_send(backend, run_dir, Ledger.load(run_dir), 1)
    assert to_send and batch_answered, "the cut left nothing to fall back on, or nothing answered"
    assert not {r.row_id for r in to_send} & batch_answered  # a row answered in a batch is never sent
    emu.sync_settings(rpm=4, window_seconds=1.0)

    async with backend_for(emu) as backend:
        report = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1, concurrency=6)
        summary = write_dead_letter(backend, run_dir, max_attempts=1)

    counts = emu.sync_settings()
    assert report.answered == len(to_send) and not report.unanswered
    assert counts["limited"] > 0, "the rate limit was never reached: the test proves nothing about 429s"
    assert counts["served"] == len(to_send) and counts["max_per_body"] == 1
    assert set(served_per_row(emu, to_send).values()) == {1}
    results = read_lines(run_dir.results)
    assert sorted(Counter(r["custom_id"] for r in results).items()) == [(i, 1) for i in sorted(row_ids)]
    assert read_lines(run_dir.dead_letter) == []
    manifest = json.loads(Path(str(run_dir.manifest)).read_text())
    assert manifest["finished_by"] == {"batch": len(batch_answered), "sync": len(to_send), "cache": 0}
    assert manifest["accounted"] and summary.succeeded == len(row_ids) and summary.dead_letter == 0
    assert manifest["sync_fallback"]["answered"] == len(to_send)

    async with backend_for(emu) as backend:  # a retried task sends nothing again
        again = await run_sync_fallback(backend, sync_caller(backend), run_dir, 1)
    assert again.to_send == 0 and emu.sync_settings()["served"] == len(to_send)
    synced = [r for r in results if r["batch_id"] == "sync"]
    assert len(synced) == len(to_send)
    return FallbackRun(to_send, batch_answered, results, synced, manifest)
