"""Child process for the concurrency tests: waits until a shared start time, runs ``submit_run``
for one run key, and writes the handle it got to ``out``.

Usage: ``python concurrent_submit.py '<json args>'`` with keys ``provider``, ``base_url`` (or
``backend_options`` for Bedrock), ``run_root`` (a local folder) or ``s3_root`` (``{"url",
"endpoint"}``: a run folder on moto's S3), ``run_id``, ``rows``, ``max_requests_per_batch``,
``start_at`` (epoch seconds) and ``out``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from crash_submit import submit_rows

from batch_provider.backends.registry import create_backend
from batch_provider.core.ledger import RunKey
from batch_provider.core.rundir import run_directory


def run_root(args: dict[str, Any]) -> Any:
    if "s3_root" not in args:
        return Path(args["run_root"])
    from upath import UPath

    s3 = args["s3_root"]
    return UPath(s3["url"], client_kwargs={"endpoint_url": s3["endpoint"]}, key="testing", secret="testing")


async def main(args: dict[str, Any]) -> None:
    provider = args["provider"]
    if provider == "bedrock":
        backend = create_backend(provider, **args["backend_options"])
    else:
        backend = create_backend(provider, api_key="test-key", base_url=args["base_url"])
    run_dir = run_directory(run_root(args), dag_id="race_dag", run_id=args["run_id"], group="llm")
    key = RunKey(dag_id="race_dag", task_id="llm.submit", run_id=args["run_id"])
    data = [{"id": f"k-{i:04d}", "text": f"row {i} " + "word " * (i % 5)} for i in range(args["rows"])]
    await asyncio.sleep(max(0.0, args["start_at"] - time.time()))
    handle = await submit_rows(backend, provider, data, run_dir, key, args["max_requests_per_batch"])
    Path(args["out"]).write_text(handle.model_dump_json())


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
