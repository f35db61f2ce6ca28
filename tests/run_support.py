"""What the core-level run tests of every provider check: a run's files account for every input row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def assert_accounted(run_dir: Any, inputs: int) -> dict[str, Any]:
    """Every input row is in exactly one of results, errors and rejects, and the manifest says so."""
    manifest = json.loads(run_dir.manifest.read_text())
    results, errors, rejects = (read_lines(p) for p in (run_dir.results, run_dir.errors, run_dir.rejects))
    assert len(results) + len(errors) + len(rejects) == inputs
    sent = [r["custom_id"] for r in results + errors]
    assert len(sent) == len(set(sent)), "a sent request has two outcomes"
    assert manifest["accounted"] is True and manifest["inputs"] == inputs
    return manifest
