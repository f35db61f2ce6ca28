"""The run index: collect and retry keep one entry per run folder, equal to the manifest's figures;
readers see new and rewritten entries, start cold from the segment, and a broken index never
fails a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from batch_provider.backends.registry import create_backend
from batch_provider.core.collection import collect_run
from batch_provider.core.ledger import RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.run_index import (
    ENTRIES_DIR,
    SEGMENT,
    RunIndexReader,
    entry_from_manifest,
    index_root,
    write_entry,
)
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run
from batch_provider.core.watch import watch_batches


async def _run(emulator: Any, base: Path, *, run_id: str, tags: dict[str, str]) -> Any:
    data = [{"id": f"r-{i}", "text": f"row {i}"} for i in range(6)]
    data[2]["text"] += " [[emu:fail500]]"  # retryable in attempt 1: the run has a retry
    run_dir = run_directory(base, dag_id="ui_dag", run_id=run_id, group="classify")
    key = RunKey(dag_id="ui_dag", task_id="classify.submit", run_id=run_id)
    builder = RequestBuilder(template="Say: {{ text }}", model="gpt-6-luna", max_tokens=16)
    items = builder.render(iter_list(data))
    async with create_backend("openai", api_key="k", base_url=f"{emulator.base_url}/v1") as backend:
        handle = await submit_run(backend, items, run_dir, run_key=key, conn_id="c", tags=tags)
        emulator.advance(2 * 86400)
        await watch_batches(backend, handle.batch_ids, deadline=None, poll_interval_min=0.05)
        await collect_run(backend, handle, run_dir)
        retry = await resubmit_retryable(backend, handle, run_dir, run_key=key, max_attempts=2)
        if retry is not None:
            emulator.advance(2 * 86400)
            await watch_batches(backend, retry.batch_ids, deadline=None, poll_interval_min=0.05)
            await collect_run(backend, retry, run_dir)
        write_dead_letter(backend, run_dir)
    return run_dir


async def test_collect_and_retry_keep_one_entry_matching_the_manifest(emulator: Any, tmp_path: Path) -> None:
    run_dir = await _run(emulator, tmp_path, run_id="manual__1", tags={"cost_centre": "support"})
    manifest = json.loads(run_dir.manifest.read_text())
    entries_dir = tmp_path / "_index" / ENTRIES_DIR
    assert len(list(entries_dir.iterdir())) >= 3, "collect, collect after retry and dead letter each wrote"
    (entry,) = RunIndexReader(tmp_path / "_index").entries()
    assert len(list(entries_dir.iterdir())) == 1, "the reader dropped the superseded versions"
    assert entry == json.loads(next(entries_dir.iterdir()).read_text())
    assert entry == entry_from_manifest(manifest, group="classify")
    assert (entry["dag_id"], entry["run_id"], entry["group"]) == ("ui_dag", "manual__1", "classify")
    assert entry["rows"] == manifest["inputs"] == 6
    assert entry["succeeded"] == manifest["succeeded"]
    assert entry["errored"] == manifest["unresolved"]
    assert entry["dead_letter"] == manifest["dead_letter"]
    assert entry["batch_usd"] == manifest["cost"]["batch_usd"] > 0
    assert entry["savings_usd"] == manifest["cost"]["savings_usd"]
    assert entry["tags"]["cost_centre"] == "support"
    assert [b["id"] for b in entry["batches"]] == [b["batch_id"] for b in manifest["batches"]]
    assert entry["completion_s"] is not None and entry["completion_s"] > 0
    assert entry["finished"] is True


async def test_a_broken_index_is_a_warning_not_a_failed_run(emulator: Any, tmp_path: Path, caplog) -> None:
    (tmp_path / "_index").write_text("not a folder")  # the index cannot be written
    with caplog.at_level(logging.WARNING, logger="batch_provider.core.run_index"):
        run_dir = await _run(emulator, tmp_path, run_id="manual__2", tags={})
    assert json.loads(run_dir.manifest.read_text())["accounted"] is True
    assert any("Could not update the run index" in r.getMessage() for r in caplog.records)


def _entry(dag: str, run: str, **extra: Any) -> dict[str, Any]:
    return {"dag_id": dag, "run_id": run, "provider": "openai", "models": ["m"], **extra}


def test_reader_sees_new_and_rewritten_entries_and_starts_cold_from_the_segment(tmp_path: Path) -> None:
    root = tmp_path / "_index"
    for i in range(300):
        write_entry(root, f"d{i:04d}", _entry("a", f"r{i}", rows=i))
    reader = RunIndexReader(root)
    assert len(reader.entries()) == 300
    assert (root / SEGMENT).exists(), "300 new entries at once are written to the segment"

    write_entry(root, "d0001", _entry("a", "r1", rows=999))
    write_entry(root, "new", _entry("b", "x"))
    by_run = {e["run_id"]: e for e in reader.entries()}
    assert len(by_run) == 301 and by_run["r1"]["rows"] == 999

    cold = RunIndexReader(root)
    opened: list[str] = []
    original = Path.open

    def spy(self: Path, *args: Any, **kwargs: Any):
        if self.parent.name == ENTRIES_DIR:
            opened.append(self.name)
        return original(self, *args, **kwargs)

    Path.open = spy  # type: ignore[method-assign]
    try:
        entries = cold.entries()
    finally:
        Path.open = original  # type: ignore[method-assign]
    assert len(entries) == 301
    assert len(opened) == 2, f"a cold reader opens only entries newer than the segment, not {len(opened)}"


def test_index_root_is_next_to_the_dag_folders(tmp_path: Path) -> None:
    run_dir = run_directory(tmp_path, dag_id="d", run_id="r", group="g", map_index=3)
    assert index_root(run_dir) == tmp_path / "_index"
