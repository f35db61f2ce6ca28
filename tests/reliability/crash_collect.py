"""Child process for the interrupted-write tests: runs one step of collect or retry on a run
folder and SIGKILLs itself in the middle of writing one file.

Usage: ``python crash_collect.py '<json args>'`` with keys ``base_url`` (the OpenAI emulator),
``run_path`` (a local folder or ``s3://conn@bucket/prefix``), ``handle`` (the run handle, as a
dict), ``phase`` and ``kill`` (null, or ``{"file": <path relative to the run folder>, "after":
<bytes>, "nth": <which write of that file, default 1>}``: the process dies once that many bytes
of that write have been handed to the file, before it is closed).

Phases: ``collect`` (``collect_run`` of the handle's attempt; ``collect-parquet`` writing
``results.parquet``), ``finish`` (the retry task's last
step: dead letter, final results and manifest), ``resubmit`` (the retry task's next attempt: part
files and ledger, then the batches).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batch_provider.backends.registry import create_backend
from batch_provider.core import collection, result_files, retry, run_files, rundir
from batch_provider.core.handle import RunHandle
from batch_provider.core.ledger import Ledger

_real_atomic_write = rundir.atomic_write


def run_directory_at(run_path: str) -> rundir.RunDirectory:
    if "://" in run_path:
        from airflow.sdk import ObjectStoragePath

        return rundir.RunDirectory(ObjectStoragePath(run_path))
    return rundir.RunDirectory(Path(run_path))


class _Dying:
    """A file whose ``write`` kills the process once ``after`` bytes have gone through it."""

    def __init__(self, fh: Any, after: int):
        self._fh = fh
        self._left = after

    def write(self, data: bytes) -> int:
        cut = max(0, min(len(data), self._left))
        if cut:
            self._fh.write(data[:cut])
        self._left -= len(data)
        if self._left <= 0:
            if hasattr(self._fh, "flush"):
                self._fh.flush()  # the bytes written so far reach the temp file / upload buffer
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def install_kill(run_dir: rundir.RunDirectory, kill: dict[str, Any] | None) -> None:
    if not kill:
        return
    target = str(run_dir.root / kill["file"])
    seen = {"n": 0}

    @contextmanager
    def atomic_write(path: Any) -> Any:
        with _real_atomic_write(path) as fh:
            if str(path) == target:
                seen["n"] += 1
                if seen["n"] == kill.get("nth", 1):
                    yield _Dying(fh, int(kill["after"]))
                    return
            yield fh

    for module in (rundir, collection, retry, result_files, run_files):
        module.atomic_write = atomic_write  # type: ignore[attr-defined]


async def main(args: dict[str, Any], run_dir: rundir.RunDirectory) -> None:
    install_kill(run_dir, args.get("kill"))
    handle = RunHandle.model_validate(args["handle"])
    backend = create_backend("openai", api_key="test-key", base_url=args["base_url"])
    async with backend:
        if args["phase"] == "collect":
            await collection.collect_run(backend, handle, run_dir)
        elif args["phase"] == "collect-parquet":
            await collection.collect_run(backend, handle, run_dir, results_format="parquet")
        elif args["phase"] == "finish":
            retry.write_dead_letter(backend, run_dir, max_attempts=1)
        elif args["phase"] == "resubmit":
            ledger = Ledger.load(run_dir)
            assert ledger is not None
            new = await retry.resubmit_retryable(
                backend, handle, run_dir, run_key=ledger.run_key, max_attempts=2
            )
            assert new is not None
            print(new.model_dump_json())
        else:
            raise SystemExit(f"unknown phase {args['phase']!r}")


if __name__ == "__main__":
    ARGS = json.loads(sys.argv[1])
    # built outside the event loop, as a task does: Airflow's S3 filesystem is made synchronously
    asyncio.run(main(ARGS, run_directory_at(ARGS["run_path"])))
