"""SIGKILL a collect or a retry step in the middle of each file it writes, on a local disk and
on S3 (moto), then run the step again: every file is, at all times, the old complete one or the
new complete one (never a part a later read would accept), and the next try finishes the job
with the right counts."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from moto_support import aws_connection, moto_s3
from rel_support import backend_for, base_url, batches_created, wait_until_ended

from batch_provider.core.collection import collect_run
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.part_files import iter_part_lines
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.retry import resubmit_retryable, write_dead_letter
from batch_provider.core.rundir import RunDirectory, read_bytes_if_present
from batch_provider.core.submission import submit_run

CHILD = Path(__file__).with_name("crash_collect.py")
ROWS = 30
NOT_RETRYABLE = (3, 17)  # a fail400 marker: straight to the dead letter
RETRYABLE = (5, 24)  # a fail500 marker: sent again by a retry
S3_CONN = "bp_crash_s3"
RESULTS_FORMAT = {"collect-parquet": "parquet"}

FILES = {
    "collect": [
        "attempt-1/errors.jsonl",
        "attempt-1/batches.json",
        "results.jsonl",
        "errors.jsonl",
        "manifest.json",
    ],
    "collect-parquet": ["results.parquet", "attempt-1/errors.jsonl", "manifest.json"],
    "finish": ["errors.jsonl", "dead_letter.jsonl", "manifest.json"],
    "resubmit": ["attempt-2/requests/part-00000.jsonl", "ledger.json"],
}
CASES = [
    ("local", phase, name)
    for phase, names in FILES.items()
    for name in names
    if name.endswith(".parquet") or phase != "collect-parquet"
] + [
    ("s3", "collect", "results.jsonl"),
    ("s3", "collect", "manifest.json"),
    ("s3", "finish", "dead_letter.jsonl"),
    ("s3", "resubmit", "attempt-2/requests/part-00000.jsonl"),
]


@pytest.fixture(scope="module")
def moto_bucket():
    """One moto S3 server for the module (Airflow keeps one filesystem per connection id in a
    process, so the endpoint must not change between tests); each test uses its own prefix."""
    with moto_s3("crash") as (s3, endpoint):
        os.environ[f"AIRFLOW_CONN_{S3_CONN.upper()}"] = aws_connection(endpoint)
        yield s3
    os.environ.pop(f"AIRFLOW_CONN_{S3_CONN.upper()}", None)


def row_text(i: int) -> str:
    if i in NOT_RETRYABLE:
        return f"row {i} says hello [[emu:fail400]]"
    if i in RETRYABLE:
        return f"row {i} says hello [[emu:fail500]]"
    return f"row {i} says hello"


async def prepare(emulator: Any, run_dir: RunDirectory, run_path: str) -> RunHandle:
    """A run of 3 batches, submitted and ended at the provider."""
    data = [{"id": f"r-{i:03d}", "text": row_text(i)} for i in range(ROWS)]
    builder = RequestBuilder(template="Say {{ text }}", model="gpt-6-luna", max_tokens=16)
    async with backend_for("openai", emulator) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=RunKey(dag_id="crash_collect", task_id="llm.submit", run_id=run_path.split("/")[-2]),
            conn_id="llm_test",
            max_requests_per_batch=10,
        )
        await wait_until_ended(backend, handle.batch_ids, emulator)
    return handle


def directory(run_path: str) -> RunDirectory:
    if "://" in run_path:
        from airflow.sdk import ObjectStoragePath

        return RunDirectory(ObjectStoragePath(run_path))
    return RunDirectory(Path(run_path))


def read_if_present(path: Any) -> bytes | None:
    """A run file's bytes, None when absent; a part file's lines whether plain or packed (submit
    packs them once sent)."""
    if "/requests/" not in str(path):
        return read_bytes_if_present(path)
    try:
        return b"".join(line + b"\n" for line in iter_part_lines(path))
    except FileNotFoundError:
        return None


def snapshot(run_dir: RunDirectory, names: list[str]) -> dict[str, Any]:
    """Each file's content, comparable across writes (a manifest without its write time)."""
    found: dict[str, Any] = {}
    for name in names:
        data = read_if_present(run_dir.root / name)
        if data is None:
            found[name] = None
            continue
        if name == "manifest.json":
            manifest = json.loads(data)
            manifest.pop("written_at")
            found[name] = manifest
        else:
            found[name] = data
    return found


def run_child(emulator: Any, run_path: str, handle: RunHandle, phase: str, kill: dict | None) -> int:
    args = {
        "base_url": base_url("openai", emulator),
        "run_path": run_path,
        "handle": handle.model_dump(mode="json"),
        "phase": phase,
        "kill": kill,
    }
    done = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(args)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -9, f"the child did not die writing {kill}: {done.stderr[-3000:]}"
    return done.returncode


