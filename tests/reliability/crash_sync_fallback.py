"""Child process for the sync-fallback kill test: runs the fallback of attempt 1 of a run folder
until the parent SIGKILLs it.

Usage: ``python crash_sync_fallback.py '<json args>'`` with keys ``provider``, ``base_url`` and
``run_path`` (a local run folder whose attempt 1 is collected).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from batch_provider.backends.registry import create_backend
from batch_provider.backends.sync_callers import sync_caller
from batch_provider.core.rundir import RunDirectory
from batch_provider.core.sync_fallback import run_sync_fallback


async def main(args: dict) -> None:
    backend = create_backend(args["provider"], api_key="test-key", base_url=args["base_url"])
    async with backend:
        await run_sync_fallback(
            backend, sync_caller(backend), RunDirectory(Path(args["run_path"])), 1, concurrency=2
        )


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
