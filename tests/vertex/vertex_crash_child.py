"""Child process for the Vertex crash tests: runs ``submit_run`` with a Vertex backend on the
emulator and SIGKILLs itself at one point of one chunk's submit.

Usage: ``python vertex_crash_child.py '<json args>'`` with keys ``backend`` (VertexBackend options),
``run_root``, ``run_id``, ``rows``, ``per_batch``, ``crash`` (a point or null) and ``chunk``.
Points: ``staged`` (the chunk's input is in GCS, no job), ``batch_created`` (the job exists, the
ledger does not know), ``ledger_written`` (the job is in the ledger). Without a crash it writes
the handle to ``<run_root>/handle.json`` and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from batch_provider.backends.vertex import VertexBackend
from batch_provider.core.ledger import Ledger, RunKey
from batch_provider.core.records import iter_list
from batch_provider.core.render import RequestBuilder
from batch_provider.core.rundir import run_directory
from batch_provider.core.submission import submit_run


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_crash(point: str | None, chunk: int) -> None:
    if point is None:
        return
    stage, submit, save = VertexBackend._stage, VertexBackend.submit, Ledger.save
    saves = {"n": 0}

    async def staged(self: Any, part: Any, uri: str) -> str:
        done = await stage(self, part, uri)
        if point == "staged" and part.index == chunk:
            die()
        return done

    async def submitted(self: Any, part: Any, *, tags: Any) -> Any:
        ref = await submit(self, part, tags=tags)
        if point == "batch_created" and part.index == chunk:
            die()
        return ref

    def saved(self: Ledger, run_dir: Any) -> None:
        save(self, run_dir)
        saves["n"] += 1
        # save 1: chunks; then per chunk k: save 2+2k (intent), save 3+2k (job recorded)
        if point == "ledger_written" and saves["n"] == 3 + 2 * chunk:
            die()

    VertexBackend._stage = staged  # type: ignore[method-assign]
    VertexBackend.submit = submitted  # type: ignore[method-assign]
    Ledger.save = saved  # type: ignore[method-assign]


async def main(args: dict[str, Any]) -> None:
    install_crash(args.get("crash"), int(args.get("chunk", 0)))
    root = Path(args["run_root"])
    run_dir = run_directory(root, dag_id="crash_dag", run_id=args["run_id"], group="llm")
    key = RunKey(dag_id="crash_dag", task_id="llm.submit", run_id=args["run_id"])
    data = [{"id": f"c-{i:04d}", "text": f"row {i} " + "word " * (i % 5)} for i in range(args["rows"])]
    builder = RequestBuilder(template="Classify: {{ text }}", model="gemini-2.5-flash", max_tokens=32)
    async with VertexBackend(**args["backend"]) as backend:
        handle = await submit_run(
            backend,
            builder.render(iter_list(data)),
            run_dir,
            run_key=key,
            conn_id="llm_vertex_test",
            max_requests_per_batch=args["per_batch"],
        )
    (root / "handle.json").write_text(handle.model_dump_json())


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