def lines(run_dir: RunDirectory, name: str) -> list[dict[str, Any]]:
    data = read_if_present(run_dir.root / name)
    if data is None:
        return []
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def assert_every_row_once(run_dir: RunDirectory, *, final: bool) -> dict[str, Any]:
    manifest = json.loads((run_dir.root / "manifest.json").read_bytes())
    parquet = run_dir.root / "results.parquet"
    results = pq.read_table(io.BytesIO(parquet.read_bytes())).to_pylist() if parquet.exists() else []
    results += lines(run_dir, "results.jsonl")
    unresolved = lines(run_dir, "dead_letter.jsonl" if final else "errors.jsonl")
    outcomes = Counter(r["custom_id"] for r in results + unresolved)
    assert sorted(outcomes) == sorted(f"r-{i:03d}" for i in range(ROWS)) and set(outcomes.values()) == {1}
    assert manifest["succeeded"] == len(results) == ROWS - len(NOT_RETRYABLE) - len(RETRYABLE)
    assert manifest["unresolved"] == len(unresolved) == len(NOT_RETRYABLE) + len(RETRYABLE)
    assert manifest["accounted"] and manifest["inputs"] == ROWS
    assert sum(b["request_count"] for b in manifest["batches"]) == ROWS  # each batch counted once
    if final:
        assert manifest["dead_letter"] == len(unresolved) and manifest["finished"]
        assert all(d["dead_letter_reason"] for d in unresolved)
    return manifest


async def next_try(emulator: Any, run_dir: RunDirectory, handle: RunHandle, phase: str) -> None:
    """The task's next try, with nothing in the way."""
    async with backend_for("openai", emulator) as backend:
        if phase.startswith("collect"):
            await collect_run(backend, handle, run_dir, results_format=RESULTS_FORMAT.get(phase, "jsonl"))
        elif phase == "finish":
            write_dead_letter(backend, run_dir, max_attempts=1)
        else:
            ledger = Ledger.load(run_dir)
            again = await resubmit_retryable(backend, handle, run_dir, run_key=ledger.run_key, max_attempts=2)
            assert again is not None and again.counts.submitted == len(RETRYABLE)


async def collect_first(emulator: Any, run_dir: RunDirectory, handle: RunHandle) -> None:
    async with backend_for("openai", emulator) as backend:
        await collect_run(backend, handle, run_dir)


@pytest.mark.parametrize(("storage", "phase", "name"), CASES, ids=[f"{s}-{p}-{n}" for s, p, n in CASES])
def test_killed_mid_write_then_next_try(
    storage: str, phase: str, name: str, fresh_emulator: Any, tmp_path: Path, request: Any
) -> None:
    # sync test: Airflow builds an S3 filesystem synchronously, so paths are made outside any
    # running event loop, as the operators do
    emulator = fresh_emulator
    case = f"{storage}-{phase}-{name}".replace("/", "_")
    if storage == "s3":
        request.getfixturevalue("moto_bucket")
        run_path = f"s3://{S3_CONN}@crash/{case}/run"
    else:
        run_path = str(tmp_path / case / "run")
    run_dir = directory(run_path)
    handle = asyncio.run(prepare(emulator, run_dir, run_path))
    if not phase.startswith("collect"):
        asyncio.run(collect_first(emulator, run_dir, handle))  # the collect task, complete
    before = snapshot(run_dir, FILES[phase])
    created = batches_created(emulator, "openai")

    run_child(emulator, run_path, handle, phase, {"file": name, "after": 100})
    killed = snapshot(run_dir, FILES[phase])
    assert batches_created(emulator, "openai") == created  # it died before paying for anything

    asyncio.run(next_try(emulator, run_dir, handle, phase))
    final = snapshot(run_dir, FILES[phase])
    for file in FILES[phase]:
        assert killed[file] in (before[file], final[file]), f"{file} was left torn by the kill"
        assert final[file] is not None, f"{file} missing after the next try"
    if phase == "resubmit":
        # attempt 2 keeps attempt 1's chunking: one batch per chunk that had a retryable row
        assert batches_created(emulator, "openai") == created + len(RETRYABLE)
        ledger = Ledger.load(run_dir)
        assert [c.request_count for c in ledger.attempts[2].chunks] == [1] * len(RETRYABLE)
        assert len({c.batch.batch_id for c in ledger.attempts[2].chunks}) == len(RETRYABLE)
        assert len(lines(run_dir, "attempt-2/requests/part-00000.jsonl")) == 1
    else:
        assert_every_row_once(run_dir, final=phase == "finish")
    if storage == "local":
        left = [p.name for p in Path(run_path).rglob("*.tmp")]
        assert left == [], f"temporary files left behind: {left}"
