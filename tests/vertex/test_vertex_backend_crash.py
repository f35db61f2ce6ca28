"""SIGKILL the submitting process at each step of a Vertex submit, rerun it, and check that each
chunk has exactly one job and that every row comes back after wait + collect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vertex_crash_child
from backend_support import assert_accounted, backend_for, backend_options, listed_jobs, make_bucket, wait_all

from batch_provider.core.collection import collect_run
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.rundir import run_directory
from batch_provider.emulator.process import EmulatorProcess, running_emulator

CHILD = Path(__file__).with_name("vertex_crash_child.py")
REPO = Path(__file__).resolve().parents[2]
ROWS = 10
PER_BATCH = 4  # chunks of 4, 4 and 2 requests
CHUNKS = 3
POINTS = [("staged", 1), ("batch_created", 0), ("batch_created", 2), ("ledger_written", 1)]


@pytest.fixture(scope="module")
def crash_emulator() -> Iterator[EmulatorProcess]:
    with running_emulator(time_factor=600.0, with_gcs=True) as emu:
        make_bucket(emu)
        yield emu


def run_jobs(emu: Any, key: RunKey) -> list[dict[str, Any]]:
    return [job for job in listed_jobs(emu) if (job.get("labels") or {}).get("bp_run") == key.digest()]


@pytest.mark.parametrize(("point", "chunk"), POINTS, ids=[f"{p}-{c}" for p, c in POINTS])
async def test_sigkill_at_each_submit_step_then_rerun_makes_one_job_per_chunk(
    point: str, chunk: int, crash_emulator: EmulatorProcess, tmp_path: Path
) -> None:
    emu = crash_emulator
    run_id = f"crash__{point}_{chunk}"
    args = {
        "backend": backend_options(emu, prefix=run_id),
        "run_root": str(tmp_path),
        "run_id": run_id,
        "rows": ROWS,
        "per_batch": PER_BATCH,
        "crash": point,
        "chunk": chunk,
    }
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    crashed = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert crashed.returncode == -9, f"the child did not die at {point}: {crashed.stderr[-2000:]}"
    key = RunKey(dag_id="crash_dag", task_id="llm.submit", run_id=run_id)
    assert len(run_jobs(emu, key)) <= CHUNKS

    await vertex_crash_child.main({**args, "crash": None})  # the task's next try, no crash
    handle = RunHandle.model_validate_json((tmp_path / "handle.json").read_text())
    jobs = run_jobs(emu, key)
    assert len(jobs) == CHUNKS, [job["displayName"] for job in jobs]
    assert sorted(job["name"] for job in jobs) == sorted(handle.batch_ids)
    run_dir = run_directory(tmp_path, dag_id="crash_dag", run_id=run_id, group="llm")
    if point in ("batch_created", "staged"):
        matched = Ledger.load(run_dir).attempts[1].chunks[chunk].matched_by
        assert matched == ("tags" if point == "batch_created" else None)
    async with backend_for(emu, **args["backend"]) as backend:
        await wait_all(backend, handle, emu)
        summary = await collect_run(backend, handle, run_dir)
    assert summary.succeeded == ROWS
    assert_accounted(run_dir, ROWS)
