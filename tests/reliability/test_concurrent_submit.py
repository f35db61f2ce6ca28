"""Two or four live submits of one run key on one run folder (a zombie beside its retry, a manual
run beside the scheduled one), as separate processes started at the same instant, on local disk
and on S3 (moto): the claims let exactly one of them create each chunk's batch, every process
returns the same handle, and collecting any of them accounts for every row."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rel_support import (
    backend_for,
    base_url,
    batches_created,
    bedrock_options,
    read_lines,
    s3_client,
    wait_until_ended,
)

from batch_provider.backends.registry import create_backend
from batch_provider.core.collection import collect_run
from batch_provider.core.handle import RunHandle
from batch_provider.core.rundir import run_directory

CHILD = Path(__file__).with_name("concurrent_submit.py")

CASES = [
    ("local", 2, "openai"),
    ("local", 4, "anthropic"),
    ("local", 2, "bedrock"),
    ("s3", 2, "anthropic"),
    ("s3", 4, "openai"),
    ("s3", 4, "gemini"),
]


@pytest.mark.parametrize(
    ("storage", "processes", "provider"), CASES, ids=[f"{s}-{n}-{p}" for s, n, p in CASES]
)
async def test_concurrent_submits_create_one_batch_per_chunk(
    storage: str, processes: int, provider: str, bedrock_emulator: Any, tmp_path: Path
) -> None:
    emu = bedrock_emulator
    emu.bedrock_settings(min_records=10)
    rows, per_batch = (30, 10) if provider == "bedrock" else (10, 4)
    chunks = -(-rows // per_batch)
    run_id = f"race__{storage}_{processes}_{provider}"
    args: dict[str, Any] = {
        "provider": provider,
        "run_id": run_id,
        "rows": rows,
        "max_requests_per_batch": per_batch,
        "start_at": time.time() + 3.0,
    }
    if provider == "bedrock":
        args["backend_options"] = bedrock_options(emu, f"race-{tmp_path.name}", min_records_per_job=10)
    else:
        args["base_url"] = base_url(provider, emu)
    if storage == "s3":
        s3_client(emu).create_bucket(Bucket="race-runs")
        args["s3_root"] = {"url": f"s3://race-runs/{tmp_path.name}", "endpoint": emu.s3_endpoint}
    else:
        args["run_root"] = str(tmp_path / "runs")
    before = batches_created(emu, provider)
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps({**args, "out": str(tmp_path / f"handle-{n}.json")})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    for child in children:
        _, stderr = child.communicate(timeout=240)
        assert child.returncode == 0, stderr[-3000:]

    assert batches_created(emu, provider) - before == chunks, emu.stats()["batches_created"]
    handles = [
        RunHandle.model_validate_json((tmp_path / f"handle-{n}.json").read_text()) for n in range(processes)
    ]
    assert len(handles[0].batch_ids) == chunks
    assert all(h == handles[0] for h in handles), "every submit returns the same handle"

    if storage == "s3":
        from concurrent_submit import run_root

        root = run_root(args)
    else:
        root = Path(args["run_root"])
    run_dir = run_directory(root, dag_id="race_dag", run_id=run_id, group="llm")
    backend = (
        create_backend("bedrock", **args["backend_options"])
        if provider == "bedrock"
        else backend_for(provider, emu)
    )
    async with backend:
        await wait_until_ended(backend, handles[0].batch_ids, emu)
        for handle in handles[:2]:  # collecting any of the handles works, and again
            summary = await collect_run(backend, handle, run_dir)
            assert summary.accounted and summary.succeeded == rows and summary.unresolved == 0
    if storage == "local":
        ids = sorted(r["custom_id"] for r in read_lines(run_dir.results))
        assert ids == [f"k-{i:04d}" for i in range(rows)]
